package browser

import (
	"bytes"
	"encoding/binary"
	"math"
)

// webmVideo describes the generated film: VP8 in WebM, no sound.
type webmVideo struct {
	Width, Height int
	FPS           int
	Seconds       int
	FrameBytes    int // size of each frame; sets the bitrate
}

// makeWebM writes a WebM file of identical grey VP8 key frames, one
// cluster a second, with cues so that players can seek.
//
// No encoder is needed: a VP8 key frame whose two partitions are all
// zero bytes is valid. A boolean decoder reading zeros decodes every
// flag and literal as 0, whatever its probability, which here means:
// no segmentation, no loop filter, quantiser index 0, no probability
// updates, per-macroblock coefficient flags on, 4x4 prediction with DC
// mode in every subblock, DC chroma prediction, and end-of-block as the
// first token of every block. The picture is flat grey; the frames still
// go through the browser's demuxer and decoder like any film's. The
// first partition is sized to hold what those zeros decode to, and the
// token partition takes the rest of FrameBytes (decoders ignore what
// they do not read).
func makeWebM(v webmVideo) []byte {
	frame := vp8GreyKeyFrame(v.Width, v.Height, v.FrameBytes)
	var clusters [][]byte
	for s := range v.Seconds {
		var blocks []byte
		for f := range v.FPS {
			rel := f * 1000 / v.FPS // ms from the cluster's start
			blocks = append(blocks, ebml(0xA3, simpleBlock(rel, frame))...)
		}
		clusters = append(clusters, ebml(0x1F43B675, append(ebmlUint(0xE7, uint64(s*1000)), blocks...)))
	}
	info := ebml(0x1549A966, concat(
		ebmlUint(0x2AD7B1, 1000000), // TimecodeScale: 1 ms
		ebmlFloat(0x4489, float64(v.Seconds*1000)),
		ebml(0x4D80, []byte("quictunnel e2e/browser")),
		ebml(0x5741, []byte("quictunnel e2e/browser")),
	))
	tracks := ebml(0x1654AE6B, ebml(0xAE, concat(
		ebmlUint(0xD7, 1),   // TrackNumber
		ebmlUint(0x73C5, 1), // TrackUID
		ebmlUint(0x83, 1),   // TrackType: video
		ebmlUint(0x9C, 0),   // FlagLacing
		ebml(0x86, []byte("V_VP8")),
		ebmlUint(0x23E383, uint64(1e9/v.FPS)), // DefaultDuration, ns
		ebml(0xE0, concat(ebmlUint(0xB0, uint64(v.Width)), ebmlUint(0xBA, uint64(v.Height)))),
	)))
	// Cues point at each cluster by its offset from the segment's data.
	// Their size does not depend on the offsets (fixed-width fields), so
	// one pass with zeros gives the size and a second the real values.
	cues := func(first uint64) []byte {
		var points []byte
		off := first
		for s, c := range clusters {
			points = append(points, ebml(0xBB, concat(
				ebmlUint(0xB3, uint64(s*1000)),
				ebml(0xB7, concat(ebmlUint(0xF7, 1), ebmlFixed(0xF1, off))),
			))...)
			off += uint64(len(c))
		}
		return ebml(0x1C53BB6B, points)
	}
	head := len(info) + len(tracks)
	body := concat(info, tracks, cues(uint64(head+len(cues(0)))))
	for _, c := range clusters {
		body = append(body, c...)
	}
	header := ebml(0x1A45DFA3, concat(
		ebmlUint(0x4286, 1), ebmlUint(0x42F7, 1), ebmlUint(0x42F2, 4), ebmlUint(0x42F3, 8),
		ebml(0x4282, []byte("webm")), ebmlUint(0x4287, 2), ebmlUint(0x4285, 2),
	))
	return concat(header, ebml(0x18538067, body))
}

// vp8GreyKeyFrame is a VP8 key frame of size bytes (see makeWebM).
func vp8GreyKeyFrame(width, height, size int) []byte {
	mbs := ((width + 15) / 16) * ((height + 15) / 16)
	// Bounds on what the zeros decode to. A boolean read of a 0 with
	// probability p takes log2(256/p) bits, at most 8. First partition:
	// the 1,056 probability-update flags (whose probabilities are all
	// high) take under a bit each, a macroblock's 18 mode reads under
	// 4 bytes. Token partition: 25 blocks a macroblock, one end-of-block
	// read each, at most 25 bytes.
	first := 512 + 4*mbs
	if minSize := 10 + first + 32*mbs; size < minSize {
		size = minSize
	}
	f := make([]byte, size)
	tag := uint32(0) | 0<<1 | 1<<4 | uint32(first)<<5 // key frame, version 0, shown
	f[0], f[1], f[2] = byte(tag), byte(tag>>8), byte(tag>>16)
	copy(f[3:], []byte{0x9d, 0x01, 0x2a}) // key frame start code
	binary.LittleEndian.PutUint16(f[6:], uint16(width))
	binary.LittleEndian.PutUint16(f[8:], uint16(height))
	return f // both partitions: zeros
}

// simpleBlock is the body of a SimpleBlock: track 1, a timecode relative
// to the cluster, the key-frame flag, the frame.
func simpleBlock(relMS int, frame []byte) []byte {
	b := []byte{0x81, byte(relMS >> 8), byte(relMS), 0x80}
	return append(b, frame...)
}

// ebml encodes one element: its ID, its size as an 8-byte vint, data.
func ebml(id uint32, data []byte) []byte {
	var b []byte
	switch {
	case id > 0xFFFFFF:
		b = append(b, byte(id>>24), byte(id>>16), byte(id>>8), byte(id))
	case id > 0xFFFF:
		b = append(b, byte(id>>16), byte(id>>8), byte(id))
	case id > 0xFF:
		b = append(b, byte(id>>8), byte(id))
	default:
		b = append(b, byte(id))
	}
	size := binary.BigEndian.AppendUint64(nil, uint64(len(data)))
	b = append(b, 0x01) // 0x01 and 7 bytes: an 8-byte vint
	b = append(b, size[1:]...)
	return append(b, data...)
}

// ebmlUint encodes an unsigned integer in as few bytes as it needs.
func ebmlUint(id uint32, v uint64) []byte {
	n := 1
	for v>>(8*n) != 0 && n < 8 {
		n++
	}
	return ebml(id, binary.BigEndian.AppendUint64(nil, v)[8-n:])
}

// ebmlFixed encodes an unsigned integer in 8 bytes.
func ebmlFixed(id uint32, v uint64) []byte {
	return ebml(id, binary.BigEndian.AppendUint64(nil, v))
}

func ebmlFloat(id uint32, v float64) []byte {
	return ebml(id, binary.BigEndian.AppendUint64(nil, math.Float64bits(v)))
}

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
