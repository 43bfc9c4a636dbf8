#!/usr/bin/env bash
# Writes a throwaway CA and a coordinator certificate (for localhost,
# 127.0.0.1 and ::1) into DIR with openssl, plus an unrelated second CA and
# certificate for negative tests. Test material only: never use in production.
set -euo pipefail
dir=${1:?usage: gen-certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
days=3650
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

make_ca() { # name, subject
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -keyout "$1-key.pem" -out "$1.pem" -subj "$2" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
}
make_cert() { # name, ca, subject, san
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1-key.pem" \
    -out "$tmp/$1.csr" -subj "$3" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n' "$4" >"$tmp/$1.ext"
  openssl x509 -req -in "$tmp/$1.csr" -CA "$2.pem" -CAkey "$2-key.pem" -CAcreateserial -CAserial "$tmp/$2.srl" \
    -days "$days" -extfile "$tmp/$1.ext" -out "$1.pem" 2>/dev/null
}

make_ca ca "/CN=quictunnel test CA"
make_cert coordinator ca "/CN=localhost" "DNS:localhost,IP:127.0.0.1,IP:::1"
make_ca other-ca "/CN=unrelated test CA"
make_cert other other-ca "/CN=localhost" "DNS:localhost,IP:127.0.0.1,IP:::1"
chmod 644 ./*.pem
echo "wrote test certificates to $dir"
