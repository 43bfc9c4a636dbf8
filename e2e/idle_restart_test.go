package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// idleRunMsg is the line localproxy logs for each run of the idle timer.
const idleRunMsg = `msg="startup workflow re-run (idle timer)"`

// idleRuns returns the lines and times of the idle timer's runs logged
// after since.
func idleRuns(t *testing.T, log string, since time.Time) (lines []string, times []time.Time) {
	t.Helper()
	for line := range strings.Lines(log) {
		if !strings.Contains(line, idleRunMsg) {
			continue
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			t.Fatalf("log line without a time: %q", line)
		}
		if at.After(since) {
			lines, times = append(lines, line), append(times, at)
		}
	}
	return lines, times
}

// waitIdleRuns waits for n idle-timer runs after since.
func waitIdleRuns(t *testing.T, l *lab, since time.Time, n int) ([]string, []time.Time) {
	t.Helper()
	var lines []string
	var times []time.Time
	waitFor(t, fmt.Sprintf("%d idle timer runs", n), func() bool {
		lines, times = idleRuns(t, l.proxyLog.String(), since)
		return len(times) >= n
	})
	return lines, times
}

// tcpEchoServer echoes every connection; it stops with the test.
func tcpEchoServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { defer c.Close(); io.Copy(c, c) })
		}
	})
	return ln.Addr().String()
}

// connectThrough opens a CONNECT tunnel session to target through the
// lab's proxy.
func connectThrough(t *testing.T, l *lab, target string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", l.proxy.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT %s: %v %v", target, resp, err)
	}
	return c, br
}

func echoOnce(t *testing.T, c net.Conn, br *bufio.Reader, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		t.Fatal(err)
	}
	if got, err := br.ReadString('\n'); err != nil || got != msg+"\n" {
		t.Fatalf("echo %q: %q, %v", msg, got, err)
	}
}

// TestIdleTimerRerunsStartupOnTime: the idle timer re-runs the whole
// startup workflow (reporter, tunnel creation service, coordinator told)
// IdleRestart after a session last opened or closed, and every
// IdleRestart after that, each run logged at info; a session open
// meanwhile goes on, and so do the control and dial-back connections.
func TestIdleTimerRerunsStartupOnTime(t *testing.T) {
	const (
		idle = 400 * time.Millisecond
		// late is how late a run may be on a loaded machine; the old
		// ticker was up to a whole IdleRestart late.
		late = 150 * time.Millisecond
	)
	l := startLab(t, labOptions{idleRestart: idle})
	target := tcpEchoServer(t)
	within := func(what string, got time.Duration, lo, hi time.Duration) {
		t.Helper()
		if got < lo || got > hi {
			t.Errorf("%s: %v, want %v to %v", what, got, lo, hi)
		}
	}

	c, br := connectThrough(t, l, target)
	opened := time.Now()
	echoOnce(t, c, br, "first")
	lines, times := waitIdleRuns(t, l, opened.Add(-time.Millisecond), 2)
	within("first run after the session opened", times[0].Sub(opened), idle-50*time.Millisecond, idle+late)
	within("between runs with the session open", times[1].Sub(times[0]), idle-5*time.Millisecond, idle+late)
	for _, line := range lines[:2] {
		for _, want := range []string{"changed=false", "tunnel_service=serving", "coordinator=told", "public_addr=127.0.0.1:"} {
			if !strings.Contains(line, want) {
				t.Errorf("run logged without %s: %s", want, line)
			}
		}
	}
	echoOnce(t, c, br, "after two runs") // the live session went on

	c.Close()
	closed := time.Now()
	_, times = waitIdleRuns(t, l, closed, 1)
	within("first run after the session closed", times[0].Sub(closed), idle-20*time.Millisecond, idle+late)

	// The same control and dial-back connections serve the next session.
	c, br = connectThrough(t, l, target)
	echoOnce(t, c, br, "next")
	if st := l.coord.Server().Stats(); st.DialBackDials != 1 || st.DialBackSessions != 2 {
		t.Errorf("coordinator: %d dial-back dials for %d dial-back sessions, want 1 for 2", st.DialBackDials, st.DialBackSessions)
	}
	if n := l.proxy.Client().Stats().Connects; n != 1 {
		t.Errorf("control connections: %d, want 1", n)
	}
}
