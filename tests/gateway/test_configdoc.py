"""docs/config.md is the config models written out: it lists every key the models accept,
each with a type, a default and a meaning, and it is regenerated whenever they change."""

from __future__ import annotations

import re

from gateway.config import fields_at
from gateway.configdoc import render
from tests.conftest import REPO

DOC = REPO / "docs" / "config.md"


def test_docs_config_md_matches_the_models() -> None:
    assert DOC.read_text() == render(), (
        "docs/config.md differs from the config models: run `make config-doc` and commit it"
    )


def test_every_key_has_a_type_a_default_and_a_meaning() -> None:
    rows = [ln for ln in render().splitlines() if ln.startswith("| `")]
    assert len(rows) > 100
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert len(cells) == 4 and all(cells), f"empty cell in {row!r}"


def test_the_keys_once_undocumented_are_there() -> None:
    text = render()
    for key in ("keepalive_s", "client_id", "ca_file", "devices_dir", "when_full"):
        assert re.search(rf"^\| `{key}` \|", text, re.M), key


def test_every_section_lists_exactly_the_accepted_keys() -> None:
    """Each section's table holds the keys that the did-you-mean lookup (the models)
    accepts at that place: nothing missing, nothing invented."""
    text = render()

    def keys(heading: str) -> list[str]:
        part = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
        return re.findall(r"^\| `([^`]+)` \|", part, re.M)

    assert keys("uplink") == fields_at(("uplink",))
    assert keys("uplink.tls") == fields_at(("uplink", "tls"))
    assert keys("devices[] (modbus_tcp)") == fields_at(("devices", 0, "modbus_tcp"))
    assert keys("devices[].tags[] (s7)") == fields_at(("devices", 0, "s7", "tags", 0))
    assert keys("inference.models[]") == fields_at(("inference", "models", 0))
