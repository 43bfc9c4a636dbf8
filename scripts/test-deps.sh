#!/usr/bin/env bash
# Installs, from Debian's packages, what the tests need and this machine
# lacks: openssl (certificates), coturn (turnserver and turnutils_stunclient,
# a second STUN implementation for interop tests), iproute2, iptables and
# conntrack (the network-namespace NAT lab), curl and procps (the demo and
# the binary tests), firefox-esr, chromium and libnss3-tools (certutil) for
# the real-browser tests in e2e/browser (Debian's own builds: no browser is
# downloaded by any other means), systemd for systemd-analyze verify of
# contrib/systemd (the package installs fine where systemd does not run:
# nothing is started), tinyproxy (the upstream HTTP proxy of the
# TCP-transport lab, e2e/transport_natlab_test.go), bind9 and bind9-dnsutils
# (named and nsupdate, for contrib/acme-dns-hook-nsupdate in
# e2e/acme_dns_test.go) and etcd-server (the registry of the coordinator
# cluster tests, e2e/cluster_test.go). It also builds Pebble,
# the ACME test CA, and pebble-challtestsrv, its DNS test server
# (e2e/acme_test.go, e2e/acme_dns_test.go), from their Go module into .tools/.
#
# With --demo, only what make demo (scripts/demo.sh) uses: curl, ss
# (iproute2) and openssl (to make the certificates if they are missing).
# With --bench, only what make bench and bench-smoke use besides Go: curl
# and wrk (the curl and wrk rows of e2e/benchdriver/tools.go) and etcd
# (the cluster row, e2e/benchdriver/cluster.go).
# With --dry-run it prints the packages it would install, one a line, and
# installs nothing.
#
# Idempotent and quiet: with everything present it does nothing (and never
# runs apt-get update). As root it installs what is missing; otherwise it
# prints what to install and exits 0, and the tests needing it skip.
set -euo pipefail
# iptables, conntrack and ip live in sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

demo= dry_run= bench=
PEBBLE_VERSION=v2.10.3
for arg in "$@"; do
  case $arg in
    --demo) demo=1 ;;
    --bench) bench=1 demo=1 ;;
    --dry-run) dry_run=1 ;;
    *) echo "test-deps: unknown argument $arg (want --demo, --bench, --dry-run)" >&2; exit 2 ;;
  esac
done

need=()
want() { # command, package
  command -v "$1" >/dev/null 2>&1 || need+=("$2")
}
want curl curl
if [ -n "$bench" ]; then
  want wrk wrk
  want etcd etcd-server # the cluster row (e2e/benchdriver/cluster.go)
else
  want openssl openssl
  want ss iproute2
fi
if [ -z "$demo" ]; then
  want wrk wrk # make bench's small-request rows (e2e/benchdriver/tools.go)
  want turnserver coturn
  want turnutils_stunclient coturn
  want ip iproute2
  want tc iproute2
  want iptables iptables
  want ip6tables iptables
  want iptables-restore iptables
  want conntrack conntrack
  want pkill procps
  want ps procps
  want firefox-esr firefox-esr
  want chromium chromium
  want certutil libnss3-tools
  want systemd-analyze systemd
  want tinyproxy tinyproxy # the upstream (corporate) HTTP proxy of the TCP-transport lab
  want named bind9 # a DNS primary taking dynamic updates, for the nsupdate DNS-01 hook (e2e/acme_dns_test.go)
  want tsig-keygen bind9
  want nsupdate bind9-dnsutils
  want etcd etcd-server # the cluster registry of the coordinator cluster tests (e2e/cluster_test.go)
fi
if [ -n "$dry_run" ]; then
  [ ${#need[@]} -eq 0 ] || printf '%s\n' "${need[@]}" | sort -u
  exit 0
fi
# Pebble, the ACME test CA, and pebble-challtestsrv, its DNS test server
# (e2e/acme_test.go, e2e/acme_dns_test.go), built from their Go module into
# .tools/ at the root of the checkout; each skipped when present.
if [ -z "$demo" ] && command -v go >/dev/null 2>&1; then
  tools="$(cd "$(dirname "$0")/.." && pwd)/.tools"
  for cmd in pebble pebble-challtestsrv; do
    if [ ! -x "$tools/$cmd" ]; then
      echo "test-deps: building $cmd $PEBBLE_VERSION into $tools"
      GOBIN="$tools" GOFLAGS=-buildvcs=false go install "github.com/letsencrypt/pebble/v2/cmd/$cmd@$PEBBLE_VERSION" ||
        echo "test-deps: $cmd not built; the ACME tests needing it will be skipped" >&2
    fi
  done
fi
# The lossy-link test uses tc netem, which needs the kernel's sch_netem:
# load it where the kernel has modules. Quiet either way: without netem the
# test impairs the link with an NFQUEUE delay line and says so.
if [ -z "$demo" ] && [ "$(id -u)" = 0 ] && [ -e /proc/modules ] && command -v modprobe >/dev/null 2>&1; then
  modprobe -q sch_netem 2>/dev/null || true
fi
[ ${#need[@]} -eq 0 ] && exit 0
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)

if [ "$(id -u)" != 0 ]; then
  echo "test-deps: missing ${need[*]}; install them with: sudo apt-get install ${need[*]}" >&2
  [ -n "$demo" ] || echo "test-deps: the tests that need them will be skipped" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "test-deps: missing ${need[*]} and there is no apt-get; install them by hand" >&2
  exit 0
fi

echo "test-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
# Keep packages from starting their services (coturn would take UDP 3478,
# the demo's STUN port): a policy-rc.d that refuses, for the install only.
policy=/usr/sbin/policy-rc.d
added_policy=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  added_policy=1
fi
cleanup() { if [ -n "$added_policy" ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
log=$(mktemp)
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  rm -f "$log"
  echo "test-deps: apt-get failed" >&2
  exit 1
fi
rm -f "$log"
# On a machine with systemd the service may still have been enabled.
systemctl disable --now coturn >/dev/null 2>&1 || true
