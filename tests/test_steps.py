"""Python loops over time (`for t in range(x.size(1))`, `for x_t in x.unbind(0)`) come out as
Rust `for` loops over the input's length, with their state carried and their per-pass values
collected; a loop that stops on tensor values, or whose passes cannot be written as one, is
reported with its line, never unrolled at the traced length.

The example models of examples/steps.py (a frame VAD stepping an LSTM cell, an RNN-T predictor
with a layer-normalised LSTM cell written in Python, a Tacotron-2 decoder with location-sensitive
attention and two LSTM cells under teacher forcing) are in models.yaml: `test_e2e` checks that
the committed generated crate is what codegen writes and passes parity at both trace cases,
whose lengths differ. Here: what that code looks like, and the reports."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")

from conftest import ROOT, run_pipeline  # noqa: E402
from pycandle.cli import main  # noqa: E402
from pycandle.manifest import Manifest, Ref, SymInt  # noqa: E402

GENERATED = ROOT / "generated" / "src"

# model -> (the loop header, the calls that must appear once: in the loop, not unrolled)
LOOPS = {
    "frame_vad": ("for t in 0..frames.dim(1)? {", ["self.cell.forward("]),
    "rnnt_predictor": ("for t in 0..tokens.dim(0)? {",
                       ["self.cell.ih.forward(", "self.cell.ln_cell.forward("]),
    "tacotron2_decoder": ("for t in 0..mels.dim(1)? {",
                          ["self.attention_rnn.forward(", "self.decoder_rnn.forward(",
                           "self.attention.forward(", "self.projection.forward("]),
}


def _forward(model: str) -> str:
    text = (GENERATED / f"{model}.rs").read_text()
    start = text.index("    pub fn forward(")
    return text[start:text.index("\n    }\n", start)]


def test_example_loops_are_traced_at_two_lengths():
    models = {m["name"]: m for m in yaml.safe_load((ROOT / "models.yaml").read_text())["models"]}
    lengths = {"frame_vad": ("frames", 1), "rnnt_predictor": ("tokens", 0),
               "tacotron2_decoder": ("mels", 1)}
    for name, (arg, dim) in lengths.items():
        trips = [case[arg]["shape"][dim] for case in models[name]["inputs"]]
        assert len(set(trips)) == len(trips) == 2, (name, trips)


@pytest.mark.parametrize("model", sorted(LOOPS))
def test_a_loop_over_time_is_a_rust_for_loop(model):
    header, once = LOOPS[model]
    code = _forward(model)
    assert code.count(" for ") == 1 and header in code, code
    for call in once:
        assert code.count(call) == 1, (call, code)
    loop = code[code.index(header):]
    assert all(call in loop for call in once)


def test_state_is_assigned_in_place_and_values_are_collected():
    vad = _forward("frame_vad")
    assert "let mut h = Tensor::zeros(" in vad
    assert "let x_t = x.get_on_dim(1, t)?;" in vad  # `x[:, t]`, named after `x` and `t`
    assert "(h, c) = self.cell.forward(&x_t, Some((&h, &c)))?;" in vad
    assert "let mut probs = Vec::with_capacity(frames.dim(1)?);" in vad
    assert "probs.push(sigmoid);" in vad
    assert "Tensor::stack(&probs, 1)?" in vad
    predictor = _forward("rnnt_predictor")
    # `for x_t in x.unbind(0)`: the pass reads its element, named as in Python
    assert "let x_t = x.get_on_dim(0, t)?;" in predictor
    assert "outputs.push(h.clone());" in predictor  # `h` is also the state: kept, not moved
    decoder = _forward("tacotron2_decoder")
    for state in ("att_h", "att_c", "dec_h", "dec_c", "weights_cum", "context"):
        assert f"let mut {state} = " in decoder, state
    for kept in ("outputs", "gates", "alignments"):
        assert f"let mut {kept} = Vec::with_capacity(mels.dim(1)?);" in decoder
    # the attention module a pass calls is a method of its struct, checked on its own
    assert "(context, weights_1) = self.attention.forward(" in decoder
    text = (GENERATED / "tacotron2_decoder.rs").read_text()
    assert "impl LocationSensitiveAttention {" in text and "weights_cum: &Tensor," in text
    tests = (ROOT / "generated" / "tests" / "parity" / "tacotron2_decoder.rs").read_text()
    assert '"block", "attention"' in tests


def test_a_manifest_holds_one_pass(tmp_path):
    path = _project(tmp_path, STEPPED, "Stepped", [[2, 7, 4], [3, 4, 4]])
    assert main(["record", "--config", str(path)]) == 0
    m = Manifest.load(tmp_path / "artifacts" / "m" / "manifest.json")
    loops = [n for n in m.nodes if n.op == "loop"]
    assert len(loops) == 1
    body = [n for n in m.nodes if n.step == loops[0].name]
    assert [n.target for n in body] == ["Tensor.__getitem__", "cell", "torch.tanh"]
    count, inits = loops[0].args
    assert count.kind == "dim" and count.b == 1  # x.size(1)
    assert len(inits) == 1 and len(loops[0].kwargs["collect"]) == 1


STEPPED = """\
    import torch
    from torch import nn


    class Stepper(nn.Module):
        def __init__(self, n_in=4):
            super().__init__()
            self.cell = nn.RNNCell(n_in, 6)


    class Stepped(Stepper):
        def forward(self, x):
            h = x.new_zeros(x.size(0), 6)
            outs = []
            for t in range(x.size(1)):
                h = self.cell(x[:, t], h)
                outs.append(torch.tanh(h))
            return torch.stack(outs, 1)


    class StopsOnValues(Stepper):
        def forward(self, x):
            h = x.new_zeros(x.size(0), 6)
            outs = []
            for t in range(x.size(1)):
                h = self.cell(x[:, t], h)
                outs.append(h)
                if bool(h.abs().max() > 1e6):
                    break
            return torch.stack(outs, 1)


    class KeepsTheFirst(Stepper):
        def forward(self, x):
            h = x.new_zeros(x.size(0), 6)
            outs = []
            for t in range(x.size(1)):
                h = self.cell(x[:, t], h)
                outs.append(h)
            return outs[0] + h


    class GrowsSquared(Stepper):
        def forward(self, x):
            h = x.new_zeros(x.size(0), 6)
            outs = []
            for t in range(x.size(1)):
                h = self.cell(x[:, t], h)
                outs.append(h.sum(1) + x.new_zeros(x.size(0), x.size(1) + t * t).sum(1))
            return torch.stack(outs, 1)


    class Sliced(Stepper):
        def __init__(self):
            super().__init__(n_in=8)

        def forward(self, x):
            h = x.new_zeros(x.size(0), 6)
            outs = []
            for t in range(x.size(1) // 2):
                h = self.cell(x[:, 2 * t:2 * t + 2].flatten(1), h)
                outs.append(h)
            return torch.stack(outs, 1)
    """


def _line(cls: str, text: str) -> int:
    """The line of STEPPED's class `cls` that holds `text`."""
    lines = textwrap.dedent(STEPPED).splitlines()
    start = lines.index(f"class {cls}(Stepper):")
    return next(i for i, line in enumerate(lines[start:], start=start + 1) if text in line)


@pytest.mark.cargo
def test_an_index_that_grows_with_the_pass_is_an_expression_of_it(tmp_path, capsys):
    models = ("crate: crate\nartifacts: artifacts\nmodels:\n  - name: m\n"
              "    factory: steppedmodels:Sliced\n    inputs:\n"
              "      - x: {shape: [2, 8, 4]}\n      - x: {shape: [3, 6, 4]}\n")
    out = run_pipeline(tmp_path, {"steppedmodels": textwrap.dedent(STEPPED)}, models, capsys)
    assert "parity: 2 passed, 0 failed" in out, out
    code = (tmp_path / "crate" / "src" / "m.rs").read_text()
    assert "for t in 0..x.dim(1)? / 2 {" in code, code
    m = Manifest.load(tmp_path / "artifacts" / "m" / "manifest.json")
    (loop,) = [n for n in m.nodes if n.op == "loop"]
    (item,) = [n for n in m.nodes if n.step == loop.name and n.target == "Tensor.__getitem__"]
    bounds = item.args[1][1]
    assert bounds.start == SymInt("mul", SymInt("step", Ref(loop.name, ()), None), 2)  # 2 * t
    assert bounds.stop == SymInt("add", bounds.start, 2)  # 2 * t + 2


def _project(tmp_path: Path, module: str, factory: str, shapes: list[list[int]]) -> Path:
    (tmp_path / "steppedmodels.py").write_text(textwrap.dedent(module))
    inputs = "\n".join(f"      - x: {{shape: {s}}}" for s in shapes)
    path = tmp_path / "models.yaml"
    path.write_text(f"models:\n  - name: m\n    factory: steppedmodels:{factory}\n"
                    f"    inputs:\n{inputs}\n")
    return path


@pytest.mark.parametrize("factory, expected", [
    ("StopsOnValues", r"the loop at steppedmodels\.py:{for} ran 7 times in case 0 and 4 times "
     r"in case 1, and cannot be written as a Rust loop: whether it goes on is decided by tensor "
     r"values \(at steppedmodels\.py:{if}\).*hint: a loop that stops on tensor values is not "
     r"ported"),
    ("KeepsTheFirst", r"the loop at steppedmodels\.py:{for} ran 7 times in case 0 and 4 times "
     r"in case 1, and cannot be written as a Rust loop: a value of one of its passes is used "
     r"after it"),
    # sizes in the message as the Python that computes them
    ("GrowsSquared", r"the loop at steppedmodels\.py:{for} ran 7 times in case 0 and 4 times "
     r"in case 1, and cannot be written as a Rust loop: an argument changes from pass to pass "
     r"in a way not written as the pass number: x\.shape\[1\], x\.shape\[1\] \+ 1, "
     r"x\.shape\[1\] \+ 4, x\.shape\[1\] \+ 9"),
])
def test_a_loop_that_cannot_be_ported_is_reported(tmp_path, capsys, factory, expected):
    path = _project(tmp_path, STEPPED, factory, [[2, 7, 4], [3, 4, 4]])
    assert main(["record", "--config", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    expected = expected.replace("{for}", str(_line(factory, "for t in")))
    if "{if}" in expected:
        expected = expected.replace("{if}", str(_line(factory, "if bool(")))
    assert re.search(expected, err), err
    assert not (tmp_path / "artifacts" / "m").exists()
