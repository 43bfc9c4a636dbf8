package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"quictunnel/quictun"
)

// Bounds of the floods below: short, and capped in packets and
// connections whatever the machine's speed.
const (
	floodFor         = 3 * time.Second
	floodMaxPackets  = 400_000
	floodSockets     = 32
	floodRSSHeadroom = 64 << 20
	floodHold        = 3 * time.Second // how long a silent connection waits for coordinator to close it
)

// fakeInitial fills b with a 1200-byte datagram that parses as a QUIC v1
// Initial (long header, 8-byte connection IDs, no token) with a random
// destination connection ID and a payload nobody can decrypt.
func fakeInitial(b []byte, rnd *rand.ChaCha8) []byte {
	b = b[:1200]
	rnd.Read(b)
	b[0] = 0xc0 | b[0]&0x0f // long header, fixed bit, type Initial
	binary.BigEndian.PutUint32(b[1:5], 1)
	b[5] = 8 // destination connection ID, b[6:14]
	b[14] = 8
	b[23] = 0 // token length
	binary.BigEndian.PutUint16(b[24:26], 0x4000|uint16(len(b)-26))
	return b
}

// floodInitials sends fake Initials to addr from floodSockets ports of
// 127.0.0.1 for floodFor (at most floodMaxPackets) and returns how many.
func floodInitials(t *testing.T, addr *net.UDPAddr) int64 {
	t.Helper()
	var sent atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(floodFor)
	for i := range floodSockets {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer c.Close()
			rnd := rand.NewChaCha8([32]byte{byte(i)})
			buf := make([]byte, 1200)
			for n := 0; time.Now().Before(deadline); n++ {
				if sent.Add(1) > floodMaxPackets {
					return
				}
				c.WriteToUDP(fakeInitial(buf, rnd), addr)
				if n%64 == 63 {
					time.Sleep(time.Millisecond) // let the socket buffers drain, so most packets arrive
				}
			}
		})
	}
	wg.Wait()
	return min(sent.Load(), floodMaxPackets)
}

// rss returns a process's resident set size, from /proc.
func rss(t *testing.T, p *process) int64 {
	t.Helper()
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(p.cmd.Process.Pid), "status"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc status")
	return 0
}

// peakRSS samples p's RSS every 50 ms until stop is closed and returns the
// highest.
func peakRSS(t *testing.T, p *process, stop <-chan struct{}) <-chan int64 {
	out := make(chan int64, 1)
	go func() {
		var peak int64
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			peak = max(peak, rss(t, p))
			select {
			case <-stop:
				out <- max(peak, rss(t, p))
				return
			case <-tick.C:
			}
		}
	}()
	return out
}

