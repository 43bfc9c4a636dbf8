package e2e

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"quictunnel/e2e/natlab"
)

// impairment is what a bad link does to the packets crossing it.
type impairment struct {
	loss  float64       // fraction of packets dropped at random, each way
	delay time.Duration // added to every packet, each way
}

func (i impairment) String() string {
	return fmt.Sprintf("%.0f%% loss and %v delay each way", i.loss*100, i.delay)
}

// impairWAN makes the link between the lab's home router and the internet
// router bad, in both directions, and reports how. It uses tc netem (on the
// router's wan port and the internet router's port facing it) when the
// kernel has it; otherwise, saying so, an NFQUEUE in the internet router
// whose reader drops each packet with the loss probability and holds the
// others for the delay. Only lab namespaces are touched. It skips the test
// when neither works (fails it under CI).
func impairWAN(t *testing.T, l *natlab.Lab, imp impairment) string {
	t.Helper()
	netemErr := netem(t, l, imp)
	if netemErr == nil {
		return "tc netem: " + imp.String()
	}
	t.Logf("tc netem is not available here (%v); impairing with an NFQUEUE delay line that also drops instead", netemErr)
	if err := nfqueueImpair(t, l, imp); err != nil {
		msg := fmt.Sprintf("cannot impair the link: no netem (%v) and no NFQUEUE (%v)", netemErr, err)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return "NFQUEUE delay line (netem unavailable): " + imp.String()
}

// sbinTool finds a command in $PATH or the sbin directories.
func sbinTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		if p := filepath.Join(d, name); fileExists(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found (scripts/test-deps.sh installs it)", name)
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// run runs a command inside h's namespace.
func run(ctx context.Context, h *natlab.Host, name string, args ...string) error {
	out, err := h.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s in %s: %w: %s", filepath.Base(name), strings.Join(args, " "), h.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// netem puts a netem qdisc on the two ports of the WAN link.
func netem(t *testing.T, l *natlab.Lab, imp impairment) error {
	tc, err := sbinTool("tc")
	if err != nil {
		return err
	}
	args := []string{"root", "netem", "delay", imp.delay.String(), "loss", fmt.Sprintf("%g%%", imp.loss*100), "limit", "100000"}
	ports := []struct {
		h   *natlab.Host
		dev string
	}{{l.NAT(), "wan"}, {l.Internet(), "nat"}}
	for i, port := range ports {
		if err := run(t.Context(), port.h, tc, append([]string{"qdisc", "add", "dev", port.dev}, args...)...); err != nil {
			for _, added := range ports[:i] {
				_ = run(t.Context(), added.h, tc, "qdisc", "del", "dev", added.dev, "root")
			}
			return err
		}
	}
	return nil
}

// nfqueueImpair sends every packet to or from the NAT's WAN address
// through a delay line on NFQUEUE 0 in the internet router. The kernel
// splits segmentation-offload (GSO) packets before queueing them, so the
// loss applies to each packet as it would on a wire.
func nfqueueImpair(t *testing.T, l *natlab.Lab, imp impairment) error {
	ipt, err := sbinTool("iptables")
	if err != nil {
		return err
	}
	inet, wan := l.Internet(), l.WANAddr().String()
	d, err := newDelayLine(inet, 0, imp)
	if err != nil {
		return err
	}
	t.Cleanup(func() { t.Logf("NFQUEUE delay line: %v", d) }) // runs after close
	t.Cleanup(d.close)
	for _, dir := range []string{"-s", "-d"} {
		if err := run(t.Context(), inet, ipt, "-A", "FORWARD", dir, wan, "-j", "NFQUEUE", "--queue-num", "0"); err != nil {
			return err
		}
	}
	return nil
}

// Netlink constants of nfnetlink_queue (linux/netfilter/nfnetlink_queue.h).
const (
	nfnlSubsysQueue     = 3
	nfqnlMsgPacket      = 0
	nfqnlMsgVerdict     = 1
	nfqnlMsgVerdictBat  = 3
	nfqnlMsgConfig      = 2
	nfqaPacketHdr       = 1
	nfqaVerdictHdr      = 2
	nfqaCfgCmd          = 1
	nfqaCfgParams       = 2
	nfqaCfgQueueMaxlen  = 3
	nfqnlCfgCmdBind     = 1
	nfqnlCopyMeta       = 1
	nfDrop              = 0
	nfAccept            = 1
	delayLineQueueLimit = 1 << 16
)

// delayLine drops each packet NFQUEUE hands it with the loss probability
// and holds the others for the delay, then accepts them. Packets keep their
// order: a verdict for the newest packet due accepts all older ones still
// queued too (NFQNL_MSG_VERDICT_BATCH).
type delayLine struct {
	f     *os.File
	queue uint16
	imp   impairment
	due   chan queued
	wg    sync.WaitGroup
	// Seen and dropped count the packets, for the test's log.
	seen, dropped atomic.Int64
}

type queued struct {
	id uint32
	at time.Time
}

// newDelayLine binds NFQUEUE queue in h's namespace.
func newDelayLine(h *natlab.Host, queue uint16, imp impairment) (*delayLine, error) {
	var fd int
	err := h.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_NETFILTER)
		if err != nil {
			return fmt.Errorf("netlink socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind netlink: %w", err)
		}
		// Room for a burst of queued packets; ENOBUFS would lose them.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
		return nil
	}, func() error { return nil })
	if err != nil {
		return nil, err
	}
	d := &delayLine{f: os.NewFile(uintptr(fd), "nfqueue"), queue: queue, imp: imp, due: make(chan queued, delayLineQueueLimit)}
	cmd := []byte{nfqnlCfgCmdBind, 0, 0, unix.AF_INET}
	params := binary.BigEndian.AppendUint32(nil, 0xffff)
	params = append(params, nfqnlCopyMeta)
	if err := d.config(nfqaCfgCmd, cmd); err != nil {
		d.f.Close()
		return nil, err
	}
	if err := d.config(nfqaCfgParams, params); err != nil {
		d.f.Close()
		return nil, err
	}
	if err := d.config(nfqaCfgQueueMaxlen, binary.BigEndian.AppendUint32(nil, delayLineQueueLimit)); err != nil {
		d.f.Close()
		return nil, err
	}
	d.wg.Go(d.read)
	d.wg.Go(d.release)
	return d, nil
}

