#!/usr/bin/env bash
# Generate a self-signed certificate authority (CA) and a TLS certificate for the Flower SuperLink.
#
# FOR TEST DEPLOYMENTS ONLY. In production use certificates issued by the hospital network's PKI (or another
# trusted CA) for the coordinator's real DNS name; see deploy/README.md.
#
# Usage:  deploy/gen_certs.sh [OUT_DIR] [EXTRA_SAN ...]
#   OUT_DIR    where to write ca.crt, ca.key, server.pem, server.key (default: deploy/certs)
#   EXTRA_SAN  extra subjectAltName entries for the SuperLink, e.g. DNS:coordinator.example.org IP:10.0.0.5
#              (localhost and 127.0.0.1 are always included)
#
# Writes:
#   ca.crt      the CA certificate: give it to every hospital (SuperNode --root-certificates) and to the
#               operator's `flwr` CLI (root-certificates in config.toml). It is public.
#   ca.key      the CA private key: keep it offline; it signs SuperLink certificates.
#   server.pem  the SuperLink certificate (flower-superlink --ssl-certfile)
#   server.key  the SuperLink private key (flower-superlink --ssl-keyfile); stays on the coordinator.
set -euo pipefail

OUT_DIR="${1:-deploy/certs}"
shift || true
DAYS="${FEDMEDLORA_CERT_DAYS:-365}"
BITS="${FEDMEDLORA_CERT_BITS:-4096}"

command -v openssl >/dev/null 2>&1 || { echo "error: openssl not found on PATH" >&2; exit 2; }
mkdir -p "$OUT_DIR"
umask 077

SAN="DNS:localhost,IP:127.0.0.1,IP:::1"
for extra in "$@"; do
  SAN="$SAN,$extra"
done

# 1. CA
openssl genrsa -out "$OUT_DIR/ca.key" "$BITS" 2>/dev/null
openssl req -x509 -new -nodes -key "$OUT_DIR/ca.key" -sha256 -days "$DAYS" \
  -subj "/O=fedmedlora test deployment/CN=fedmedlora test CA" -out "$OUT_DIR/ca.crt"

# 2. SuperLink key + certificate signing request + certificate with subjectAltName
openssl genrsa -out "$OUT_DIR/server.key" "$BITS" 2>/dev/null
openssl req -new -key "$OUT_DIR/server.key" -subj "/O=fedmedlora test deployment/CN=localhost" \
  -out "$OUT_DIR/server.csr"
EXT_FILE="$(mktemp)"
trap 'rm -f "$EXT_FILE"' EXIT
cat > "$EXT_FILE" <<EXT
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $SAN
EXT
openssl x509 -req -in "$OUT_DIR/server.csr" -CA "$OUT_DIR/ca.crt" -CAkey "$OUT_DIR/ca.key" \
  -CAcreateserial -out "$OUT_DIR/server.pem" -days "$DAYS" -sha256 -extfile "$EXT_FILE" 2>/dev/null
rm -f "$OUT_DIR/server.csr" "$OUT_DIR/ca.srl"
chmod 644 "$OUT_DIR/ca.crt" "$OUT_DIR/server.pem"

echo "CA certificate:        $OUT_DIR/ca.crt   (public; give to hospitals and the flwr CLI)"
echo "CA private key:        $OUT_DIR/ca.key   (keep offline)"
echo "SuperLink certificate: $OUT_DIR/server.pem  (SAN: $SAN)"
echo "SuperLink private key: $OUT_DIR/server.key  (stays on the coordinator)"
