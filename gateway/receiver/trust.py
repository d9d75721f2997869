"""The enrolment registry: which root public key speaks for which gateway id.

A gateway is enrolled with the key ``edgegw keys export-public --root`` prints. Keys it
rotates to later are trusted for that gateway only, and only through key certificates that
chain back to its root (learned by the receiver and kept in its store). Two sources:

* a directory of ``<gateway id>.pub.pem`` files (the id is the file name);
* a YAML file mapping gateway ids to PEM files (relative to the YAML file) or inline PEM::

      gw-press-1: enrol/gw-press-1.pub.pem
      gw-press-2: |
        -----BEGIN PUBLIC KEY-----
        ...
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from security import KeyFileError, kid_for, load_public_key

from .schema import GATEWAY_ID

PEM_SUFFIX = ".pub.pem"


class EnrolmentError(ValueError):
    """An enrolment source that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True, slots=True)
class Enrolment:
    gw: str
    root: Ed25519PublicKey
    source: str  # where it came from, for messages

    @property
    def root_kid(self) -> bytes:
        return kid_for(self.root)


class Enrolments(Mapping[str, Enrolment]):
    """gateway id -> its enrolled root key. No key is enrolled for two gateways."""

    def __init__(self, items: list[Enrolment] | None = None) -> None:
        self._by_gw: dict[str, Enrolment] = {}
        self._by_kid: dict[bytes, Enrolment] = {}
        for e in items or []:
            self.add(e)

    def add(self, e: Enrolment) -> None:
        if not GATEWAY_ID.fullmatch(e.gw):
            raise EnrolmentError(
                f"{e.source}: {e.gw!r} is not a gateway id (letters, digits, '_', '.', '-'; "
                "at most 64 characters, starting with a letter or digit)"
            )
        if e.gw in self._by_gw:
            raise EnrolmentError(
                f"{e.source}: gateway {e.gw} is enrolled twice (also in {self._by_gw[e.gw].source})"
            )
        other = self._by_kid.get(e.root_kid)
        if other is not None:
            raise EnrolmentError(
                f"{e.source}: the key of {e.gw} is also enrolled for {other.gw} "
                f"({other.source}); every gateway has its own key"
            )
        self._by_gw[e.gw] = e
        self._by_kid[e.root_kid] = e

    def __getitem__(self, gw: str) -> Enrolment:
        return self._by_gw[gw]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_gw)

    def __len__(self) -> int:
        return len(self._by_gw)

    def owner_of_root(self, kid: bytes) -> Enrolment | None:
        return self._by_kid.get(kid)

    # -- loading ------------------------------------------------------------------------

    @classmethod
    def of(cls, keys: Mapping[str, Ed25519PublicKey]) -> Enrolments:
        """From a mapping gateway id -> root public key (for code and tests)."""
        return cls([Enrolment(gw, k, f"enrolment of {gw}") for gw, k in keys.items()])

    def load(self, path: str | Path) -> None:
        """Add the enrolments of a directory or a YAML file."""
        p = Path(path)
        if p.is_dir():
            self._load_dir(p)
        elif p.is_file():
            self._load_yaml(p)
        else:
            raise EnrolmentError(
                f"{p}: no such enrolment directory or file; make one with "
                f"`edgegw keys export-public --root -o {p}/<gateway id>{PEM_SUFFIX}`"
            )

    def add_pubkey(self, spec: str) -> None:
        """``GATEWAY_ID=FILE`` (the ``--pubkey`` shorthand for one gateway)."""
        gw, sep, file = spec.partition("=")
        if not sep or not gw or not file:
            raise EnrolmentError(
                f"--pubkey {spec}: write GATEWAY_ID=FILE (the key binds to that gateway id), "
                "e.g. --pubkey gw-01=gw-01.pub.pem"
            )
        self.add(Enrolment(gw, _load(Path(file)), file))

    def _load_dir(self, d: Path) -> None:
        found = sorted(d.glob("*" + PEM_SUFFIX))
        if not found:
            raise EnrolmentError(
                f"{d}: holds no <gateway id>{PEM_SUFFIX} file; add one per gateway with "
                f"`edgegw keys export-public --root -o {d}/<gateway id>{PEM_SUFFIX}`"
            )
        for f in found:
            self.add(Enrolment(f.name[: -len(PEM_SUFFIX)], _load(f), str(f)))

    def _load_yaml(self, f: Path) -> None:
        import yaml

        try:
            doc = yaml.safe_load(f.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise EnrolmentError(f"{f}: cannot read the enrolment file: {exc}") from None
        if not isinstance(doc, dict) or not doc:
            raise EnrolmentError(
                f"{f}: must map gateway ids to PEM files or PEM text, e.g. "
                f"'gw-01: gw-01{PEM_SUFFIX}'"
            )
        for gw, value in doc.items():
            where = f"{f}: {gw}"
            if not isinstance(value, str):
                raise EnrolmentError(f"{where}: must be a PEM file name or PEM text")
            if "-----BEGIN" in value:
                key = _from_pem(value.encode(), where)
            else:
                key = _load((f.parent / value) if not Path(value).is_absolute() else Path(value))
            self.add(Enrolment(str(gw), key, where))


def _load(path: Path) -> Ed25519PublicKey:
    try:
        return load_public_key(path)
    except KeyFileError as exc:
        raise EnrolmentError(str(exc)) from None


def _from_pem(data: bytes, where: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise EnrolmentError(f"{where}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise EnrolmentError(f"{where}: not an Ed25519 public key")
    return key
