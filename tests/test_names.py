"""Names: a user's model, argument, module and node names never collide with the names
generated code uses for itself (`pycandle.names`), and the crate they generate compiles."""

from __future__ import annotations

import json

import pytest
from conftest import assert_clippy_clean, pin_lockfile
from handmade import lstm_info, meta, speaker_encoder

from pycandle import names
from pycandle.codegen import codegen
from pycandle.enums import SymKind
from pycandle.lowering import lower
from pycandle.manifest import Manifest, ManifestError, ModuleInfo, Node, Ref, SymInt


def _linear(i: int, o: int) -> ModuleInfo:
    return ModuleInfo("torch.nn.Linear", {"in_features": i, "out_features": o, "bias": True},
                      {"weight": {"shape": [o, i], "dtype": "float32"},
                       "bias": {"shape": [o], "dtype": "float32"}}, {})


def _manifest(name: str, inputs: tuple[str, ...], modules: dict, nodes: tuple, output) -> Manifest:
    first = next(n for n in nodes if n.op == "input")
    return Manifest(
        name=name, factory="model:Model", seed=0, atol=1e-5, rtol=1e-4,
        versions={"pycandle": "0.1.0", "torch": "2.15.0"}, content_hash="0" * 64, inputs=inputs,
        cases=tuple({"inputs": {a: {"shape": list(first.out.shapes[c]), "dtype": "float32"}
                                for a in inputs}} for c in range(2)),
        modules={"": ModuleInfo("model.Model", {}, {}, {}), **modules}, nodes=nodes,
        output=output)


def streaming_with_reserved_names(model: str) -> Manifest:
    """A streaming LSTM whose input is called `state` (forward_stream's own parameter), whose
    modules are called `state` and `report`, with nodes named after the parity test's locals
    and a creation op that needs the model's `device`."""
    x = meta((2, 10, 8), (1, 7, 8))
    return _manifest(model, ("state",), {"state": lstm_info(8, 16, 1, True),
                                         "report": _linear(16, 4)}, (
        Node("state", "input", "state", out=x),
        Node("model", "call_module", "state", (Ref("state"),),
             out=(meta((2, 10, 16), (1, 7, 16)),
                  (meta((1, 2, 16), (1, 1, 16)), meta((1, 2, 16), (1, 1, 16))))),
        Node("report", "call_function", "Tensor.__getitem__", (Ref("model", (1, 0)), -1),
             out=meta((2, 16), (1, 16))),
        Node("g", "call_module", "report", (Ref("report"),), out=meta((2, 4), (1, 4))),
        Node("device", "call_function", "torch.zeros", (SymInt("dim", Ref("state"), 0), 4),
             out=meta((2, 4), (1, 4))),
        Node("parity", "call_function", "Tensor.add", (Ref("g"), Ref("device")),
             out=meta((2, 4), (1, 4))),
    ), Ref("parity"))


def arguments_named_like_locals(model: str) -> Manifest:
    """Arguments `device` and `vb`, a module named `self`, nodes named `steps` and `head`."""
    x = meta((2, 3), (1, 3))
    return _manifest(model, ("device", "vb"), {"self": _linear(3, 2)}, (
        Node("device", "input", "device", out=x),
        Node("vb", "input", "vb", out=x),
        Node("steps", "call_function", "Tensor.mul", (Ref("device"), Ref("vb")), out=x),
        Node("head", "call_module", "self", (Ref("steps"),), out=meta((2, 2), (1, 2))),
    ), Ref("head"))


# Model names whose CamelCase is a type the generated files import or the prelude has.
COLLIDING_MODELS = ["linear", "lstm", "tensor", "result", "var_builder", "parity_case", "gru",
                    "lstm_config", "batch_norm", "module"]


@pytest.mark.parametrize("model", COLLIDING_MODELS)
def test_model_struct_never_shadows_an_import(model):
    ir = lower(streaming_with_reserved_names(model))
    imported = {item.strip() for use in ir.uses + ir.test_uses
                for item in use.split("::")[-1].strip("{}").split(",")}
    assert ir.struct not in imported | names.PRELUDE_TYPES
    assert ir.struct == names.camel(model) + ("Model" if names.camel(model) in imported
                                              or model in ("result", "var_builder",
                                                           "parity_case", "module",
                                                           "lstm_config") else "")


