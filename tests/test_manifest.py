"""The manifest round-trips exactly through its typed JSON."""

from __future__ import annotations

import json

import pytest

from handmade import speaker_encoder
from pycandle.codegen import render_model
from pycandle.lowering import lower
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


HOSTILE = ['"); std::process::exit(1); ("', "x\n#[test] fn t() {}", "a}; fn f() {", "é\u2028//",
           "\\\"", "a\x00b", "${vb}", "*/ fn g() {} /*", "ok\rnext"]


def _string_fields(d: dict) -> list[tuple[str, object]]:
    """Every place a string sits in a manifest document: (where, setter)."""
    places = []
    places.append(("model.name", lambda v: d["model"].__setitem__("name", v)))
    places.append(("model.factory", lambda v: d["model"].__setitem__("factory", v)))
    places.append(("inputs", lambda v: d.__setitem__("inputs", [v])))
    places.append(("warnings", lambda v: d.__setitem__("warnings", [v])))
    lstm = d["modules"]["lstm"]
    places.append(("module type", lambda v: lstm.__setitem__("type", v)))
    places.append(("module config string", lambda v: lstm["config"].__setitem__(
        "mode", {"str": v})))
    places.append(("parameter name", lambda v: lstm["parameters"].__setitem__(v, {})))
    node = d["graph"]["nodes"][1]
    places.append(("node source", lambda v: node.__setitem__("source", v)))
    places.append(("node target", lambda v: node.__setitem__("target", v)))
    norm = next(n for n in d["graph"]["nodes"] if n["name"] == "norm")
    places.append(("node string argument", lambda v: norm["kwargs"].__setitem__(
        "ord", {"str": v})))
    places.append(("keyword name", lambda v: norm["kwargs"].__setitem__(v, {"int": 1})))
    return places


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_in_any_manifest_field_is_refused_with_the_field_named(text):
    """A property over every string field of a manifest: hostile text is refused when the
    manifest is read, with the field named, and so never reaches the generated Rust."""
    count = len(_string_fields(json.loads(speaker_encoder().dumps())))
    for i in range(count):
        d = json.loads(speaker_encoder().dumps())
        where, put = _string_fields(d)[i]
        put(text)
        try:
            m = Manifest.loads(json.dumps(d), "artifacts/speaker/manifest.json")
        except ManifestError as e:
            assert "artifacts/speaker/manifest.json" in str(e), where
            continue
        # free text (a trace warning, a source location) may stay when it is one line: then it
        # must appear in comments only
        assert where in ("warnings", "node source"), f"hostile text accepted in {where}"
        rust = render_model(lower(m))
        for line in rust.splitlines():
            if text.strip() in line:
                assert line.lstrip().startswith("//"), (where, line)
