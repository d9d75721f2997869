"""`edgegw browse`: list an OPC UA server's variables as tag entries for a device map."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, Subparsers, add_command, fail


def _default_pki_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "edgegw" / "pki" / "browse"


def register(sub: Subparsers) -> None:
    s = add_command(
        sub,
        "browse",
        "browse an OPC UA server and print its variables as YAML tag entries",
        "edgegw browse opc.tcp://192.168.0.10:4840 --root 'ns=2;s=Plant' --depth 4 "
        "--device-name boiler-1 > boiler-1.yaml",
    )
    s.add_argument("endpoint", help="opc.tcp://host:port[/path]")
    s.add_argument(
        "--root",
        default="i=85",
        metavar="NODE",
        help="where to start: a node id or browse path (default i=85, the Objects folder)",
    )
    s.add_argument("--depth", type=int, default=10, metavar="N", help="levels (default 10)")
    s.add_argument(
        "--device-name",
        metavar="NAME",
        help="print a whole device entry (protocol, name, endpoint, tags) named NAME",
    )
    s.add_argument(
        "--namespace-uris",
        action="store_true",
        help="write nodes as nsu=<uri>;... (stable if the server renumbers namespaces)",
    )
    s.add_argument(
        "--security-policy",
        default="None",
        metavar="POLICY",
        help="None (default) | Basic256Sha256 | Aes128Sha256RsaOaep",
    )
    s.add_argument(
        "--security-mode", metavar="MODE", help="Sign | SignAndEncrypt (default with a policy)"
    )
    s.add_argument("--username", metavar="USER", help="user name login (with --password-file)")
    s.add_argument(
        "--password-file", type=Path, metavar="FILE", help="file whose first line is the password"
    )
    s.add_argument(
        "--server-certificate", type=Path, metavar="FILE", help="trust this server certificate"
    )
    s.add_argument(
        "--trust-server",
        action="store_true",
        help="trust the server's certificate on first use (saved in PKI_DIR/trusted)",
    )
    s.add_argument(
        "--pki-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="client certificate and trust list (default ~/.local/state/edgegw/pki/browse)",
    )
    s.add_argument(
        "--timeout-ms", type=int, default=5000, metavar="MS", help="per request (default 5000)"
    )
    s.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write the YAML here, not to stdout"
    )
    s.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from drivers.opcua import Connection, NodeSyntaxError, parse_node

    if args.depth < 1:
        raise fail(f"browse: --depth {args.depth} is out of range; accepted: >= 1")
    settings: dict[str, Any] = {
        "endpoint": args.endpoint,
        "timeout_ms": args.timeout_ms,
        "security_policy": args.security_policy,
        "security_mode": args.security_mode,
        "username": args.username,
        "password_file": args.password_file,
        "server_certificate": args.server_certificate,
    }
    try:
        conn = Connection.model_validate({k: v for k, v in settings.items() if v is not None})
        root = parse_node(args.root)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            field = "--" + ".".join(map(str, err["loc"])).replace("_", "-")
            print(f"edgegw: browse: {field}: {err['msg']}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except NodeSyntaxError as exc:
        raise fail(f"browse: --root: {exc}") from None
    try:
        text = asyncio.run(_browse(conn, root, args))
    except _Failed as exc:
        print(f"edgegw: browse: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


class _Failed(Exception):
    pass


async def _browse(conn: Any, root: Any, args: argparse.Namespace) -> str:
    from drivers.contract import ConnectError
    from drivers.opcua.browse import browse_variables, to_yaml
    from drivers.opcua.client import OpcuaClient

    pki_dir = args.pki_dir or _default_pki_dir()
    client = OpcuaClient(conn, pki_dir=pki_dir, name="browse", trust_new_server=args.trust_server)
    last = [0.0]

    def progress(nodes: int, variables: int, depth: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5 or depth == args.depth:
            last[0] = now
            print(
                f"browsing: {nodes} node(s), {variables} variable(s), depth {depth}",
                file=sys.stderr,
                flush=True,
            )

    try:
        await client.connect()
    except ConnectError as exc:
        raise _Failed(str(exc)) from None
    try:
        resolved = (await client.resolve([root]))[0]
        if isinstance(resolved, str):
            raise _Failed(f"--root {args.root}: {resolved}")
        found = await browse_variables(
            client,
            resolved,
            depth=args.depth,
            namespace_uris=args.namespace_uris,
            progress=progress,
        )
    except (OSError, TimeoutError, ConnectionError) as exc:
        raise _Failed(f"browsing {conn.endpoint}: {type(exc).__name__}: {exc}") from None
    finally:
        await client.close()
    extra = {}
    if conn.security_policy.value != "None":
        extra["security_policy"] = conn.security_policy.value
        extra["security_mode"] = conn.security_mode.value
    if conn.username:
        extra["username"] = conn.username
    print(f"found {len(found)} variable(s) under {args.root}", file=sys.stderr)
    return to_yaml(
        found, endpoint=conn.endpoint, root=args.root, device=args.device_name, extra=extra
    )
