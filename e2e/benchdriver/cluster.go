package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// The cluster phase (issue 20): an etcd (Debian's etcd-server) and two
// coordinators as one cluster; a localproxy connected to node A exposes
// the lean origin. The same small-request load is sent to A's public port
// (the owner node) and to B's (which forwards each connection to A over
// the inter-node QUIC link), alternately, cfg.rounds times; the median
// pair (by ratio) is reported.

// clusterRow is one round: the load on the non-owner node next to the
// same load on the owner node just before it.
type clusterRow struct {
	owner, other loadResult
}

func (row clusterRow) ratio() float64 { return row.other.rate() / row.owner.rate() }

// clusterResult is the phase's outcome.
type clusterResult struct {
	row     clusterRow
	ratios  []float64
	skipped string // why the phase did not run
}

// benchCluster runs the cluster phase in a lab of its own.
func benchCluster(ctx context.Context, cfg config, dir string, rep *report) error {
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		rep.cluster = &clusterResult{skipped: "etcd is not installed (Debian package etcd-server; scripts/test-deps.sh installs it)"}
		return nil
	}
	tcp, err := ports("tcp", 5)
	if err != nil {
		return err
	}
	udp, err := ports("udp", 6)
	if err != nil {
		return err
	}
	addr := func(p int) string { return "127.0.0.1:" + strconv.Itoa(p) }
	certs, _ := filepath.Abs(cfg.certs)
	var started []*proc
	defer func() {
		for i := len(started) - 1; i >= 0; i-- {
			started[i].stop()
		}
	}()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	origin := addr(tcp[4])
	etcdURL, peerURL := "http://"+addr(tcp[0]), "http://"+addr(tcp[1])
	etcdDir := filepath.Join(dir, "etcd")
	for _, c := range []struct {
		name, path string
		args       []string
	}{
		{"cluster-origin", self, []string{"-origin-listen", origin}},
		{"etcd", etcdBin, []string{"--name", "bench", "--data-dir", etcdDir, "--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
			"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL, "--initial-cluster", "bench=" + peerURL, "--log-level", "warn", "--logger", "zap"}},
	} {
		p, err := startCommand(dir, c.name, c.path, c.args...)
		if err != nil {
			return err
		}
		started = append(started, p)
	}
	if err := waitHTTP(ctx, etcdURL+"/health"); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	token := "bench-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	public := [2]string{addr(tcp[2]), addr(tcp[3])}
	for i, id := range []string{"a", "b"} {
		p, err := startProc(dir, cfg.bin, "coordinator+cluster-"+id, "--listen", addr(udp[2*i]), "--reporter-listen", addr(udp[2*i+1]),
			"--cert", filepath.Join(certs, "coordinator.pem"), "--key", filepath.Join(certs, "coordinator-key.pem"),
			"--token", token, "--http", public[i], "--domain", "localhost",
			"--cluster-etcd", etcdURL, "--node-id", id, "--cluster-listen", addr(udp[4+i]), "--cluster-token", token)
		if err != nil {
			return err
		}
		started = append(started, p)
	}
	p, err := startProc(dir, cfg.bin, "localproxy+cluster", "--listen", "127.0.0.1:0", "--coordinator", addr(udp[0]),
		"--reporter", addr(udp[1]), "--server-name", "localhost", "--ca", filepath.Join(certs, "ca.pem"),
		"--token", token, "--name", "cluster", "--expose", "corigin="+origin)
	if err != nil {
		return err
	}
	started = append(started, p)
	owner, other := hostRoute(public[0], "corigin.localhost"), hostRoute(public[1], "corigin.localhost")
	for _, r := range []route{owner, other} {
		if err := waitLoad(ctx, r, func() error {
			for _, p := range started {
				if err := p.exited(); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
	}
	var rows []clusterRow
	for range cfg.rounds {
		var row clusterRow
		if row.owner, err = smallLoad(ctx, owner, cfg.clients, cfg.load); err != nil {
			return err
		}
		if row.other, err = smallLoad(ctx, other, cfg.clients, cfg.load); err != nil {
			return err
		}
		rows = append(rows, row)
	}
	row, ratios := median(rows, clusterRow.ratio)
	rep.cluster = &clusterResult{row: row, ratios: ratios}
	return nil
}

// waitHTTP waits up to 30s for url to answer 200.
func waitHTTP(ctx context.Context, url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return errors.Join(err, ctx.Err())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitLoad waits up to 30s for one request to pass along r.
func waitLoad(ctx context.Context, r route, alive func() error) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := smallLoad(lctx, r, 1, time.Millisecond)
		cancel()
		if err == nil {
			return nil
		}
		if aerr := alive(); aerr != nil || time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("the cluster lab did not come up (%v): %w", err, errors.Join(aerr, ctx.Err()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// clusterTable reports the cluster phase.
func (r *report) clusterTable(p printer) {
	c := r.cluster
	if c == nil {
		return
	}
	p("## Cluster: a public request on a node whose client is elsewhere (issue 20)")
	p("")
	if c.skipped != "" {
		p("Not measured: %s.", c.skipped)
		p("")
		return
	}
	p("Two coordinators on one etcd (Debian's etcd-server), a localproxy connected to node A exposing the lean origin;")
	p("%d keep-alive clients GET /healthz for %s on A's public port (the owner node), then on B's, which forwards", r.cfg.clients, r.cfg.load)
	p("each public connection to A over the inter-node QUIC link; median of %d rounds by ratio.", r.cfg.rounds)
	p("")
	o, n := c.row.owner, c.row.other
	p("| path | req/s | p50 ms | p99 ms |")
	p("|---|---|---|---|")
	p("| owner node (A) | %.0f | %s | %s |", o.rate(), ms(o.p50), ms(o.p99))
	p("| non-owner node (B → A) | %.0f | %s | %s |", n.rate(), ms(n.p50), ms(n.p99))
	p("")
	rate, p99 := n.rate()/o.rate(), n.p99.Seconds()/o.p99.Seconds()
	p("| target | measured | |")
	p("|---|---|---|")
	p("| non-owner req/s ≥ 0.8× owner's | %.2f× (rounds: %s) | %s |", rate, rounds(c.ratios), verdict(rate >= 0.8))
	p("| non-owner p99 ≤ 1.5× owner's | %.2f× | %s |", p99, verdict(p99 <= 1.5))
	p("")
}
