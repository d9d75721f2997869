"""`edgegw audit`: verify an audit log offline with public keys only, or show it."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import EXIT_FAILED, Subparsers, add_command, fail

VERIFY_EXITS = """\
exit status:
  0  OK: every record is sealed by a checkpoint signed with a trusted key
  1  TAMPERED: a record was edited, deleted, reordered or inserted, or a checkpoint is
     bad or missing; the first bad record is named
  2  bad input: usage error, unreadable log or key file
  3  UNSEALED TAIL: the records after the last checkpoint are not sealed (a running or
     crashed daemon, or a log cut short); what is sealed verified
  4  UNKNOWN KEY: a checkpoint is signed by a key that is neither given with --pubkey nor
     certified by one (via a key_rotated record or --chain)
A log cut exactly at a checkpoint verifies as OK (with a warning unless the cut is at a
clean close): only checkpoints witnessed outside the device can show that.

A log in segments: give the log's path (audit.cborseq: its segments audit.NNNNNN.cborseq
beside it are included), a directory, or segment files; --archive adds the archived
segments. A run of segments from the middle is verified from the checkpoint it starts
with. A segment missing between two given ones, cut short, grown, swapped or of another
log is TAMPERED, and the file (and byte) is named.
"""


def register(sub: Subparsers) -> None:
    s = add_command(
        sub,
        "audit",
        "verify or show a gateway's audit log",
        "edgegw audit verify /var/lib/edgegw/audit.cborseq --pubkey gw1.pub.pem",
    )
    cmds = s.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    v = add_command(
        cmds,
        "verify",
        "check an audit log offline: chain, checkpoints, signatures",
        "edgegw audit verify audit.cborseq --pubkey root.pub.pem --chain keys/chain",
    )
    v.epilog = f"{v.epilog}\n\n{VERIFY_EXITS}"
    v.add_argument(
        "file",
        nargs="+",
        help="the audit log (audit.cborseq in the state directory, with its segments), a "
        "directory of segments, or segment files",
    )
    _archive_option(v)
    v.add_argument(
        "--pubkey",
        action="append",
        required=True,
        metavar="KEY",
        help="a trusted public key (PEM), normally the one the gateway was enrolled with; "
        "repeat for several",
    )
    v.add_argument(
        "--chain",
        action="append",
        default=[],
        metavar="PATH",
        help="key certificates (a keys/chain directory or .cose files) that vouch for "
        "rotated keys, in addition to those in the log",
    )
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=verify_main)

    sh = add_command(
        cmds,
        "show",
        "print an audit log's records (does not verify: run `audit verify` for that)",
        "edgegw audit show audit.cborseq --since 2026-05-01T00:00Z --type config_change",
    )
    sh.add_argument(
        "file", nargs="+", help="the audit log (with its segments), a directory, or segment files"
    )
    _archive_option(sh)
    sh.add_argument("--since", metavar="ISO", help="records at or after this time (UTC if no zone)")
    sh.add_argument("--until", metavar="ISO", help="records before this time (UTC if no zone)")
    sh.add_argument(
        "--type",
        action="append",
        metavar="T",
        help="only this event type (repeatable); checkpoints are then left out",
    )
    sh.add_argument("--json", action="store_true", help="one JSON object per line")
    sh.set_defaults(func=show_main)

    ex = add_command(
        cmds,
        "export",
        "write a gateway's audit log as the platform received it (from a receiver's --db)",
        "edgegw audit export --db received.db --gateway gw1 -o gw1-upstream.cborseq",
    )
    ex.epilog = (
        f"{ex.epilog}\n\nThe entries the gateway published, by byte offset, up to the first "
        "one missing: the\nsame bytes as the gateway's audit.cborseq, so `edgegw audit verify` "
        "on the copy gives\nthe verdict it gives on the gateway's file."
    )
    ex.add_argument("--db", required=True, help="the receiver's store (edgegw receive --db)")
    ex.add_argument("--gateway", required=True, metavar="ID", help="the gateway id")
    ex.add_argument("--log", metavar="HEX", help="a log id (default: the one witnessed now)")
    ex.add_argument("-o", "--output", metavar="FILE", required=True, help="where to write it")
    ex.add_argument(
        "--split",
        action="store_true",
        help="write one file per segment, as the gateway keeps them (FILE, then "
        "FILE's name with .000001, .000002, ...): their SHA-256 match the gateway's "
        "segment_archived records",
    )
    ex.set_defaults(func=export_main)

    al = add_command(
        cmds,
        "alerts",
        "list the security alerts a receiver stored (conflicts, replays, audit witness)",
        "edgegw audit alerts --db received.db --gateway gw1",
    )
    al.add_argument("--db", required=True, help="the receiver's store (edgegw receive --db)")
    al.add_argument("--gateway", metavar="ID", help="only this gateway")
    al.add_argument("--json", action="store_true", help="one JSON object per line")
    al.set_defaults(func=alerts_main)


# -- verify ---------------------------------------------------------------------------------


def _archive_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--archive",
        action="append",
        default=[],
        metavar="DIR",
        help="also the segments archived here (audit.archive_dir, or its folder for the "
        "log); repeatable",
    )


def _log_files(names: list[str], archives: list[str]) -> list[Path]:
    """The files a log argument stands for: a segment file itself, the log's path with
    its segments beside it, every *.cborseq of a directory; then the archived segments of
    the same log(s) in each --archive directory."""
    from security.checkpoint import FormatError
    from security.segments import head_of, log_dir_files, segment_number
    from security.segverify import SegmentInfo

    out: list[Path] = []
    for name in names:
        p = Path(name)
        if p.is_dir():
            found = sorted(p.glob("*.cborseq"))
        elif segment_number(p, p.name) == 0 and not SegmentInfo.numbered(p):
            found = [f for _, f in log_dir_files(p)]
        else:
            found = [p] if p.exists() else []
        if not found:
            raise fail(f"{name}: no such audit log file, or no segments of it")
        out += found
    ids: set[str] = set()
    for f in out:
        try:
            ids.add(head_of(f).log_id.hex())
        except (OSError, FormatError):
            continue
    for name in archives:
        d = Path(name)
        if not d.is_dir():
            raise fail(f"--archive {name}: not a directory")
        out += sorted(d.glob("*.cborseq"))
        for sub in sorted(d.iterdir()):
            if sub.is_dir() and (sub.name in ids or not ids):
                out += sorted(sub.glob("*.cborseq"))
    seen: set[Path] = set()
    unique = []
    for f in out:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(f)
    return unique


def _certificates(paths: list[str]) -> list[bytes]:
    out: list[bytes] = []
    for name in paths:
        p = Path(name)
        files = sorted(p.glob("*.cose")) if p.is_dir() else [p]
        try:
            out += [f.read_bytes() for f in files]
        except OSError as exc:
            raise fail(f"--chain {name}: {exc.strerror}") from None
    return out


def _iso(ns: int | None) -> str:
    if ns is None:
        return "-"
    t = dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def verify_main(args: argparse.Namespace) -> int:
    from security import KeyFileError, kid_for, load_public_key
    from security.audit import Outcome
    from security.keyring import KeyChainError
    from security.segverify import verify_files

    keys = {}
    for path in args.pubkey:
        try:
            pub = load_public_key(path)
        except KeyFileError as exc:
            raise fail(str(exc)) from None
        keys[kid_for(pub)] = pub
    files = _log_files(args.file, args.archive)
    try:
        rep, infos = verify_files(files, keys, certificates=_certificates(args.chain))
    except OSError as exc:
        raise fail(f"{exc.filename}: cannot read ({exc.strerror})") from None
    except KeyChainError as exc:
        raise fail(f"--chain: {exc}") from None
    if args.json:
        out = _report_json(rep)
        out["files"] = [
            {"file": str(i.path), "segment": i.seg, "first_seq": i.first_seq, "records": i.records}
            for i in infos
        ]
        print(json.dumps(out, indent=2))
        return rep.exit_code
    name = " ".join(args.file)
    last = rep.first_seq + rep.records - 1
    if rep.outcome is Outcome.OK:
        print(
            f"{name}: OK — {rep.records} records (seq {rep.first_seq}..{last}) sealed by "
            f"{rep.checkpoints} checkpoints, {_iso(rep.first_ts_ns)} .. {_iso(rep.last_ts_ns)}"
        )
    else:
        print(f"{name}: {rep.outcome.value.upper().replace('_', ' ')} — {rep.message}")
        if rep.first_bad is not None and rep.outcome is not Outcome.UNSEALED_TAIL:
            bad = (
                f"seq {rep.first_bad}"
                if rep.last_bad in (None, rep.first_bad)
                else f"seq {rep.first_bad}..{rep.last_bad}"
            )
            kind = f" ({rep.problem.value})" if rep.problem else ""
            print(f"  first bad record: {bad}{kind}")
        if rep.file is not None:
            at = f", byte {rep.file_offset}" if rep.file_offset is not None else ""
            print(f"  in file: {rep.file}{at}")
        verified = (
            f"seq {rep.first_seq}..{rep.sealed - 1}" if rep.sealed > rep.first_seq else "nothing"
        )
        print(f"  verified: {verified} of {rep.records} records")
    if len(infos) > 1 or (infos and infos[0].seg):
        segs = [i.seg for i in infos if i.seg is not None]
        span = f"segments {min(segs)}..{max(segs)}" if segs else "segments"
        print(f"  {span} in {len(infos)} files")
    print(
        f"  log {rep.log_id.hex() or '?'}; signed by {', '.join(k.hex() for k in rep.kids) or '-'}"
    )
    for w in rep.warnings:
        print(f"  warning: {w}")
    return rep.exit_code


def _report_json(rep: Any) -> dict[str, Any]:
    return {
        "outcome": rep.outcome.value,
        "exit_code": rep.exit_code,
        "problem": rep.problem.value if rep.problem else None,
        "first_bad": rep.first_bad,
        "last_bad": rep.last_bad,
        "message": rep.message,
        "records": rep.records,
        "checkpoints": rep.checkpoints,
        "sealed": rep.sealed,
        "log_id": rep.log_id.hex(),
        "origin": rep.origin,
        "kids": [k.hex() for k in rep.kids],
        "first_ts": _iso(rep.first_ts_ns),
        "last_ts": _iso(rep.last_ts_ns),
        "warnings": rep.warnings,
        "first_seq": rep.first_seq,
        "file": rep.file,
        "file_offset": rep.file_offset,
    }


# -- show -----------------------------------------------------------------------------------


def _parse_time(text: str | None, option: str) -> int | None:
    if text is None:
        return None
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"{option} {text!r}: not an ISO 8601 time, e.g. 2026-05-01T12:00:00Z") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1_000_000_000)


def _plain(value: Any) -> Any:
    """Detail values as JSON: bytes as hex."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _short(value: Any) -> str:
    if isinstance(value, bytes):
        h = value.hex()
        return h if len(h) <= 32 else f"{h[:32]}…({len(value)} bytes)"
    if isinstance(value, str):
        return value if value and " " not in value else json.dumps(value)
    return json.dumps(_plain(value))


