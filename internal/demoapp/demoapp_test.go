package demoapp

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/coder/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestDemoApp(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	defer srv.Client().CloseIdleConnections()

	t.Run("echo", func(t *testing.T) {
		req, _ := http.NewRequest("PUT", srv.URL+"/a/b?x=1", strings.NewReader("hello"))
		req.Header.Add("X-Twice", "1")
		req.Header.Add("X-Twice", "2")
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e Echo
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte("hello"))
		if e.Method != "PUT" || e.Path != "/a/b" || e.Query != "x=1" || e.BodyLength != 5 ||
			e.BodySHA256 != hex.EncodeToString(sum[:]) || strings.Join(e.Headers["X-Twice"], ",") != "1,2" {
			t.Fatalf("echo %+v", e)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		resp, err := srv.Client().Get(srv.URL + "/bytes?n=100000")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if len(b) != 100000 || b[99999] != byte(99999*7%251) {
			t.Fatalf("got %d bytes", len(b))
		}
	})
	t.Run("sse", func(t *testing.T) {
		resp, err := srv.Client().Get(srv.URL + "/sse?n=3&interval=1ms")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		events := 0
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "data: ") {
				events++
			}
		}
		if events != 3 {
			t.Fatalf("%d events", events)
		}
	})
	t.Run("websocket", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		c.Write(ctx, websocket.MessageText, []byte("ping"))
		_, msg, err := c.Read(ctx)
		if err != nil || string(msg) != "ping" {
			t.Fatalf("%q %v", msg, err)
		}
		c.Close(websocket.StatusNormalClosure, "")
	})
}
