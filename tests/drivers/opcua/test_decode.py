"""DataValue -> reading, without a server: quality from StatusCode, the timestamp
fallbacks, and the values that cannot be carried."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from drivers.opcua.decode import Decoder, datetime_ns, status_name

T_SOURCE = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
T_SERVER = datetime(2024, 1, 2, 3, 4, 6, tzinfo=UTC)
NOW = 1_900_000_000_000_000_000


def decode(*values: ua.DataValue, **kw: Any) -> list[tuple[Any, ...]]:
    n = len(values)
    decoder = Decoder(
        [f"d/t{i}" for i in range(n)],
        [f"ns=2;i={i}" for i in range(n)],
        kw.get("expected", [None] * n),
        kw.get("index", [None] * n),
    )
    out: list[tuple[Any, ...]] = []
    bad = decoder.decode(values, range(n), out, NOW)
    assert bad == sum(1 for r in out if r[3] in (1, 2, 3))
    return out


def dv(value: Any, vt: ua.VariantType, status: int = 0, **ts: Any) -> ua.DataValue:
    return ua.DataValue(ua.Variant(value, vt), ua.StatusCode(status), **ts)


def test_datetime_ns_is_exact() -> None:
    assert datetime_ns(T_SOURCE) == 1_704_164_645_678_901_000
    assert datetime_ns(datetime(1970, 1, 1, tzinfo=UTC)) == 0


def test_timestamp_is_source_then_server_then_now() -> None:
    d = ua.VariantType.Double
    out = decode(
        dv(1.0, d, SourceTimestamp=T_SOURCE, ServerTimestamp=T_SERVER),
        dv(2.0, d, ServerTimestamp=T_SERVER),
        dv(3.0, d),
    )
    assert [r[1] for r in out] == [datetime_ns(T_SOURCE), datetime_ns(T_SERVER), NOW]


def test_quality_follows_status_severity() -> None:
    d = ua.VariantType.Double
    good_clamped = ua.StatusCodes.GoodClamped
    out = decode(
        dv(1.5, d),
        dv(1.5, d, good_clamped),
        dv(2.5, d, ua.StatusCodes.UncertainLastUsableValue),
        ua.DataValue(ua.Variant(), ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)),
        ua.DataValue(ua.Variant(), ua.StatusCode(ua.StatusCodes.BadNotReadable)),
    )
    assert out[0] == ("d/t0", NOW, 1.5, 0)
    assert out[1] == ("d/t1", NOW, 1.5, 0)
    assert out[2] == ("d/t2", NOW, 2.5, 4, "UncertainLastUsableValue")
    assert out[3] == ("d/t3", NOW, None, 2, "BadNodeIdUnknown (node ns=2;i=3)")
    assert out[4] == ("d/t4", NOW, None, 2, "BadNotReadable (node ns=2;i=4)")


def test_values_that_cannot_be_carried_are_bad_config_with_why() -> None:
    d = ua.VariantType.Double
    out = decode(
        dv([1.0, 2.0, 3.0], d),
        dv(1.0, ua.VariantType.Float),
        dv(ua.ExtensionObject(), ua.VariantType.ExtensionObject),
        ua.DataValue(ua.Variant()),  # Good but no value
        expected=[None, 11, None, None],
    )
    assert out[0][2:4] == (None, 3) and "an array of 3 Double" in out[0][4]
    assert "add 'index: <n>'" in out[0][4]
    assert out[1][3:] == (
        3,
        "value is Float but the tag's type is Double; correct the type (or the node)",
    )
    assert out[2][3] == 3 and "ExtensionObject is not supported" in out[2][4]
    assert out[3][3:] == (2, "no value (the server sent a Null variant)")


def test_index_picks_an_element_whether_or_not_the_server_honours_the_range() -> None:
    d = ua.VariantType.Double
    out = decode(
        dv([10.0, 11.0, 12.0, 13.0], d),  # server ignored IndexRange "2"
        dv([12.0], d),  # server honoured it
        dv([10.0, 11.0], d),  # index 5 of 2 elements
        index=[2, 2, 5],
    )
    assert [r[2] for r in out[:2]] == [12.0, 12.0]
    assert out[2][3:] == (3, "index 5 is out of range: the array has 2 element(s)")


def test_status_names() -> None:
    assert status_name(ua.StatusCodes.BadNodeIdUnknown) == "BadNodeIdUnknown"
    assert status_name(ua.StatusCodes.BadNodeIdUnknown | 0x0400) == "BadNodeIdUnknown"
    assert status_name(0x80FF0000) == "Bad (0x80FF0000)"
