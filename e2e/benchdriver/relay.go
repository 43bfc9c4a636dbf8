package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
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
}

// runRelay serves relay connections until the process is stopped.
func runRelay(cfg relayConfig) error {
	// One core, as localproxy and coordinator use by default here (half
	// the cores, at least one).
	runtime.GOMAXPROCS(max(1, runtime.GOMAXPROCS(0)/2))
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go relayConn(cfg, c.(*net.TCPConn))
	}
}

func relayConn(cfg relayConfig, c *net.TCPConn) {
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
	up, err := net.Dial("tcp", cfg.next)
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
	done := make(chan struct{})
	go func() {
		io.Copy(c, up)
		c.CloseWrite()
		close(done)
	}()
	io.Copy(up, from)
	up.(*net.TCPConn).CloseWrite()
	<-done
}

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
