package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
)

// The set-up benchmark's floor: the same new session through two plain
// relay processes (benchdriver itself, run again with -relay-listen), the
// shape of any tunnel with a proxy beside the browser and a process on the
// public host, minus everything a tunnel adds: no encryption, no
// multiplexing, no session protocol. The first relay answers the CONNECT
// once its connection to the second is up (as a proxy that dials before
// answering), the second connects to the target; each then copies bytes
// both ways. What this chain adds to a direct connection is the cost of the
// extra processes on the path (each hop wakes a process), which no tunnel
// with that shape goes below on this machine.

// relayConfig is a relay process's settings (flags).
type relayConfig struct {
	listen, next string
	connect      bool // answer a CONNECT head before relaying
	quic         bool // the hop between the two relays is QUIC (quicrelay.go)
}

// halfCloser is one end of a relayed connection.
type halfCloser interface {
	io.ReadWriteCloser
	CloseWrite() error
}

// runRelay serves relay connections until the process is stopped.
func runRelay(cfg relayConfig) error {
	if cfg.quic {
		return runQUICRelay(cfg)
	}
	// One core, as localproxy and coordinator use by default here (half
	// the cores, at least one).
	runtime.GOMAXPROCS(max(1, runtime.GOMAXPROCS(0)/2))
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	dialNext := func() (halfCloser, error) {
		c, err := net.Dial("tcp", cfg.next)
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go relayConn(cfg, c.(*net.TCPConn), dialNext)
	}
}

// relayConn relays c to a new connection to the next hop, answering a
// CONNECT first when cfg says so.
func relayConn(cfg relayConfig, c *net.TCPConn, dialNext func() (halfCloser, error)) {
	defer c.Close()
	var from io.Reader = c
	if cfg.connect {
		br := bufio.NewReader(c)
		if err := readConnectHead(br); err != nil {
			fmt.Fprintf(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
			return
		}
		from = io.MultiReader(io.LimitReader(br, int64(br.Buffered())), c)
	}
	up, err := dialNext()
	if err != nil {
		if cfg.connect {
			fmt.Fprintf(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
		}
		return
	}
	defer up.Close()
	if cfg.connect {
		if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
			return
		}
	}
	copyBoth(up, c, from)
}

// copyBoth copies a to b and from to a (from reads b, perhaps after
// bytes already buffered), passing each end's EOF on as a half-close, and
// returns when both directions are done.
func copyBoth(a, b halfCloser, from io.Reader) {
	done := make(chan struct{})
	go func() {
		copyChunks(b, a)
		b.CloseWrite()
		close(done)
	}()
	copyChunks(a, from)
	a.CloseWrite()
	<-done
}

// copyChunks copies src to dst: between two TCP sockets with io.Copy
// (splice), and to or from a QUIC stream through a 256 KiB buffer, the
// largest the tunnel's relay uses. (io.Copy would use 32 KiB buffers
// there, which cost more CPU per GiB.)
func copyChunks(dst io.Writer, src io.Reader) {
	_, q1 := dst.(quicHalf)
	_, q2 := src.(quicHalf)
	if !q1 && !q2 {
		io.Copy(dst, src)
		return
	}
	// The wrappers hide ReadFrom and WriteTo, which would pick their
	// own buffers.
	buf := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(buf)
	io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *buf)
}

// copyBuffers keeps QUIC relay buffers between connections, so a new
// session costs no buffer allocation.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// readConnectHead reads a CONNECT request head up to its blank line.
func readConnectHead(br *bufio.Reader) error {
	line, err := br.ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "CONNECT ") {
		return errors.New("not a CONNECT")
	}
	for n := 0; ; n++ {
		line, err := br.ReadString('\n')
		switch {
		case err != nil:
			return err
		case n > 100:
			return errors.New("head too long")
		case line == "\r\n" || line == "\n":
			return nil
		}
	}
}
