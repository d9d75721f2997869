"""What keeps the daemon small and its fixed costs low gives the same results as what it
replaced: the status snapshot's ``plain`` equals ``dataclasses.asdict``; tag names are one
string object per tag across the plan, its decoders and the driver; the collector is
tuned once start-up is done; a good config is never parsed a second time for positions
(that parse is only for an error message); tags share their fields-set and the loader
its repeated strings."""

from __future__ import annotations

import gc
import math
import pickle
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from buffer.model import OutboxStats
from drivers.modbus import compile_plan
from drivers.modbus.config import ModbusTcpDevice
from drivers.modbus.driver import LinkStats, ModbusTcpDriver
from drivers.opcua.config import OpcuaTag
from drivers.s7.config import S7Tag
from gateway.config import load_config_sourced
from gateway.daemon import GC_GEN0_THRESHOLD, freeze_startup_objects
from gateway.forwarder import ForwarderStats
from gateway.pipeline import PipelineStats
from gateway.poller import DeviceState
from gateway.preflight import check
from gateway.status import plain
from gateway.yamlsource import load_yaml
from inference.config import SHIPPED_MODELS
from tests.tlscerts import make_pki


def test_plain_is_asdict_without_sharing_anything_mutable() -> None:
    link = LinkStats(requests=7, exceptions={2: 3, 6: 1}, learned=["holding 10..11 refused"])
    state = DeviceState("plc", up=True, last_error="timeout", driver=link)
    state.latency.observe(0.004)
    stats = (PipelineStats(points_polled=5), ForwarderStats(), OutboxStats(3, 4, 1, 3, 9))
    for obj in (state, *stats):
        assert plain(obj) == asdict(obj)
    snap = plain(state)
    link.exceptions[2] += 1
    link.learned.append("more")
    state.latency.observe(1.0)
    assert snap["driver"]["exceptions"] == {2: 3, 6: 1}  # a copy, not the live counters
    assert snap["driver"]["learned"] == ["holding 10..11 refused"]
    assert snap["latency"]["count"] == 1 and sum(snap["latency"]["counts"]) == 1


def test_a_tag_name_is_one_string_in_plan_decoders_and_driver(tmp_path: Path) -> None:
    dev = ModbusTcpDevice.model_validate(
        {
            "name": "boiler",
            "protocol": "modbus_tcp",
            "host": "127.0.0.1",
            "tags": [{"name": f"t{i}", "address": 2 * i, "type": "float32"} for i in range(200)],
        }
    )
    plan, again = compile_plan(dev), compile_plan(dev)
    driver = ModbusTcpDriver(dev)
    names = [n for r in plan.requests for g in r.decoder.groups for n in g.names]  # type: ignore[union-attr]
    assert sorted(names) == sorted(plan.tag_names)
    by_text = {n: n for n in plan.tag_names}
    assert all(by_text[n] is n for n in names)
    assert all(a is b for a, b in zip(plan.tag_names, again.tag_names, strict=True))
    assert all(a is b for a, b in zip(plan.tag_names, driver._tag_names, strict=True))


def test_start_up_objects_are_frozen_and_young_collections_rarer() -> None:
    before = gc.get_threshold()
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_good_config_is_not_parsed_again_for_positions(tmp_path: Path) -> None:
    """Every file the daemon's preflight checks (TLS, password file, a model and its pin,
    a devices_dir): positions are looked up only for a finding. The marked parse of a
    10,000-tag config took 40 MiB that stayed in the daemon's RSS."""
    pki = make_pki(tmp_path / "pki")
    sha = (SHIPPED_MODELS / "default.onnx.sha256").read_text().split()[0]
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "pw").chmod(0o600)
    (tmp_path / "devices.d").mkdir()
    (tmp_path / "devices.d" / "more.yaml").write_text(
        "- {name: plc2, protocol: modbus_tcp, host: 127.0.0.1, tags: [{name: t, address: 0}]}\n"
    )
    plc = "  - name: plc\n    protocol: modbus_tcp\n    host: 127.0.0.1\n    tags:\n"
    body = (
        "gateway: {id: gw, state_dir: state}\n"
        f"uplink:\n  username: gw\n  password_file: pw\n  tls: {{ca_file: {pki.ca}, "
        f"cert_file: {pki.client_cert}, key_file: {pki.client_key}}}\n"
        "inference:\n  models:\n    - {name: m, model: default, sha256: SHA, "
        "inputs: [plc/t0, plc/t1, plc/t2, plc/t3, plc/t4, plc/t5], sample_ms: 1000, "
        "window: 4, threshold: {enter: 1, exit: 0.5}}\n"
        "devices_dir: devices.d\n"
        "devices:\n" + plc + "".join(f"      - {{name: t{i}, address: {i}}}\n" for i in range(6))
    )
    f = tmp_path / "c.yaml"
    f.write_text(body.replace("SHA", sha))
    cfg, sources = load_config_sourced(f)
    assert check(cfg, sources, service=True) == []
    assert sources.smap._text is not None  # not parsed for positions
    # a finding does parse them, and names the place
    f.write_text(body.replace("SHA", "ab" * 32))
    cfg, sources = load_config_sourced(f)
    found = check(cfg, sources, service=True)
    assert [x.where for x in found] == [f"{f}:8:41: inference.models[0].sha256"]
    assert sources.smap._text is None