def show_main(args: argparse.Namespace) -> int:
    from security.audit import AuditEvent
    from security.checkpoint import parse_entries
    from security.segverify import read_files

    since = _parse_time(args.since, "--since")
    until = _parse_time(args.until, "--until")
    types = set(args.type or ())
    unknown = types - {e.value for e in AuditEvent}
    if unknown:
        raise fail(
            f"--type {', '.join(sorted(unknown))}: unknown; one of "
            + ", ".join(e.value for e in AuditEvent)
        )
    try:
        infos = read_files(_log_files(args.file, args.archive))
    except OSError as exc:
        raise fail(f"{exc.filename}: cannot read ({exc.strerror})") from None
    out = sys.stdout
    bad = False
    for info in infos:
        parsed = parse_entries(info.data)
        if len(infos) > 1 and not args.json:
            seg = "?" if info.seg is None else info.seg
            out.write(f"{'':>7} == segment {seg}: {info.path}\n")
        _show_file(args, parsed, since, until, types, out)
        if parsed.torn:
            print(f"edgegw: {info.path}: ends with an incomplete entry", file=sys.stderr)
        bad = bad or bool(parsed.damage)
    return EXIT_FAILED if bad else 0


def _show_file(
    args: argparse.Namespace,
    parsed: Any,
    since: int | None,
    until: int | None,
    types: set[str],
    out: Any,
) -> None:
    from security.checkpoint import FormatError, peek_checkpoint

    damage = {d.records_before: d for d in parsed.damage}
    n = 0
    for e in parsed.entries:
        r = e.record
        if r is None:
            if types:
                continue
            try:
                cp = peek_checkpoint(e.raw)
            except FormatError:
                out.write(f"{'':>7} ?? unreadable checkpoint at byte {e.offset}\n")
                continue
            if (since is not None and cp.ts_ns < since) or (
                until is not None and cp.ts_ns >= until
            ):
                continue
            if args.json:
                cp_obj: dict[str, Any] = {
                    "checkpoint": {
                        "why": cp.why,
                        "size": cp.size,
                        "boot": cp.boot,
                        "ts": _iso(cp.ts_ns),
                        "root": cp.root.hex(),
                        "head": cp.head.hex(),
                        "kid": cp.kid.hex(),
                        "log": cp.log_id.hex(),
                    }
                }
                out.write(json.dumps(cp_obj) + "\n")
            else:
                out.write(
                    f"{'':>7} {_iso(cp.ts_ns)}  boot {cp.boot:<4} -- checkpoint ({cp.why}): "
                    f"{cp.size} records, root {cp.root.hex()[:16]}…, kid {cp.kid.hex()}\n"
                )
            continue
        if n in damage and not args.json:
            out.write(f"{'':>7} !! damaged bytes at {damage[n].offset}: {damage[n].why}\n")
        n += 1
        if types and r.event not in types:
            continue
        if (since is not None and r.ts_ns < since) or (until is not None and r.ts_ns >= until):
            continue
        if args.json:
            obj: dict[str, Any] = {
                "seq": r.seq,
                "boot": r.boot,
                "ts": _iso(r.ts_ns),
                "ts_ns": r.ts_ns,
                "mono_ns": r.mono_ns,
                "event": r.event,
                "detail": _plain(r.detail),
                "hash": r.hash.hex(),
            }
            out.write(json.dumps(obj) + "\n")
        else:
            detail = " ".join(f"{k}={_short(v)}" for k, v in sorted(r.detail.items()))
            out.write(f"{r.seq:>7} {_iso(r.ts_ns)}  boot {r.boot:<4} {r.event:<14} {detail}\n")