// TestInitialFlood sends 3 s of fake QUIC Initials at coordinator's QUIC
// port and then at localproxy's tunnel socket: each stays within
// floodRSSHeadroom of its idle RSS, requests keep working during and
// after, and a new client connects after the coordinator flood.
func TestInitialFlood(t *testing.T) {
	target := startTarget(t, "127.0.0.1", bulkHandler())
	b := startBinLab(t, binLabOptions{})
	udpPort := freeUDPPort(t)
	proxyPort, proxyMetrics := freeTCPPort(t), freeTCPPort(t)
	lp := start(t, nil, "localproxy", "--listen", loop(proxyPort), "--udp-listen", loop(udpPort), "--coordinator", loop(b.quicPort),
		"--token", binToken, "--ca", filepath.Join(b.certs, "ca.pem"), "--server-name", "localhost", "--name", "flooded",
		"--metrics-listen", loop(proxyMetrics))
	waitFor(t, "localproxy connected", func() bool {
		v, err := metric(proxyMetrics, "quictunnel_coordinator_connected")
		return err == nil && v == 1
	})
	forward := &http.Client{Transport: proxyTransportTo(t, proxyPort), Timeout: 10 * time.Second}
	get := func() error {
		resp, err := forward.Get(target.URL + "/good")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	for range 5 {
		if err := get(); err != nil {
			t.Fatalf("before the flood: %v", err)
		}
	}

	for _, victim := range []struct {
		name          string
		p             *process
		port, metrics int
	}{{"coordinator", b.coord, b.quicPort, b.coordMetrics}, {"localproxy", lp, udpPort, proxyMetrics}} {
		idle := rss(t, victim.p)
		stop := make(chan struct{})
		peak := peakRSS(t, victim.p, stop)
		var requests, failed atomic.Int64
		var wg sync.WaitGroup
		floodDone := make(chan struct{})
		wg.Go(func() {
			for {
				select {
				case <-floodDone:
					return
				default:
				}
				requests.Add(1)
				if err := get(); err != nil {
					failed.Add(1)
					t.Logf("request during the %s flood: %v", victim.name, err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
		n := floodInitials(t, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: victim.port})
		close(floodDone)
		wg.Wait()
		for range 5 {
			if err := get(); err != nil {
				t.Errorf("request after the %s flood: %v", victim.name, err)
			}
		}
		close(stop)
		top := <-peak
		t.Logf("%s: %d fake Initials in %v; RSS idle %d MiB, peak %d MiB; %d of %d requests during the flood failed",
			victim.name, n, floodFor, idle>>20, top>>20, failed.Load(), requests.Load())
		if top > idle+floodRSSHeadroom {
			t.Errorf("%s RSS went from %d MiB to %d MiB under the flood, want at most %d MiB more", victim.name, idle>>20, top>>20, floodRSSHeadroom>>20)
		}
		if failed.Load() > 0 {
			t.Errorf("%d of %d requests during the %s flood failed", failed.Load(), requests.Load(), victim.name)
		}
		if v, err := metric(victim.metrics, "quictunnel_handshake_retries_total"); err != nil || v == 0 {
			t.Errorf("%s handshake_retries_total %v (%v), want fake Initials answered with a Retry", victim.name, v, err)
		}
	}
	// A client that connects now, with the fake connections still
	// pending, gets in (through a Retry).
	second := start(t, nil, "localproxy", "--listen", "127.0.0.1:0", "--coordinator", loop(b.quicPort), "--token", binToken,
		"--ca", filepath.Join(b.certs, "ca.pem"), "--server-name", "localhost", "--name", "second")
	waitFor(t, "a new client to connect after the flood", func() bool { return strings.Contains(second.out.String(), "connected to coordinator") })
}

// proxyTransportTo returns a transport through the localproxy on port.
func proxyTransportTo(t *testing.T, port int) *http.Transport {
	b := &binLab{proxyPort: port}
	return b.proxyTransport(t)
}

// TestHandshakeFlood opens many real QUIC connections to coordinator from
// one source (127.0.0.2) that complete TLS and then say nothing, each
// also opening streams and filling them: coordinator refuses those beyond
// its per-source bound, stays within floodRSSHeadroom of its idle RSS,
// and a good client keeps working.
func TestHandshakeFlood(t *testing.T) {
	target := startTarget(t, "127.0.0.1", bulkHandler())
	b := startBinLab(t, binLabOptions{})
	forward := &http.Client{Transport: b.proxyTransport(t), Timeout: 10 * time.Second}
	get := func() error {
		resp, err := forward.Get(target.URL + "/good")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	if err := get(); err != nil {
		t.Fatalf("before the flood: %v", err)
	}
	idle := rss(t, b.coord)
	stop := make(chan struct{})
	peak := peakRSS(t, b.coord, stop)

	_, pool := loadCoordinatorCert(t)
	tlsConf := &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{quictun.ALPNControl}, MinVersion: tls.VersionTLS13}
	const conns, streams = 400, 200
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var established, refused atomic.Int64
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			ok, err := silentClient(ctx, coordAddr(b), tlsConf, streams)
			switch {
			case ok:
				established.Add(1)
			case err != nil:
				refused.Add(1)
			}
		})
	}
	began := time.Now()
	wg.Wait()
	t.Logf("flood took %v", time.Since(began))
	for range 5 {
		if err := get(); err != nil {
			t.Errorf("request after the handshake flood: %v", err)
		}
	}
	t.Logf("flood and requests took %v", time.Since(began))
	close(stop)
	top := <-peak
	t.Logf("%d silent connections with %d filled streams each: %d established, %d refused; coordinator RSS idle %d MiB, peak %d MiB",
		conns, streams, established.Load(), refused.Load(), idle>>20, top>>20)
	if top > idle+floodRSSHeadroom {
		t.Errorf("coordinator RSS went from %d MiB to %d MiB under the handshake flood, want at most %d MiB more", idle>>20, top>>20, floodRSSHeadroom>>20)
	}
}

func coordAddr(b *binLab) *net.UDPAddr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: b.quicPort}
}

// silentClient connects from 127.0.0.2, opens a control stream on which
// it says nothing, then streams more streams with 64 KiB on each (as much
// as flow control lets through), and holds the connection until
// coordinator closes it or for floodHold. It reports whether the handshake
// completed.
func silentClient(ctx context.Context, addr *net.UDPAddr, tlsConf *tls.Config, streams int) (bool, error) {
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		return false, err
	}
	defer udp.Close()
	tr := &quic.Transport{Conn: udp}
	defer tr.Close()
	conn, err := tr.Dial(ctx, addr, tlsConf, quictun.QUICConfig(100, 5*time.Second))
	if err != nil {
		return false, err
	}
	defer conn.CloseWithError(0, "")
	if _, err := conn.OpenStream(); err != nil { // the control stream, silent
		return true, nil
	}
	junk := make([]byte, 64<<10)
	fill := time.Now().Add(500 * time.Millisecond) // a write waits for window at most until then
	for range streams {
		s, err := conn.OpenStream()
		if err != nil {
			break
		}
		s.SetWriteDeadline(fill)
		if _, err := s.Write(junk); err != nil {
			break
		}
	}
	select {
	case <-conn.Context().Done():
	case <-time.After(floodHold):
	case <-ctx.Done():
	}
	return true, nil
}