def test_tags_share_their_fields_set_and_stay_what_they_were(tmp_path: Path) -> None:
    """One frozen set per distinct set of given fields (pydantic keeps one per model);
    what each tag says it was given is unchanged, and changing a tag fails loudly."""
    f = tmp_path / "c.yaml"
    f.write_text(
        "gateway: {id: gw, state_dir: state}\n"
        "devices:\n"
        "  - name: plc\n    protocol: modbus_tcp\n    host: 127.0.0.1\n    tags:\n"
        + "".join(f"      - {{name: t{i}, address: {2 * i}, type: float32}}\n" for i in range(50))
        + "      - {name: r, register: 40201, scale: 0.5}\n"
    )
    cfg, _ = load_config_sourced(f)
    tags = cfg.devices[0].tags
    assert len({id(t.model_fields_set) for t in tags[:50]}) == 1
    assert isinstance(tags[0].model_fields_set, frozenset)
    assert {"name", "address", "type"} <= tags[0].model_fields_set
    assert "scale" not in tags[0].model_fields_set and "scale" in tags[50].model_fields_set
    assert tags[50].model_fields_set is not tags[0].model_fields_set
    fresh = ModbusTcpDevice.model_validate(
        {
            "name": "plc",
            "protocol": "modbus_tcp",
            "host": "127.0.0.1",
            "tags": [{"name": "t0", "address": 0, "type": "float32"}],
        }
    )
    assert set(fresh.tags[0].model_fields_set) == set(tags[0].model_fields_set)
    assert tags[0] == fresh.tags[0]
    with pytest.raises(AttributeError):
        tags[0].unit = "degC"  # would add to the shared set


def test_tags_keep_their_values_in_key_sharing_dicts(tmp_path: Path) -> None:
    """A tag's ``__dict__`` is a key-sharing dict (smaller than the one pydantic made,
    for every protocol's tags); the tags read, compare, dump, copy and pickle as tags
    validated from their dump do, and a copy's fields-set is its own."""
    f = tmp_path / "c.yaml"
    f.write_text(
        "gateway: {id: gw, state_dir: state}\n"
        "devices:\n"
        "  - name: plc\n    protocol: modbus_tcp\n    host: 127.0.0.1\n    tags:\n"
        + "".join(f"      - {{name: t{i}, address: {2 * i}, type: float32}}\n" for i in range(20))
        + "      - {name: z, address: 100, offset: -0.0, scale: 1}\n"
        + "      - {name: w, address: 101, write: {min: 0, max: 5}}\n"
    )
    cfg, _ = load_config_sourced(f)
    tags = cfg.devices[0].tags
    raw = [{**t.model_dump(mode="python", by_alias=True)} for t in tags]
    fresh = ModbusTcpDevice.model_validate(
        {"name": "plc", "protocol": "modbus_tcp", "host": "127.0.0.1", "tags": raw}
    ).tags
    assert tags == fresh
    assert [t.model_dump() for t in tags] == [t.model_dump() for t in fresh]
    compact, plain_dict = sys.getsizeof(tags[0].__dict__), sys.getsizeof(dict(tags[0].__dict__))
    assert compact <= plain_dict  # never larger: the first tag made decides, per class
    if sys.version_info[:2] == (3, 11):  # the layout measured (200-296 B against 464)
        assert compact < plain_dict
    assert math.copysign(1, tags[20].offset) == -1.0  # -0.0 stays itself
    assert tags[20].scale == 1.0 and type(tags[20].scale) is float
    assert tags[21].write is not None and tags[21].write.max == 5
    assert pickle.loads(pickle.dumps(tags)) == tags
    copied = tags[3].model_copy(update={"unit": "degC"})
    assert copied.unit == "degC" and tags[3].unit is None and copied.name == "t3"
    assert "unit" in copied.model_fields_set and "unit" not in tags[3].model_fields_set
    mine = tags[4].model_copy()
    mine.unit = "bar"  # a copy's fields-set is its own
    assert "unit" in mine.model_fields_set and "unit" not in tags[5].model_fields_set


def test_repeated_strings_of_a_config_are_one_object(tmp_path: Path) -> None:
    """libyaml makes a string per scalar; the loader keeps one per distinct text (keys and
    values), so 10,000 tags do not hold 10,000 copies of "address" and "float32"."""
    f = tmp_path / "c.yaml"
    f.write_text(
        "tags:\n" + "".join(f"  - {{name: t{i}, address: {i}, type: float32}}\n" for i in range(3))
    )
    data, _ = load_yaml(f)
    a, b = data["tags"][0], data["tags"][2]
    assert a["type"] is b["type"] == "float32"
    assert [k for k in a][1] is [k for k in b][1] == "address"
    assert data == {"tags": [{"name": f"t{i}", "address": i, "type": "float32"} for i in range(3)]}


def test_tags_with_few_fields_keep_the_dict_that_is_smaller() -> None:
    """OPC UA and S7 tags (7-8 fields): a key-sharing dict would be larger, so theirs
    stays as pydantic made it; they validate and compare as always."""
    ua = OpcuaTag.model_validate({"name": "n", "node": "ns=2;s=X", "type": "Double"})
    s7 = S7Tag.model_validate({"name": "r", "address": "DB1.DBD4", "type": "REAL"})
    for tag in (ua, s7):
        assert sys.getsizeof(tag.__dict__) <= sys.getsizeof(dict(tag.__dict__))
        assert type(tag).model_validate(tag.model_dump(by_alias=True)) == tag
