"""TLS material (a self-signed test CA, FOR TEST DEPLOYMENTS) and the SuperNodes' authentication keys.

Owns: the self-signed test CA and the SuperLink certificate signed by it (``openssl``; same result as
``deploy/gen_certs.sh``), the ``TLSFiles`` layout of a certificate folder, and the per-hospital ECDSA P-384
key pairs SuperNodes authenticate with (``ssh-keygen``; same as ``deploy/gen_node_keys.sh``).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedmedlora.deploy.tools import DeployError, _run_tool

# ---- TLS material and node keys ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """The files of a (test) certificate authority and the SuperLink certificate."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_dir(cls, folder: str | Path) -> TLSFiles:
        d = Path(folder)
        return cls(d / "ca.crt", d / "ca.key", d / "server.pem", d / "server.key")

    def check(self, *, server: bool = True) -> None:
        """Raise ``DeployError`` naming the first missing file."""
        needed = [self.ca_cert, self.server_cert, self.server_key] if server else [self.ca_cert]
        for p in needed:
            if not p.is_file():
                raise DeployError(f"TLS file {p} does not exist (run `fedmedlora deploy certs` or deploy/gen_certs.sh)")


def generate_certs(
    out_dir: str | Path, *, sans: Sequence[str] = (), days: int = 365, bits: int = 4096, force: bool = False
) -> TLSFiles:
    """Create a self-signed CA and a SuperLink certificate signed by it (FOR TEST DEPLOYMENTS).

    Same result as ``deploy/gen_certs.sh``. The certificate's subjectAltName always holds ``localhost``,
    ``127.0.0.1`` and ``::1``.

    Args:
        out_dir: Folder for ``ca.crt``, ``ca.key``, ``server.pem``, ``server.key`` (created).
        sans: Extra subjectAltName entries such as ``DNS:coordinator.example.org`` or ``IP:10.0.0.5``.
        days: Validity.
        bits: RSA key size (tests may use 2048 to save time).
        force: replace an existing CA and certificate (every hospital's ``ca.crt`` then has to be replaced too).

    Returns:
        The paths written.

    Raises:
        DeployError: openssl missing or failing, a malformed SAN entry, or ``out_dir`` already holding a CA or
            certificate (without ``force``). The files appear all together or not at all.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = TLSFiles.in_dir(out)
    present = [p.name for p in (final.ca_cert, final.ca_key, final.server_cert, final.server_key) if p.exists()]
    if present and not force:
        raise DeployError(
            f"{out} already holds {', '.join(present)}: every hospital's ca.crt is signed by that CA, so it is kept; "
            "use --force to replace it (and redistribute ca.crt)"
        )
    staging = Path(tempfile.mkdtemp(prefix=".certs-", dir=out))
    try:
        files = _generate_certs(TLSFiles.in_dir(staging), sans, days, bits)
        for src, dst in ((files.ca_cert, final.ca_cert), (files.ca_key, final.ca_key),
                         (files.server_cert, final.server_cert), (files.server_key, final.server_key)):  # fmt: skip
            src.replace(dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _generate_certs(files: TLSFiles, sans: Sequence[str], days: int, bits: int) -> TLSFiles:
    san = ["DNS:localhost", "IP:127.0.0.1", "IP:::1"]
    for s in sans:
        if not re.fullmatch(r"(DNS|IP):[A-Za-z0-9.:*-]+", s):
            raise DeployError(f"subjectAltName entry {s!r}: expected DNS:<name> or IP:<address>")
        san.append(s)
    subj = "/O=fedmedlora test deployment"
    ssl = "openssl"
    _run_tool([ssl, "genrsa", "-out", str(files.ca_key), str(bits)], "CA key")
    _run_tool(
        [ssl, "req", "-x509", "-new", "-nodes", "-key", str(files.ca_key), "-sha256", "-days", str(days),
         "-subj", f"{subj}/CN=fedmedlora test CA", "-out", str(files.ca_cert)],
        "CA certificate",
    )  # fmt: skip
    _run_tool([ssl, "genrsa", "-out", str(files.server_key), str(bits)], "SuperLink key")
    with tempfile.TemporaryDirectory() as tmp:
        csr, ext = Path(tmp) / "server.csr", Path(tmp) / "ext.cnf"
        ext.write_text(
            "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature, keyEncipherment\n"
            f"extendedKeyUsage = serverAuth\nsubjectAltName = {','.join(san)}\n",
            encoding="utf-8",
        )
        _run_tool(
            [ssl, "req", "-new", "-key", str(files.server_key), "-subj", f"{subj}/CN=localhost", "-out", str(csr)],
            "SuperLink certificate request",
        )
        _run_tool(
            [ssl, "x509", "-req", "-in", str(csr), "-CA", str(files.ca_cert), "-CAkey", str(files.ca_key),
             "-CAcreateserial", "-CAserial", str(Path(tmp) / "ca.srl"), "-out", str(files.server_cert),
             "-days", str(days), "-sha256", "-extfile", str(ext)],
            "SuperLink certificate",
        )  # fmt: skip
    files.ca_key.chmod(0o600)
    files.server_key.chmod(0o600)
    return files


def generate_node_key(out_dir: str | Path, site: str) -> tuple[Path, Path]:
    """Create the ECDSA P-384 key pair a hospital's SuperNode authenticates with (``<site>``, ``<site>.pub``).

    An existing key is kept (never overwritten). Same as ``deploy/gen_node_keys.sh``.

    Raises:
        DeployError: a site name that is not a plain file name, or ssh-keygen missing / failing.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", site) or site.startswith("."):
        raise DeployError(f"site name {site!r}: use letters, digits, '_', '.', '-'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / site, out / f"{site}.pub"
    if not private.exists():
        _run_tool(
            ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-C", f"fedmedlora-supernode-{site}",
             "-f", str(private)],
            f"node key for {site}",
        )  # fmt: skip
    if not public.is_file():
        raise DeployError(f"{private} exists but its public key {public} is missing")
    return private, public
