"""Node notation: every accepted form parses to what it means and prints back; every
malformed one is refused with a message quoting it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.opcua.nodeid import (
    BrowsePath,
    ExplicitNode,
    NodeSyntaxError,
    PathElement,
    format_node,
    parse_node,
)

GUID = "72962b91-fa75-4ae6-8d28-b404dc7daf63"


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("ns=2;i=1001", ExplicitNode("i", 1001, 2), "ns=2;i=1001"),
        ("ns=2;s=Boiler.Temp", ExplicitNode("s", "Boiler.Temp", 2), "ns=2;s=Boiler.Temp"),
        (f"ns=2;g={GUID.upper()}", ExplicitNode("g", GUID, 2), f"ns=2;g={GUID}"),
        ("ns=2;b=AQID", ExplicitNode("b", "AQID", 2), "ns=2;b=AQID"),
        ("i=2258", ExplicitNode("i", 2258, 0), "i=2258"),
        ("ns=0;i=2258", ExplicitNode("i", 2258, 0), "i=2258"),
        ("nsu=urn:plant;s=A", ExplicitNode("s", "A", 0, "urn:plant"), "nsu=urn:plant;s=A"),
        ("nsu=http://x/y;i=5", ExplicitNode("i", 5, 0, "http://x/y"), "nsu=http://x/y;i=5"),
        # the string identifier is everything after s=, verbatim
        ("ns=3;s=a;b=c d", ExplicitNode("s", "a;b=c d", 3), "ns=3;s=a;b=c d"),
        (" ns=2;i=7 ", ExplicitNode("i", 7, 2), "ns=2;i=7"),
    ],
)
def test_explicit_forms(text: str, expected: ExplicitNode, canonical: str) -> None:
    node = parse_node(text)
    assert node == expected
    assert str(node) == canonical
    assert parse_node(str(node)) == node


def test_browse_path_with_namespaces_and_escapes() -> None:
    path = parse_node("/Objects/2:Plant/3:Boil&/er/2:Temp&:1/Name:with:colons")
    assert path == BrowsePath(
        (
            PathElement(0, "Objects"),
            PathElement(2, "Plant"),
            PathElement(3, "Boil/er"),
            PathElement(2, "Temp:1"),
            PathElement(0, "Name:with:colons"),
        )
    )
    assert parse_node(str(path)) == path


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "node is empty"),
        ("ns=2;x=5", "unknown identifier type 'x'"),
        ("ns=2;1001", "no '<type>=' identifier"),
        ("ns=a;i=1", "namespace index 'a' is not a number 0..65535"),
        ("ns=70000;i=1", "namespace index '70000'"),
        ("i=-1", "numeric identifier '-1' is not a number 0..4294967295"),
        ("i=4294967296", "0..4294967295"),
        ("ns=2;g=not-a-guid", "'not-a-guid' is not a GUID"),
        ("ns=2;b=!!", "'!!' is not base64"),
        ("ns=2;s=", "the string identifier after s= is empty"),
        ("nsu=;s=x", "nsu= needs a namespace URI"),
        ("/Objects//Temp", "element 2 is empty"),
        ("/Objects/", "element 2 is empty"),
        ("/70000:X", "namespace index 70000"),
    ],
)
def test_malformed_nodes_are_refused_precisely(text: str, fragment: str) -> None:
    with pytest.raises(NodeSyntaxError) as info:
        parse_node(text)
    message = str(info.value)
    assert fragment in message
    if text:
        assert repr(text) in message or repr(text.split("/")[0]) in message


def test_unknown_identifier_type_lists_the_accepted_forms() -> None:
    with pytest.raises(NodeSyntaxError) as info:
        parse_node("ns=2;x=5")
    assert "i= (numeric), s= (string), g= (GUID), b= (base64 ByteString)" in str(info.value)
    assert "/Objects/2:Plant/2:Temperature" in str(info.value)


_IDS = st.one_of(
    st.tuples(st.just("i"), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("s"), st.text(min_size=1).filter(lambda s: s.strip() == s and s)),
    st.tuples(st.just("g"), st.uuids().map(str)),
)


@given(_IDS, st.integers(0, 65535), st.one_of(st.none(), st.just("urn:plant:1")))
def test_format_then_parse_round_trips(ident: tuple[str, object], ns: int, uri: str | None) -> None:
    kind, value = ident
    text = format_node(kind, value, ns if uri is None else 0, uri)  # type: ignore[arg-type]
    node = parse_node(text)
    assert isinstance(node, ExplicitNode)
    assert (node.id_type, node.identifier, node.uri) == (kind, value, uri)
    assert node.namespace == (ns if uri is None else 0)
