"""Property-based fuzzing of what stpdist reads from files and command lines: dotted config
overrides, index.json, shard members and whole tar shards. Seeded (derandomized) and
bounded, so CI sees the same cases every run. The property each time: a bad input is
refused with the project's own one-line error type (ConfigError, ShardFormatError), never
another exception, a hang, or silent acceptance of a value outside its declared range."""

from __future__ import annotations

import io
import json
import string
import tarfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from stpdist.config import Config, ConfigError, check_values, load_config  # noqa: E402
from stpdist.data.format import (  # noqa: E402
    INDEX_FILE,
    ShardFormatError,
    SplitWriter,
    decode_frames,
    iter_shard,
    read_index,
)

FUZZ = settings(
    derandomize=True,
    database=None,  # no .hypothesis folder: derandomized cases need no memory
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _leaves(section, prefix: str = "") -> list[str]:
    import dataclasses

    keys = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            keys += _leaves(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


KEYS = _leaves(Config()) + ["trainer.nope", "model.backbone.hidden_channels", "data.synthesize"]
VALUES = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(string.printable, max_size=12),
    st.lists(st.integers(-5, 300), max_size=4).map(lambda v: "[" + ",".join(map(str, v)) + "]"),
    st.sampled_from(["null", "true", "false", "''", "[", "{a: 1}", "nan", "-inf", "1e309"]),
)


@settings(FUZZ, max_examples=100)
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=4))
def test_config_overrides_are_accepted_checked_or_refused_in_one_line(pairs):
    overrides = [f"{key}={value}" for key, value in pairs]
    try:
        cfg = load_config(None, overrides)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    check_values(cfg)  # whatever was accepted passes every declared check


def _split(folder: Path) -> Path:
    with SplitWriter(folder, "train", value_scale=255, samples_per_shard=2) as writer:
        for i in range(3):
            writer.write(f"k{i}", np.full((4, 1, 4, 4), i, np.uint8))
    return folder


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 10**9), st.floats(), st.text(max_size=8)),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@FUZZ
@given(st.data())
def test_mutated_index_json_is_read_or_refused_cleanly(tmp_path_factory, data):
    folder = _split(tmp_path_factory.mktemp("idx") / "train")
    index = json.loads((folder / INDEX_FILE).read_text())
    path = data.draw(st.sampled_from(["", "shards", "shards.0", "shards.1"]))
    node = index
    for part in filter(None, path.split(".")):
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, dict) and node:
        key = data.draw(st.sampled_from(sorted(node)))
        node[key] = data.draw(JSON)
    (folder / INDEX_FILE).write_text(json.dumps(index))
    try:
        read = read_index(folder)
    except ShardFormatError as exc:
        assert "\n" not in str(exc)
        return
    assert read.value_scale > 0 and all(s.num_samples >= 0 for s in read.shards)
    for shard in read.shards:
        assert shard.name.startswith("train-") and "/" not in shard.name


@FUZZ
@given(st.binary(max_size=300))
def test_random_frames_members_are_refused_with_the_member_named(blob):
    try:
        frames = decode_frames(blob, "shard-000000.tar: member k.frames.npy")
    except ShardFormatError as exc:
        assert "member k.frames.npy" in str(exc)
        return
    assert isinstance(frames, np.ndarray)


@FUZZ
@given(st.data())
def test_damaged_shards_are_read_or_refused_naming_the_shard(tmp_path_factory, data):
    folder = _split(tmp_path_factory.mktemp("tar") / "train")
    shard = folder / "train-000000.tar"
    raw = bytearray(shard.read_bytes())
    how = data.draw(st.sampled_from(["truncate", "flip", "garbage member"]))
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= 0xFF
    else:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            payload = data.draw(st.binary(max_size=64))
            info = tarfile.TarInfo("k9.frames.npy")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        raw = bytearray(buffer.getvalue())
    shard.write_bytes(bytes(raw))
    try:
        for key, sample in iter_shard(shard):
            decode_frames(sample.get("frames.npy", b""), f"{shard}: member {key}.frames.npy")
    except ShardFormatError as exc:
        assert "train-000000.tar" in str(exc)
