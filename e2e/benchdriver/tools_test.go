package main

import (
	"testing"
	"time"
)

// wrkReport is wrk 4.1's report of a --latency run.
const wrkReport = `Running 5s test @ http://127.0.0.1:20001/healthz
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.61ms    3.02ms  61.40ms   93.81%
    Req/Sec    12.51k     1.06k   14.78k    72.00%
  Latency Distribution
     50%    2.30ms
     75%    2.71ms
     90%    3.40ms
     99%   17.26ms
  124462 requests in 5.00s, 9.14MB read
Requests/sec:  24892.40
Transfer/sec:      1.83MB
`

func TestParseWrk(t *testing.T) {
	for _, tc := range []struct {
		name, out string
		want      toolResult
		wantErr   bool
	}{
		{name: "report", out: wrkReport, want: toolResult{requests: 124462, elapsed: 5 * time.Second,
			p50: 2300 * time.Microsecond, p99: 17260 * time.Microsecond}},
		{name: "few errors", out: wrkReport + "  Socket errors: connect 0, read 3, write 0, timeout 2\n",
			want: toolResult{requests: 124462, elapsed: 5 * time.Second, p50: 2300 * time.Microsecond, p99: 17260 * time.Microsecond, errors: 5}},
		{name: "too many non-2xx", out: wrkReport + "  Non-2xx or 3xx responses: 124462\n", wantErr: true},
		{name: "no latency distribution", out: "  10 requests in 1.00s, 1KB read\n", wantErr: true},
		{name: "nothing", out: "unable to connect to 127.0.0.1:1 Connection refused\n", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseWrk(tc.out)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if !tc.wantErr && got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func FuzzParseWrk(f *testing.F) {
	f.Add(wrkReport)
	f.Add("  1 requests in 1us\n     50%  1us\n     99%  1m\n")
	f.Fuzz(func(t *testing.T, out string) {
		r, err := parseWrk(out)
		if err == nil && (r.requests <= 0 || r.elapsed <= 0 || r.p50 <= 0 || r.p99 <= 0 || r.errors*100 > r.requests) {
			t.Fatalf("accepted %+v from %q", r, out)
		}
	})
}
