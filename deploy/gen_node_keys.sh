#!/usr/bin/env bash
# Generate one ECDSA (P-384) key pair per hospital for Flower SuperNode authentication.
#
# Usage:  deploy/gen_node_keys.sh [OUT_DIR] SITE [SITE ...]
#   OUT_DIR  where to write the keys (default: deploy/keys); use "-" for the default
#   SITE     hospital / site names, e.g. chia phee bc5cdr
#
# Writes, per site:  OUT_DIR/<site>      private key: stays at the hospital (flower-supernode
#                                                     --auth-supernode-private-key)
#                    OUT_DIR/<site>.pub  public key: sent to the coordinator, who registers it with
#                                        `flwr supernode register OUT_DIR/<site>.pub <connection>`
# In a real deployment each hospital runs this for its own site only, so its private key never leaves it.
# An existing key is never overwritten (re-run after deleting it to rotate).
set -euo pipefail

OUT_DIR="${1:-deploy/keys}"
[ "$OUT_DIR" = "-" ] && OUT_DIR="deploy/keys"
shift || true
if [ "$#" -eq 0 ]; then
  echo "usage: $0 [OUT_DIR] SITE [SITE ...]" >&2
  exit 2
fi
command -v ssh-keygen >/dev/null 2>&1 || { echo "error: ssh-keygen not found (install openssh-client)" >&2; exit 2; }
mkdir -p "$OUT_DIR"
for site in "$@"; do
  case "$site" in
    *[!A-Za-z0-9_.-]*|"") echo "error: invalid site name '$site' (use letters, digits, _ . -)" >&2; exit 2 ;;
  esac
  if [ -e "$OUT_DIR/$site" ]; then
    echo "kept existing key: $OUT_DIR/$site"
    continue
  fi
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedmedlora-supernode-$site" -f "$OUT_DIR/$site"
  echo "private key: $OUT_DIR/$site   public key: $OUT_DIR/$site.pub"
done
