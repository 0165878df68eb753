"""A development certificate authority for NodeService's mutual TLS.

`agentctl certs init DIR --server-name node1 --client scheduler:kube --client
observer:grafana` writes a CA, a server certificate for the daemon and one client
certificate per --client, whose subject OU is the role (auth.py reads it back).
For production, issue the same shapes from your own PKI: server certificates with
serverAuth and the node's names as SANs, client certificates with clientAuth and
OU=scheduler or OU=observer.

EC P-256 keys: generated in microseconds and accepted by every TLS stack grpc uses.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLES = ("scheduler", "observer")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def parse_client(spec: str) -> tuple[str, str]:
    """`role:name` as given to --client; ValueError with the reason otherwise."""
    role, sep, name = spec.partition(":")
    if not sep or role not in ROLES:
        raise ValueError(f"{spec!r}: must be ROLE:NAME with ROLE one of {', '.join(ROLES)}")
    if not _NAME.match(name):
        raise ValueError(f"{spec!r}: NAME must match [A-Za-z0-9_.-]{{1,64}}")
    return role, name


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _save(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Issued:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(key_path, key_pem, 0o600)
    return Issued(cert_path, key_path)


def new_authority(common_name: str = "agentd development CA", days: int = 365) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def issue(
    ca: Authority,
    subject: x509.Name,
    server_names: list[str] | None = None,
    days: int = 365,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate: a server one when `server_names` is given, else a client."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server_names is not None:
        sans: list[x509.GeneralName] = []
        for name in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        usage = ExtendedKeyUsageOID.SERVER_AUTH
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(ca.key, hashes.SHA256()), key


def client_subject(role: str, name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agentd"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )


def init_directory(
    directory: Path,
    server_names: list[str],
    clients: list[tuple[str, str]],
    days: int = 365,
) -> dict[str, Issued]:
    """Write ca, server and client-<name> certificates and keys into `directory`.

    The server certificate also names localhost and 127.0.0.1, so a scheduler on the
    node itself (and the tests) can connect over loopback."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = new_authority(days=days)
    out = {"ca": _save(directory, "ca", ca.cert, ca.key)}
    names = list(dict.fromkeys([*server_names, "localhost", "127.0.0.1"]))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_names[0])])
    out["server"] = _save(directory, "server", *issue(ca, subject, names, days))
    for role, name in clients:
        cert, key = issue(ca, client_subject(role, name), days=days)
        out[f"client-{name}"] = _save(directory, f"client-{name}", cert, key)
    return out