// message builds a netlink message of the queue subsystem.
func (d *delayLine) message(typ uint16, flags uint16, attrType uint16, attr []byte) []byte {
	b := make([]byte, 16, 64)
	b = append(b, unix.AF_UNSPEC, 0)
	b = binary.BigEndian.AppendUint16(b, d.queue)
	b = binary.NativeEndian.AppendUint16(b, uint16(4+len(attr)))
	b = binary.NativeEndian.AppendUint16(b, attrType)
	b = append(b, attr...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], nfnlSubsysQueue<<8|typ)
	binary.NativeEndian.PutUint16(b[6:], unix.NLM_F_REQUEST|flags)
	return b
}

// config sends one configuration attribute and waits for the kernel's ack.
func (d *delayLine) config(attrType uint16, attr []byte) error {
	if _, err := d.f.Write(d.message(nfqnlMsgConfig, unix.NLM_F_ACK, attrType, attr)); err != nil {
		return fmt.Errorf("nfqueue config: %w", err)
	}
	d.f.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer d.f.SetReadDeadline(time.Time{})
	buf := make([]byte, 8192)
	n, err := d.f.Read(buf)
	if err != nil {
		return fmt.Errorf("nfqueue config ack: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return fmt.Errorf("nfqueue config ack: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
			if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
				return fmt.Errorf("nfqueue config (attribute %d): %w", attrType, unix.Errno(-errno))
			}
			return nil
		}
	}
	return errors.New("nfqueue config: no ack")
}

// read takes the queued packets' ids, stamped with their arrival.
func (d *delayLine) read() {
	defer close(d.due)
	buf := make([]byte, 1<<20)
	for {
		n, err := d.f.Read(buf)
		if errors.Is(err, unix.ENOBUFS) {
			continue // the kernel dropped some: they count as loss
		}
		if err != nil {
			return
		}
		now := time.Now()
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			if m.Header.Type != nfnlSubsysQueue<<8|nfqnlMsgPacket || len(m.Data) < 4 {
				continue
			}
			id, ok := packetID(m.Data[4:])
			if !ok {
				continue
			}
			d.seen.Add(1)
			if rand.Float64() < d.imp.loss {
				d.dropped.Add(1)
				d.verdict(nfqnlMsgVerdict, nfDrop, id)
				continue
			}
			d.due <- queued{id, now}
		}
	}
}

// packetID finds NFQA_PACKET_HDR among attrs and returns its packet id.
func packetID(attrs []byte) (uint32, bool) {
	for len(attrs) >= 4 {
		l := int(binary.NativeEndian.Uint16(attrs))
		typ := binary.NativeEndian.Uint16(attrs[2:]) & 0x3fff
		if l < 4 || l > len(attrs) {
			return 0, false
		}
		if typ == nfqaPacketHdr && l >= 8 {
			return binary.BigEndian.Uint32(attrs[4:]), true
		}
		attrs = attrs[min((l+3)&^3, len(attrs)):]
	}
	return 0, false
}

// release accepts each packet once its delay has passed, batching all that
// are due.
func (d *delayLine) release() {
	for p := range d.due {
		if wait := time.Until(p.at.Add(d.imp.delay)); wait > 0 {
			time.Sleep(wait)
		}
		last := p.id
	batch:
		for {
			select {
			case q, ok := <-d.due:
				if !ok {
					break batch
				}
				if wait := time.Until(q.at.Add(d.imp.delay)); wait > 0 {
					d.verdict(nfqnlMsgVerdictBat, nfAccept, last)
					time.Sleep(wait)
				}
				last = q.id
			default:
				break batch
			}
		}
		d.verdict(nfqnlMsgVerdictBat, nfAccept, last)
	}
}

// verdict sends a verdict for packet id (typ nfqnlMsgVerdict), or for
// every queued packet up to id (nfqnlMsgVerdictBat).
func (d *delayLine) verdict(typ uint16, verdict, id uint32) {
	v := binary.BigEndian.AppendUint32(nil, verdict)
	v = binary.BigEndian.AppendUint32(v, id)
	d.f.Write(d.message(typ, 0, nfqaVerdictHdr, v))
}

// close unbinds the queue (the kernel drops what is still queued) and
// waits for the goroutines.
func (d *delayLine) close() {
	d.f.Close()
	d.wg.Wait()
}

// String reports what the delay line did.
func (d *delayLine) String() string {
	return fmt.Sprintf("%d packets, %d dropped (%.1f%%)", d.seen.Load(), d.dropped.Load(), 100*float64(d.dropped.Load())/float64(max(d.seen.Load(), 1)))
}
