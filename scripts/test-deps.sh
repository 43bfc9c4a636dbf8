#!/usr/bin/env bash
# Installs what the tests need from Debian's packages, if missing: openssl
# (certificates), coturn (a standard STUN client and server for interop
# tests), iproute2, iptables and conntrack (the network-namespace NAT lab),
# curl and procps (the demo and the binary tests).
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have openssl || need+=(openssl)
have turnserver || need+=(coturn)
have turnutils_stunclient || need+=(coturn)
have ip || need+=(iproute2)
have iptables || need+=(iptables)
have conntrack || need+=(conntrack)
have curl || need+=(curl)
have pkill || need+=(procps)
[ ${#need[@]} -eq 0 ] && exit 0
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" != 0 ]; then
  echo "test-deps: please install: ${need[*]} (sudo apt-get install ${need[*]}); tests needing them will be skipped" >&2
  exit 0
fi
echo "test-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# coturn's package may start a turnserver; the tests start their own.
systemctl disable --now coturn >/dev/null 2>&1 || true
