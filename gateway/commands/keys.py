"""`edgegw keys`: the device key, its rotation chain, and the TLS certificate request."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from . import EXIT_FAILED, Subparsers, add_command, fail, load_or_exit

DEFAULT_STATE_DIR = "/var/lib/edgegw"


def _state_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--state-dir",
        metavar="DIR",
        help=f"the gateway's state directory (default {DEFAULT_STATE_DIR})",
    )
    g.add_argument(
        "-c",
        "--config",
        metavar="CONFIG",
        help="take gateway.state_dir (and gateway.id) from this config file",
    )


def register(sub: Subparsers) -> None:
    s = add_command(
        sub,
        "keys",
        "manage the device signing key, its rotation chain and the TLS key",
        "edgegw keys show -c /etc/edgegw/config.yaml",
    )
    cmds = s.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    p = add_command(
        cmds,
        "init",
        "create the device key if there is none, and print its kid",
        "edgegw keys init --state-dir /var/lib/edgegw",
    )
    _state_options(p)
    p.set_defaults(func=init_main)

    p = add_command(
        cmds,
        "show",
        "print the current key, the root (enrolled) key, the rotation chain and TLS files",
        "edgegw keys show -c /etc/edgegw/config.yaml",
    )
    _state_options(p)
    p.set_defaults(func=show_main)

    p = add_command(
        cmds,
        "rotate",
        "replace the device key with a new one certified by it (stop the daemon first)",
        "systemctl stop edgegw && edgegw keys rotate -c /etc/edgegw/config.yaml",
    )
    p.epilog = (
        f"{p.epilog}\n\nThe old public key is kept and a key certificate (signed by the old "
        "key) is written\nto keys/chain/; the audit log records key_rotated with it, so a "
        "verifier that\nholds only the enrolled key can follow the rotation. The old private "
        "key is deleted."
    )
    _state_options(p)
    p.set_defaults(func=rotate_main)

    p = add_command(
        cmds,
        "export-public",
        "print a public key (PEM) to register with the platform",
        "edgegw keys export-public --root -o gw1.pub.pem",
    )
    _state_options(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--root", action="store_true", help="the root (enrolled) key")
    which.add_argument("--all", action="store_true", help="every public key the device had")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=export_main)

    p = add_command(
        cmds,
        "csr",
        "make a certificate request (ECDSA P-256, CN = gateway id) for broker mutual TLS",
        "edgegw keys csr -c /etc/edgegw/config.yaml -o gw1.csr.pem",
    )
    _state_options(p)
    p.add_argument("--id", metavar="GATEWAY_ID", help="the CN (default: gateway.id of -c)")
    p.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name or IP address for the subject alternative names (repeatable)",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=csr_main)

    p = add_command(
        cmds,
        "command-key",
        "make a platform command key (Ed25519): the private key signs `edgegw command`, the "
        "public key goes into the gateways' commands.keys",
        "edgegw keys command-key -o /etc/edgegw-platform/ops.ed25519.pem --name ops",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="the private key file to create (mode 0600; never overwritten); the public key "
        "is written beside it as <name>.pub.pem",
    )
    p.add_argument("--name", help="the key's name in gateway configs (default: from FILE)")
    p.set_defaults(func=command_key_main)


def _state(args: argparse.Namespace) -> tuple[Path, str | None]:
    """The state directory, and the gateway id when a config was given."""
    if args.config:
        cfg = load_or_exit(args.config)
        return Path(cfg.gateway.state_dir), cfg.gateway.id
    return Path(args.state_dir or DEFAULT_STATE_DIR), None


def _write(text: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    try:
        Path(output).write_text(text)
    except OSError as exc:
        raise fail(f"{output}: cannot write ({exc.strerror})", EXIT_FAILED) from None


def init_main(args: argparse.Namespace) -> int:
    from security import KeyFileError
    from security.audit import AUDIT_FILE, AuditLog, AuditLogError, last_boot
    from security.keyring import IdentityRefused, open_identity

    state, _ = _state(args)
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o750)
        ident = open_identity(state)  # never a new key where an identity exists
    except IdentityRefused as exc:
        raise fail(str(exc)) from None
    except PermissionError:
        raise  # said with the path, its owner and the fix (gateway/cli.py)
    except (KeyFileError, OSError) as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    key = ident.key
    if ident.created:
        audit = state / AUDIT_FILE
        try:
            with AuditLog(audit, key, boot=last_boot(audit), trusted_keys=ident.keyring) as log:
                log.record("key_created", kid=key.kid.hex())
        except AuditLogError as exc:
            print(f"edgegw: warning: key_created not audited: {exc}", file=sys.stderr)
    print(f"{'created' if ident.created else 'exists'}: device key {key.kid.hex()}")
    print(f"public key: {state / key.PUBLIC_KEY_FILE} (register it with the platform)")
    return 0


def show_main(args: argparse.Namespace) -> int:
    from security.audit import AUDIT_FILE
    from security.csr import CSR_FILE, TLS_KEY_FILE
    from security.keyring import describe
    from security.segments import log_dir_files

    state, _ = _state(args)
    k = describe(state)
    print(f"state directory: {state}")
    print(f"device key:      {k.current.kid.hex() if k.current else '(none: run keys init)'}")
    print(f"root key:        {k.root_kid.hex() if k.root_kid else '-'}")
    if k.chain:
        print("rotations:")
        for c in k.chain:
            print(f"  {c.n:>4}  {c.kid.hex()}  certified by {c.signer_kid.hex()}")
    else:
        print("rotations:       none")
    print(f"public keys:     {len(k.public_kids)} in keys/public")
    tls = state / TLS_KEY_FILE
    print(f"TLS client key:  {tls if tls.exists() else '(none: run keys csr)'}")
    csr = state / CSR_FILE
    if csr.exists():
        print(f"TLS request:     {csr}")
    segs = log_dir_files(state / AUDIT_FILE)
    if len(segs) > 1 or (segs and segs[0][0] > 0):
        live = f"{len(segs)} segment files here, the live one {segs[-1][1].name}"
        print(f"audit log:       {state / AUDIT_FILE} ({live})")
    else:
        print(f"audit log:       {segs[0][1] if segs else '(none yet)'}")
    if k.problem:
        print(f"PROBLEM: {k.problem}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def rotate_main(args: argparse.Namespace) -> int:
    from security import DeviceKey, KeyFileError
    from security.audit import AUDIT_FILE, AuditLog, AuditLogBusy, AuditLogError, last_boot
    from security.keyring import KeyChainError, load_keyring, rotate

    state, _ = _state(args)
    with contextlib.suppress(FileNotFoundError):  # said by load; a PermissionError is
        (state / DeviceKey.PRIVATE_KEY_FILE).open("rb").close()  # said with owner and fix
    try:
        old = DeviceKey.load(state / DeviceKey.PRIVATE_KEY_FILE)
    except KeyFileError as exc:
        raise fail(f"{exc} (run `edgegw keys init` first)", EXIT_FAILED) from None
    try:
        keyring = load_keyring(state)  # checks the log's checkpoints at open
    except (KeyChainError, KeyFileError) as exc:
        raise fail(f"rotation refused: {exc}", EXIT_FAILED) from None
    audit = state / AUDIT_FILE
    try:
        # Opening the log first also takes its lock: a running daemon holds it.
        log = AuditLog(audit, old, boot=last_boot(audit), trusted_keys=keyring)
    except AuditLogBusy:
        raise fail(
            f"{audit} is held by a running edgegw: stop it first (it would keep signing with "
            "the old key until restarted)",
            EXIT_FAILED,
        ) from None
    except AuditLogError as exc:
        raise fail(f"cannot audit the rotation: {exc}", EXIT_FAILED) from None
    try:
        with log:
            rot = rotate(state, audit=log)
    except PermissionError:
        raise  # said with the path, its owner and the fix (gateway/cli.py)
    except (KeyChainError, KeyFileError, OSError) as exc:
        raise fail(f"rotation failed: {exc}", EXIT_FAILED) from None
    print(f"rotated: {rot.old_kid.hex()} -> {rot.new_kid.hex()} (rotation {rot.n})")
    print(f"certificate: {rot.certificate_file}")
    return 0


def export_main(args: argparse.Namespace) -> int:
    from security import DeviceKey, KeyFileError
    from security.keyring import PUBLIC_DIR, ROOT_FILE

    state, _ = _state(args)
    try:
        if args.all:
            files = sorted((state / PUBLIC_DIR).glob("*.pub.pem"))
            if not files:
                files = [state / DeviceKey.PUBLIC_KEY_FILE]
            text = "".join(f.read_text() for f in files)
        elif args.root:
            root = state / ROOT_FILE
            text = (root if root.exists() else state / DeviceKey.PUBLIC_KEY_FILE).read_text()
        else:
            text = (state / DeviceKey.PUBLIC_KEY_FILE).read_text()
    except PermissionError:
        raise  # said with the path, its owner and the fix (gateway/cli.py)
    except (OSError, KeyFileError) as exc:
        raise fail(f"{exc} (run `edgegw keys init` first)", EXIT_FAILED) from None
    _write(text, args.output)
    return 0


def csr_main(args: argparse.Namespace) -> int:
    from security import KeyFileError
    from security.csr import make_csr

    state, cfg_id = _state(args)
    gw_id = args.id or cfg_id
    if not gw_id:
        raise fail("keys csr: give --id GATEWAY_ID, or -c CONFIG to take gateway.id from it")
    try:
        pem = make_csr(state, gw_id, dns_names=tuple(args.san))
    except ValueError as exc:
        raise fail(str(exc)) from None
    except PermissionError:
        raise  # said with the path, its owner and the fix (gateway/cli.py)
    except (KeyFileError, OSError) as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    _write(pem.decode(), args.output)
    return 0


def command_key_main(args: argparse.Namespace) -> int:
    """Make a command key on the platform side; print the config lines that enrol it."""
    import os
    import re

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from security import kid_for

    out = Path(args.output)
    stem = out.name.split(".", 1)[0] or "platform"
    name = args.name or stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise fail(f"--name {name!r}: letters, digits, '_', '.', '-' (at most 64)")
    pub_path = out.with_name(f"{stem}.pub.pem")
    if pub_path == out:
        raise fail(f"{out}: name the private key FILE e.g. {stem}.ed25519.pem")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise fail(f"{out} exists; a command key is never overwritten", EXIT_FAILED) from None
    except OSError as exc:
        raise fail(f"{out}: cannot create ({exc.strerror})", EXIT_FAILED) from None
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(pem)
    try:
        pub_path.write_bytes(pub)
    except OSError as exc:
        raise fail(f"{pub_path}: cannot write ({exc.strerror})", EXIT_FAILED) from None
    print(f"private key: {out} (mode 0600: it signs commands; keep it on the platform)")
    print(f"public key:  {pub_path} (kid {kid_for(key.public_key()).hex()})")
    print("enrol it on a gateway: copy the public key there and add to its config:")
    print("  commands:")
    print("    keys:")
    print(f"      - name: {name}")
    print(f"        public_key: {pub_path.name}")
    print("        operations: [write]            # and/or config (an administrator's key)")
    print("        tags: ['<device>/<tag>']       # what it may write; each needs a write block")
    return 0
