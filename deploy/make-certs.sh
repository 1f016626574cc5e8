#!/usr/bin/env bash
# Usage: deploy/make-certs.sh [DIR] [EXTRA_NAME...]
#
# A private CA and the certificates for TLS/mTLS of the K2 services' gRPC (docs/deployment.md), written to DIR
# (default .run/tls, outside version control):
#   ca.crt, ca.key                      the CA (keep ca.key off the servers)
#   ingest|writer|query.crt and .key    server certificates naming the compose service, localhost, 127.0.0.1
#                                       and every EXTRA_NAME (a DNS name or an IP address clients connect to)
#   client.crt, client.key              a client certificate for mTLS (CLI, grpcurl, the health checks)
# Files that exist are kept; delete DIR to issue everything anew. ECDSA P-256, valid K2_CERT_DAYS (365) days.
set -euo pipefail

DIR="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.run/tls}"
shift || true
DAYS="${K2_CERT_DAYS:-365}"
mkdir -p "$DIR"
umask 077

new_key_and_request() {  # new_key_and_request NAME SUBJECT
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$2" \
    -keyout "$DIR/$1.key" -out "$DIR/$1.csr" 2>/dev/null
}

sign() {  # sign NAME EXTENSIONS
  local extensions="$DIR/$1.ext"
  printf '%s\nbasicConstraints=critical,CA:FALSE\n' "$2" >"$extensions"
  openssl x509 -req -in "$DIR/$1.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" -days "$DAYS" \
    -set_serial "0x$(openssl rand -hex 16)" -extfile "$extensions" -out "$DIR/$1.crt" 2>/dev/null
  rm -f "$DIR/$1.csr" "$extensions"
}

if [ ! -s "$DIR/ca.crt" ]; then
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days "$DAYS" \
    -subj "/CN=K2 private CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout "$DIR/ca.key" -out "$DIR/ca.crt" 2>/dev/null
  echo "make-certs: new CA $DIR/ca.crt" >&2
fi

extra_names=""
for name in "$@"; do
  if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then
    extra_names+=",IP:$name"
  else
    extra_names+=",DNS:$name"
  fi
done

for service in ingest writer query; do
  [ -s "$DIR/$service.crt" ] && continue
  new_key_and_request "$service" "/CN=$service"
  sign "$service" "subjectAltName=DNS:$service,DNS:localhost,IP:127.0.0.1$extra_names
extendedKeyUsage=serverAuth"
  echo "make-certs: $DIR/$service.crt" >&2
done

if [ ! -s "$DIR/client.crt" ]; then
  new_key_and_request client "/CN=k2-client"
  sign client "extendedKeyUsage=clientAuth"
  echo "make-certs: $DIR/client.crt" >&2
fi

# Certificates are public; keys stay private to their owner. The containers run as uid 10001, which must be
# able to read the keys they use (deployment.md shows the chown).
chmod 0644 "$DIR"/*.crt
chmod 0600 "$DIR"/*.key
