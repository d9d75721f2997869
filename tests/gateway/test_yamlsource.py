"""The config's YAML loading is fast and small on the success path (values from parser
events, positions only when an error needs them) and gives exactly what the marked build
gives: the same values, the same positions, the same errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.yamlsource import SourceMap, YamlError, _from_events, _load_marked, load_yaml

DOCS = [
    "a: 1\nb: [x, 2.5, null, true, 0x1F, 1_000, .inf]\nc: {d: '1', e: \"two\"}\n",
    "when: 2024-01-02\nat: 2024-01-02T03:04:05Z\nbin: !!binary aGk=\nn: !!str 12\n",
    "text: |\n  line one\n  line two\nfolded: >\n  a\n  b\n",
    "base: &b {type: float32, scale: 2}\ntags:\n  - {<<: *b, name: t1}\n  - *b\n",
    "- 1\n- - 2\n  - {3: three}\n",
    "top: {}\nempty: []\nnull_value:\n",
]


@pytest.mark.parametrize("doc", DOCS)
def test_fast_load_equals_the_marked_build(tmp_path: Path, doc: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(doc)
    data, smap = load_yaml(f)
    marked = SourceMap(str(f))
    assert data == _load_marked(doc, marked) == yaml.safe_load(doc)
    # positions are found when first asked for, and are the marked build's
    assert smap.marks == marked.marks and smap.key_marks == marked.key_marks


def test_plain_documents_never_build_a_node_tree() -> None:
    """Anchors, aliases and merge keys go to the node-based loader; the rest is built from
    events (what a generated 10,000-tag config is)."""
    from gateway.yamlsource import _FastLoader, _Refused

    for doc in (DOCS[0], DOCS[2], DOCS[4]):
        assert _from_events(_FastLoader(doc)) == yaml.safe_load(doc)
    with pytest.raises(_Refused):
        _from_events(_FastLoader(DOCS[3]))


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ("a: 1\nb: 2\na: 3\n", ":3:1: duplicate key 'a' (first defined at line 1)"),
        ("a: 1\n? [x]\n: 2\n", ":2:3: mapping keys must be text"),
        ("a: [1, 2\n", ":2:1: inside the '[' opened at line 1, column 4"),
        ("a: !custom 1\n", ":1:4: YAML syntax error: could not determine a constructor"),
        ("", "the file is empty"),
    ],
)
def test_errors_name_the_place(tmp_path: Path, doc: str, error: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(doc)
    with pytest.raises(YamlError) as exc:
        load_yaml(f)
    assert str(exc.value).startswith(str(f)) and error in str(exc.value)