# -- from a receiver's store ------------------------------------------------------------------


def _store(path: str) -> Any:
    from ..receiver import StoreError, open_store

    if "://" not in path and not Path(path).is_file():
        raise fail(f"{path}: no such receiver store (the --db of `edgegw receive`)")
    try:
        return open_store(path)
    except StoreError as exc:
        raise fail(str(exc)) from None


def export_main(args: argparse.Namespace) -> int:
    store = _store(args.db)
    try:
        log_id = bytes.fromhex(args.log) if args.log else None
    except ValueError:
        raise fail(f"--log {args.log}: not a hex log id") from None
    try:
        data = store.audit_copy(args.gateway, log_id)
    finally:
        store.close()
    if not data:
        raise fail(f"{args.db}: holds no audit log of gateway {args.gateway}", EXIT_FAILED)
    parts = _split_segments(data) if args.split else [(0, data)]
    for k, part in parts:
        from security.segments import segment_path

        dest = segment_path(Path(args.output), k)
        try:
            dest.write_bytes(part)
        except OSError as exc:
            raise fail(f"{dest}: cannot write ({exc.strerror})", EXIT_FAILED) from None
        what = f"segment {k}, " if args.split else ""
        sha = hashlib.sha256(part).hexdigest()
        print(
            f"{dest}: {what}{len(part)} bytes of gateway {args.gateway}'s audit log, sha256 {sha}"
        )
    return 0