def test_reserved_locals_are_renamed():
    ir = lower(streaming_with_reserved_names("speaker"))
    assert [a.name for a in ir.args] == ["state_1"]
    assert ir.stmts[0].pattern == "device" and ir.stmts[0].expr == "state_1.device()"
    patterns = " ".join(s.pattern for s in ir.stmts)
    for reserved in ("model", "report", "g", "parity"):
        assert f" {reserved} " not in f" {patterns} ".replace("(", " ").replace(",", " ")


def test_generated_names_compile(tmp_path, cargo_env):
    """Every model, argument, module and node name taken from the reserved lists: the crate
    builds and passes clippy, parity tests included."""
    artifacts, crate = tmp_path / "artifacts", tmp_path / "crate"
    manifests = [streaming_with_reserved_names("linear"), arguments_named_like_locals("tensor"),
                 streaming_with_reserved_names("parity_case")]
    for m in manifests:
        (artifacts / m.name).mkdir(parents=True)
        (artifacts / m.name / "manifest.json").write_text(m.dumps())
    pin_lockfile(crate)
    codegen(crate, artifacts, [m.name for m in manifests])
    src = (crate / "src" / "linear.rs").read_text()
    assert "pub struct LinearModel" in src and "use pycandle_runtime::{Linear" in src
    assert "pub fn forward_stream(&self, state_1: &Tensor, state: &mut LinearModelState)" in src
    assert_clippy_clean(crate)


@pytest.mark.parametrize("name, problem", [
    ("lib", "file of the generated crate"), ("main", "file of the generated crate"),
    ("tests", "file of the generated crate"), ("candle_core", "crate"), ("std", "crate"),
    ("self", "keyword"), ("Voice", "lowercase identifier"), ("voice\n", "lowercase identifier"),
    ("a" * 65, "at most 64"), ("_", "letter or digit"),
])
def test_model_names_the_crate_reserves_are_refused(name, problem):
    assert problem in names.model_name_problem(name)


def test_sub_of_two_sizes_round_trips_and_lowers():
    """`t - b` of two traced sizes: record writes kind `sub`, the manifest reader takes it."""
    m = speaker_encoder()
    size = SymInt(SymKind.SUB, SymInt("dim", Ref("mels"), 1), SymInt("dim", Ref("mels"), 0))
    nodes = tuple(Node(n.name, n.op, n.target, (Ref("lstm", (1, 0)), size), n.kwargs,
                       n.out, n.source) if n.name == "getitem" else n for n in m.nodes)
    nodes = tuple(n for n in nodes if n.name != "getitem") + ()
    narrowed = Node("narrowed", "call_function", "Tensor.narrow",
                    (Ref("mels"), 1, 0, size), out=meta((2, 8, 8), (1, 6, 8)))
    m2 = Manifest(**{**m.__dict__, "nodes": (*m.nodes, narrowed), "output": Ref("narrowed")})
    back = Manifest.loads(m2.dumps(), "test")
    assert back.node("narrowed").args[3].kind == SymKind.SUB
    ir = lower(back)
    assert any("mels.dim(1)? - mels.dim(0)?" in s.expr for s in ir.stmts)
    del nodes


def test_unknown_closed_set_values_are_named():
    d = json.loads(speaker_encoder().dumps())
    d["graph"]["nodes"][1]["op"] = "call_method"
    with pytest.raises(ManifestError, match="node 'lstm': unknown node kind 'call_method'"):
        Manifest.loads(json.dumps(d), "artifacts/speaker/manifest.json")
    d = json.loads(speaker_encoder().dumps())
    d["graph"]["nodes"][0]["out"]["tensor"]["dtype"] = "complex64"
    with pytest.raises(ManifestError, match="unknown dtype 'complex64'"):
        Manifest.loads(json.dumps(d), "artifacts/speaker/manifest.json")


def test_runtime_functions_are_the_ones_the_runtime_exports():
    """Generated code calls these unqualified, so no local may take their names."""
    import re

    from conftest import ROOT

    lib = (ROOT / "pycandle" / "runtime" / "src" / "lib.rs").read_text()
    exported = {name for group in re.findall(r"pub use \w+::(\{[^}]*\}|\w+);", lib)
                for name in re.findall(r"\b[a-z_][a-z0-9_]*\b", group)}
    assert names.RUNTIME_FUNCTIONS == exported
    assert names.RUNTIME_FUNCTIONS <= names.RESERVED_LOCALS
