"""The manifest round-trips exactly through its typed JSON."""

from __future__ import annotations

import json

import pytest

from handmade import speaker_encoder
from pycandle.manifest import (
    DType, Manifest, ManifestError, Param, Ref, TensorMeta, decode, encode,
)


@pytest.mark.parametrize("value", [
    0, -3, 1.5, float("-0.25"), True, False, None, "fro", Ellipsis,
    slice(None, -1, 2), (1, (2, 3)), [1, 2], Ref("lstm", (1, 0)), Param("proj.weight"),
    DType("float64"), TensorMeta("float32", ((2, 3), (1, 3))),
    (Ref("x"), [slice(1, None, None), None, Ellipsis]),
])
def test_typed_values_round_trip(value):
    encoded = encode(value)
    assert decode(json.loads(json.dumps(encoded))) == value
    # ints and floats stay apart, as do tuples and lists
    assert type(decode(encoded)) is type(value)


def test_manifest_round_trip_is_byte_identical(tmp_path):
    manifest = speaker_encoder()
    text = manifest.dumps()
    path = tmp_path / "manifest.json"
    path.write_text(text)
    again = Manifest.load(path)
    assert again == manifest
    assert again.dumps() == text
    assert json.loads(text)["schema"] == 1


def test_manifest_errors_are_clear(tmp_path):
    with pytest.raises(ManifestError, match="run `pycandle record` first"):
        Manifest.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": 99}))
    with pytest.raises(ManifestError, match="schema 99 is not the supported version"):
        Manifest.load(bad)
    bad.write_text("{not json")
    with pytest.raises(ManifestError, match="malformed manifest"):
        Manifest.load(bad)
    with pytest.raises(ManifestError, match="unknown typed value kind"):
        decode({"complex": 1})


@pytest.mark.parametrize("field, value", [
    ("module", 'enc"); drop("'), ("module", "a..b"), ("node", "x y"), ("node", "1x")])
def test_names_that_could_break_out_of_rust_are_refused(tmp_path, field, value):
    """record writes plain names only; a hand-edited manifest cannot inject code."""
    d = json.loads(speaker_encoder().dumps())
    if field == "module":
        d["modules"][value] = next(iter(d["modules"].values()))
    else:
        d["graph"]["nodes"][0]["name"] = value
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="not a dotted path|not an identifier"):
        Manifest.load(path)
