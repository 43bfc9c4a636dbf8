package localproxy

import (
	"net"
	"strings"
	"sync"
	"time"
)

// uiMux shares the proxy's listener with the inspector page: it peeks at
// the first bytes of each connection (leaving them in the socket) and
// hands a connection whose first request is for /ui to the page, every
// other one to the proxy untouched. Browsers send their first request at
// once on a proxy connection, so the peek costs nothing; a connection
// that sends nothing for uiPeekTimeout, or one beyond uiMaxPeeks, goes to
// the proxy unexamined.
type uiMux struct {
	ln        net.Listener
	proxy, ui chan net.Conn
	done      chan struct{} // closed when ln's Accept fails for good
	err       error         // why, once done is closed
	wg        sync.WaitGroup
	slots     chan struct{}
	mu        sync.Mutex
	peeking   map[net.Conn]struct{}
	closeOnce sync.Once
}

const (
	// uiPeekTimeout bounds the wait for a connection's first bytes.
	uiPeekTimeout = 10 * time.Second
	// uiMaxPeeks bounds the connections being examined at once.
	uiMaxPeeks = 512
)

func newUIMux(ln net.Listener) *uiMux {
	m := &uiMux{ln: ln, proxy: make(chan net.Conn), ui: make(chan net.Conn), done: make(chan struct{}),
		slots: make(chan struct{}, uiMaxPeeks), peeking: make(map[net.Conn]struct{})}
	m.wg.Add(1)
	go m.accept()
	return m
}

func (m *uiMux) accept() {
	defer m.wg.Done()
	for {
		c, err := m.ln.Accept()
		if err != nil {
			if ne, ok := err.(interface{ Temporary() bool }); ok && ne.Temporary() {
				time.Sleep(50 * time.Millisecond) // out of file descriptors: let some close
				continue
			}
			m.err = err
			close(m.done)
			m.closePeeking()
			return
		}
		select {
		case m.slots <- struct{}{}:
			m.mu.Lock()
			m.peeking[c] = struct{}{}
			m.mu.Unlock()
			m.wg.Add(1)
			go m.classify(c)
		default:
			m.hand(m.proxy, c)
		}
	}
}

// classify peeks at c's first bytes and hands it on.
func (m *uiMux) classify(c net.Conn) {
	defer m.wg.Done()
	ui := false
	var b [16]byte
	c.SetReadDeadline(time.Now().Add(uiPeekTimeout))
	if n, err := peek(c, b[:]); err == nil {
		ui = isUIRequest(b[:n])
	}
	c.SetReadDeadline(time.Time{})
	m.mu.Lock()
	delete(m.peeking, c)
	m.mu.Unlock()
	<-m.slots
	if ui {
		m.hand(m.ui, c)
	} else {
		m.hand(m.proxy, c)
	}
}

// hand gives c to the listener behind ch, or closes it once the mux is
// done.
func (m *uiMux) hand(ch chan net.Conn, c net.Conn) {
	select {
	case ch <- c:
	case <-m.done:
		c.Close()
	}
}

func (m *uiMux) closePeeking() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for c := range m.peeking {
		c.SetReadDeadline(time.Now())
	}
}

// close closes the shared listener; wait then waits for the connections
// being examined.
func (m *uiMux) close() error {
	var err error
	m.closeOnce.Do(func() { err = m.ln.Close() })
	return err
}

func (m *uiMux) wait() { m.wg.Wait() }

// isUIRequest reports whether b begins a request for /ui or below it.
func isUIRequest(b []byte) bool {
	s := string(b)
	for _, m := range []string{"GET ", "HEAD ", "POST "} {
		if rest, ok := strings.CutPrefix(s, m); ok {
			if len(rest) < 4 || rest[:3] != "/ui" {
				return false
			}
			switch rest[3] {
			case '/', ' ', '?':
				return true
			}
			return false
		}
	}
	return false
}

func (m *uiMux) proxyListener() net.Listener { return muxListener{m, m.proxy} }
func (m *uiMux) uiListener() net.Listener    { return muxListener{m, m.ui} }

// muxListener is one side of a uiMux.
type muxListener struct {
	m  *uiMux
	ch chan net.Conn
}

func (l muxListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.m.done:
		return nil, l.m.err
	}
}

func (l muxListener) Close() error   { return l.m.close() }
func (l muxListener) Addr() net.Addr { return l.m.ln.Addr() }
