package demoapp_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"

	"quictunnel/internal/demoapp"
)

// Serve the demo app on a loopback port and ask it to echo a request.
func ExampleServe() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- demoapp.Serve(ctx, ln, nil) }()
	defer func() { cancel(); <-done }()

	req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/hello?x=1", nil)
	req.Header.Set("X-Demo", "yes")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	var e demoapp.Echo
	json.NewDecoder(resp.Body).Decode(&e)
	fmt.Println(e.Method, e.Path, e.Query, e.HeadersRaw)
	for _, h := range e.Headers {
		if h.Name != "Host" {
			fmt.Printf("%s: %s\n", h.Name, h.Value)
		}
	}
	// Output:
	// GET /hello x=1 true
	// User-Agent: Go-http-client/1.1
	// X-Demo: yes
	// Accept-Encoding: gzip
}