def _split_segments(data: bytes) -> list[tuple[int, bytes]]:
    """The log's bytes cut where each segment starts (its first checkpoint says so)."""
    from security.checkpoint import FormatError, iter_entries, peek_checkpoint

    cuts = [(0, 0)]
    try:
        for off, raw in iter_entries(data):
            if raw[:1] == b"\xd2":
                with contextlib.suppress(FormatError):
                    cp = peek_checkpoint(raw)
                    if cp.seg is not None and cp.at == off:
                        cuts.append((cp.seg, off))
    except FormatError:
        pass  # a damaged copy: cut what could be read; verify says the rest
    ends = [o for _, o in cuts[1:]] + [len(data)]
    return [(k, data[o:e]) for (k, o), e in zip(cuts, ends, strict=True)]


def alerts_main(args: argparse.Namespace) -> int:
    store = _store(args.db)
    try:
        alerts = store.alerts(args.gateway)
    finally:
        store.close()
    for a in alerts:
        if args.json:
            print(json.dumps({**a, "security": bool(a["security"])}))
        else:
            level = "SECURITY" if a["security"] else "notice"
            seq = "-" if a["seq"] is None else a["seq"]
            when = _iso(a["received_ns"])
            print(f"{when}  {level:<8} {a['gw']}  seq {seq}  {a['class']}: {a['detail']}")
    return 0
