#!/usr/bin/env bash
# Starts reporter, coordinator (with a dial-back worker: coordinator --role
# dialback), a demo app and localproxy on loopback, sends a
# request through the tunnel, prints how to use it, and keeps running until
# Ctrl-C. With DEMO_EXIT=1 it stops after the check (used by tests).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-bin}
PROXY_PORT=${PROXY_PORT:-8118}
COORD_PORT=${COORD_PORT:-4433}
STUN_PORT=${STUN_PORT:-3478}
PROBE_PORT=${PROBE_PORT:-3479}
DIALBACK_PORT=${DIALBACK_PORT:-4434}
APP_PORT=${APP_PORT:-3000}
HTTP_PORT=${HTTP_PORT:-8080}
HTTPS_PORT=${HTTPS_PORT:-8443}
TOKEN=${TOKEN:-demo-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')}
WORKER_TOKEN=${WORKER_TOKEN:-worker-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')}
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/quictunnel-demo.XXXXXX")

for tool in curl ss; do
  command -v "$tool" >/dev/null || { echo "demo: needs $tool (sudo apt-get install curl iproute2, or run scripts/test-deps.sh as root)" >&2; exit 1; }
done

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

for port in "$PROXY_PORT/tcp" "$APP_PORT/tcp" "$HTTP_PORT/tcp" "$HTTPS_PORT/tcp" "$COORD_PORT/udp" "$STUN_PORT/udp" "$PROBE_PORT/udp" "$DIALBACK_PORT/udp"; do
  proto=${port#*/}; num=${port%/*}
  if { [ "$proto" = tcp ] && ss -Hltn "sport = :$num" 2>/dev/null | grep -q .; } ||
     { [ "$proto" = udp ] && ss -Hlun "sport = :$num" 2>/dev/null | grep -q .; }; then
    echo "demo: port $num/$proto is in use; set PROXY_PORT, APP_PORT, HTTP_PORT, HTTPS_PORT, COORD_PORT, STUN_PORT, PROBE_PORT or DIALBACK_PORT to free ones" >&2
    exit 1
  fi
done

start() { # name, then the command
  local name=$1; shift
  "$@" >"$LOGDIR/$name.log" 2>&1 &
  pids+=($!)
}

start reporter "$BIN/reporter" --listen "127.0.0.1:$STUN_PORT" --probe-listen "127.0.0.1:$PROBE_PORT"
start coordinator "$BIN/coordinator" --listen "127.0.0.1:$COORD_PORT" \
  --cert testdata/certs/coordinator.pem --key testdata/certs/coordinator-key.pem --token "$TOKEN" \
  --worker-token "$WORKER_TOKEN" \
  --http "127.0.0.1:$HTTP_PORT" --https "127.0.0.1:$HTTPS_PORT" --domain localhost \
  --allow-private-targets  # the demo app is on loopback; the test certificate covers *.localhost for --https
# The dial-back part on its own address: it dials the targets and dials back to localproxy.
start dialback "$BIN/coordinator" --role dialback --listen "127.0.0.1:$DIALBACK_PORT" \
  --coordinator "127.0.0.1:$COORD_PORT" --worker-token "$WORKER_TOKEN" --ca testdata/certs/ca.pem --server-name localhost \
  --cert testdata/certs/coordinator.pem --key testdata/certs/coordinator-key.pem --allow-private-targets
start demoapp "$BIN/demoapp" --listen "127.0.0.1:$APP_PORT"
start localproxy "$BIN/localproxy" --listen "127.0.0.1:$PROXY_PORT" --coordinator "127.0.0.1:$COORD_PORT" \
  --server-name localhost --reporter "127.0.0.1:$STUN_PORT" --token "$TOKEN" --ca testdata/certs/ca.pem \
  --expose "app=127.0.0.1:$APP_PORT"

# The dial-back worker connects to coordinator on its own: wait for it
# (bounded), so the first request can take the worker's path.
for _ in $(seq 1 100); do
  grep -q 'msg="dial-back worker connected"' "$LOGDIR/coordinator.log" 2>/dev/null && break
  sleep 0.1
done

# Wait for the proxy to answer (it serves 503 until coordinator is reached).
ok=""
for _ in $(seq 1 100); do
  if out=$(curl -sS --max-time 5 -x "http://127.0.0.1:$PROXY_PORT" "http://127.0.0.1:$APP_PORT/hello?from=demo" 2>/dev/null) &&
     [[ "$out" == *'"method"'* ]]; then
    ok=1; break
  fi
  sleep 0.1
done
if [ -z "$ok" ]; then
  echo "demo: the request through the tunnel failed. Logs:" >&2
  tail -n 20 "$LOGDIR"/*.log >&2
  exit 1
fi
# Which way it went, from coordinator's access line for the session (written
# when the worker took it, or else when the session ended).
outcome=""
for _ in $(seq 1 50); do
  outcome=$(grep 'msg=session ' "$LOGDIR/coordinator.log" 2>/dev/null | grep -F "target=127.0.0.1:$APP_PORT " | tail -n 1 |
    sed -n 's/.* outcome=\("[^"]*"\|[^ ]*\).*/\1/p' | tr -d '"') || true
  [ -n "$outcome" ] && break
  sleep 0.1
done
case $outcome in
  *"dial-back via worker"*) path="browser -> localproxy -> coordinator -> dial-back worker -> demo app, and back over the worker's dial-back connection" ;;
  *"relay via worker"*) path="browser -> localproxy -> coordinator -> dial-back worker -> demo app, relayed through coordinator (the worker could not dial back)" ;;
  *dial-back*) path="browser -> localproxy -> coordinator -> demo app, and back over coordinator's own dial-back connection (the dial-back worker was not connected)" ;;
  *relay*) path="browser -> localproxy -> coordinator -> demo app, relayed over localproxy's connection (the dial-back worker was not connected and coordinator's dial-back failed)" ;;
  *) path="browser -> localproxy -> coordinator -> demo app (coordinator's log does not say which way)" ;;
