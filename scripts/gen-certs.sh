#!/usr/bin/env bash
# Usage: scripts/gen-certs.sh DIR
#
# Writes throwaway test certificates into DIR with openssl (ECDSA P-256,
# valid 10 years):
#   ca.pem, ca-key.pem                   a test CA
#   coordinator.pem, coordinator-key.pem signed by it, for DNS:localhost,
#                                        DNS:app.localhost, DNS:*.localhost, IP:127.0.0.1
#                                        and IP:::1, serverAuth+clientAuth (app.localhost:
#                                        OpenSSL and browsers refuse a wildcard right
#                                        under a top-level name; Go accepts it)
#   other-ca.pem, other-ca-key.pem       an unrelated CA
#   other.pem, other-key.pem             signed by the unrelated CA, same names
#                                        (for "wrong CA" negative tests)
# The set is made in a temporary directory, checked with openssl verify and
# only then moved into DIR, so a failure leaves DIR as it was.
# Test material only: the private keys are public. Never use in production.
set -euo pipefail
dir=${1:?usage: gen-certs.sh DIR}
command -v openssl >/dev/null || { echo "gen-certs: openssl not found (apt-get install openssl)" >&2; exit 1; }
days=3650
san="DNS:localhost,DNS:app.localhost,DNS:*.localhost,IP:127.0.0.1,IP:::1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ossl runs openssl quietly, showing its output only if it fails.
ossl() {
  if ! openssl "$@" >"$tmp/log" 2>&1; then
    echo "gen-certs: openssl $1 failed:" >&2
    cat "$tmp/log" >&2
    exit 1
  fi
}

make_ca() { # name, subject
  ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -keyout "$tmp/$1-key.pem" -out "$tmp/$1.pem" -subj "$2" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}

make_cert() { # name, ca name, subject, subjectAltName
  ossl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/$1-key.pem" \
    -out "$tmp/$1.csr" -subj "$3"
  printf '%s\n' "subjectAltName=$4" "extendedKeyUsage=serverAuth,clientAuth" \
    "keyUsage=critical,digitalSignature" "basicConstraints=CA:FALSE" >"$tmp/$1.ext"
  ossl x509 -req -in "$tmp/$1.csr" -CA "$tmp/$2.pem" -CAkey "$tmp/$2-key.pem" \
    -CAcreateserial -CAserial "$tmp/$2.srl" -days "$days" -extfile "$tmp/$1.ext" -out "$tmp/$1.pem"
  ossl verify -CAfile "$tmp/$2.pem" -purpose sslserver "$tmp/$1.pem"
  ossl verify -CAfile "$tmp/$2.pem" -purpose sslclient "$tmp/$1.pem"
}

make_ca ca "/CN=quictunnel test CA"
make_cert coordinator ca "/CN=localhost" "$san"
make_ca other-ca "/CN=unrelated test CA"
make_cert other other-ca "/CN=localhost" "$san"
if openssl verify -CAfile "$tmp/ca.pem" "$tmp/other.pem" >/dev/null 2>&1; then
  echo "gen-certs: other.pem verifies against ca.pem; the CAs are not unrelated" >&2
  exit 1
fi

mkdir -p "$dir"
for f in ca ca-key coordinator coordinator-key other-ca other-ca-key other other-key; do
  chmod 644 "$tmp/$f.pem" # test material, readable by the test user
  mv "$tmp/$f.pem" "$dir/$f.pem"
done
echo "gen-certs: wrote test certificates to $dir"
