"""`agentctl certs init`: a development CA and certificates for NodeService's TCP
listener (see agentd/certs.py and docs/security.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EPILOG = """\
writes into DIR:
  ca.pem ca.key               the CA ([api] tls_client_ca = DIR/ca.pem)
  server.pem server.key       the daemon's ([api] tls_cert, tls_key)
  client-NAME.pem/.key        one per --client, subject OU = its role
keys are 0600. Development only: use your own PKI in production.
"""


def _client(spec: str) -> tuple[str, str]:
    from agentd.certs import parse_client

    try:
        return parse_client(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parser(sub: Any) -> None:
    certs = sub.add_parser(
        "certs",
        help="create a development CA and mutual-TLS certificates",
        description="Certificates for the NodeService TCP listener.",
    )
    certs_sub = certs.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    p = certs_sub.add_parser(
        "init",
        help="create a CA, a server certificate and client certificates",
        description="Create a development CA in DIR with a server certificate and one "
        "client certificate per --client.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("directory", metavar="DIR", type=Path)
    p.add_argument(
        "--server-name",
        action="append",
        required=True,
        metavar="NAME",
        help="DNS name or IP of the node (repeatable); localhost and 127.0.0.1 are added",
    )
    p.add_argument(
        "--client",
        action="append",
        default=[],
        type=_client,
        metavar="ROLE:NAME",
        help="a client certificate: ROLE is scheduler or observer (repeatable)",
    )
    p.add_argument("--days", type=int, default=365, help="validity (default 365)")
    p.add_argument("--force", action="store_true", help="overwrite an existing CA in DIR")
    p.set_defaults(handler=cmd_certs_init)


def cmd_certs_init(args: argparse.Namespace) -> int:
    from agentd.certs import init_directory
    from agentd.cli.agentctl import EXIT_USAGE, CliError

    if (args.directory / "ca.key").exists() and not args.force:
        raise CliError(f"{args.directory}/ca.key exists (--force replaces the CA)", EXIT_USAGE)
    if not 1 <= args.days <= 3650:
        raise CliError("--days must be between 1 and 3650", EXIT_USAGE)
    issued = init_directory(args.directory, args.server_name, args.client, args.days)
    for name, files in issued.items():
        print(f"{name}: {files.cert} {files.key}")
    return 0