esac

# The reverse direction: the demo app exposed as app.localhost on coordinator's public port.
rev=""
for _ in $(seq 1 100); do
  if rev=$(curl -sS --max-time 5 -H "Host: app.localhost:$HTTP_PORT" "http://127.0.0.1:$HTTP_PORT/from-the-public-side" 2>/dev/null) &&
     [[ "$rev" == *'"path": "/from-the-public-side"'* ]]; then
    break
  fi
  rev=""
  sleep 0.1
done
if [ -z "$rev" ]; then
  echo "demo: the request through the public port failed. Logs:" >&2
  tail -n 20 "$LOGDIR"/*.log >&2
  exit 1
fi
# The same over TLS, checked against the test CA.
if ! tls=$(curl -sS --max-time 5 --cacert testdata/certs/ca.pem --resolve "app.localhost:$HTTPS_PORT:127.0.0.1" \
     "https://app.localhost:$HTTPS_PORT/over-tls") ||
   ! grep -A1 '"name": "X-Forwarded-Proto"' <<<"$tls" | grep -q '"value": "https"'; then
  echo "demo: the request through the public HTTPS port failed: $tls. Logs:" >&2
  tail -n 20 "$LOGDIR"/*.log >&2
  exit 1
fi

cat <<EOF
== quictunnel demo: all services up on loopback ==
  reporter     udp 127.0.0.1:$STUN_PORT  (filtering probe: udp $PROBE_PORT)
  coordinator  udp 127.0.0.1:$COORD_PORT   (token: $TOKEN)
  dial-back    udp 127.0.0.1:$DIALBACK_PORT   (coordinator --role dialback: dials targets, dials back to localproxy)
  demo app     http://127.0.0.1:$APP_PORT
  localproxy   http://127.0.0.1:$PROXY_PORT  <- point your browser here
  public port  http://app.localhost:$HTTP_PORT/  -> the demo app, through the tunnel (reverse direction)
               https://app.localhost:$HTTPS_PORT/ (the same over TLS; test CA testdata/certs/ca.pem)

A request went $path
(coordinator's access log: outcome=${outcome:-?}):
$out

The reverse direction works too: a request to coordinator's public port (Host: app.localhost) reached the
demo app through localproxy, which saw it with X-Forwarded-For, X-Forwarded-Host and Forwarded added; so did
one over HTTPS, which coordinator decrypted with its certificate (the app sees X-Forwarded-Proto: https).

Try it:
  curl -x http://127.0.0.1:$PROXY_PORT http://127.0.0.1:$APP_PORT/anything
  curl http://app.localhost:$HTTP_PORT/anything            (reverse: public port -> localproxy -> app)
  curl --cacert testdata/certs/ca.pem https://app.localhost:$HTTPS_PORT/anything   (the same over TLS)
  curl -x http://127.0.0.1:$PROXY_PORT https://example.com/      (needs Internet on this machine)

Firefox: Settings > General > Network Settings > Manual proxy configuration:
  HTTP Proxy 127.0.0.1  Port $PROXY_PORT, and tick "Also use this proxy for HTTPS".

What localproxy sees now ($BIN/localproxy status --listen 127.0.0.1:$PROXY_PORT):
$("$BIN/localproxy" status --listen "127.0.0.1:$PROXY_PORT" 2>&1 | sed 's/^/  /')

Logs (one line per request/session): $LOGDIR
EOF

if [ "${DEMO_EXIT:-}" = 1 ]; then
  exit 0
fi
echo "Press Ctrl-C to stop."
wait
