"""Test certificates made with the openssl CLI: a CA, server and client certificates
(the client's OU is its agentd role). For tests only; operators use agentd's own
development-CA command or their PKI."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(directory: Path, name: str = "test-ca") -> Cert:
    directory.mkdir(parents=True, exist_ok=True)
    ca = Cert(directory / f"{name}.pem", directory / f"{name}-key.pem")
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", str(ca.key), "-out", str(ca.cert),
    )  # fmt: skip
    return ca


def issue(ca: Cert, directory: Path, name: str, ou: str = "", sans: tuple[str, ...] = ()) -> Cert:
    """A certificate signed by `ca`: CN=name, OU=ou, subjectAltNames `sans`
    ("DNS:localhost", "IP:127.0.0.1")."""
    out = Cert(directory / f"{name}.pem", directory / f"{name}-key.pem")
    csr = directory / f"{name}.csr"
    subject = f"/CN={name}" + (f"/OU={ou}" if ou else "")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-subj", subject, "-keyout", str(out.key), "-out", str(csr),
    )  # fmt: skip
    extensions = directory / f"{name}.ext"
    lines = ["basicConstraints=CA:FALSE", "keyUsage=digitalSignature,keyEncipherment"]
    lines.append("extendedKeyUsage=serverAuth,clientAuth")
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    extensions.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(out.cert),
    )  # fmt: skip
    return out
