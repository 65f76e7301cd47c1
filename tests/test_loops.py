"""Python loops over a `ModuleList` come out as Rust `for` loops (`for layer in &self.layers`),
named after the Python loop variable, when each pass carries one value into the next; a loop
that keeps every block's output, or walks two lists at once, stays unrolled. Parity at two trace
shapes either way, and the generated code is clippy-clean."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from conftest import assert_clippy_clean, run_pipeline  # noqa: E402

MODULE = '''\
import torch
import torch.nn.functional as F
from torch import nn


class FromArgument(nn.Module):
    """Blocks applied straight to forward()'s argument."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(6, 6) for _ in range(3))

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


class Residual(nn.Module):
    """The loop's input is read again after it, and inside it through a second name."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(6, 6), nn.GELU(), nn.LayerNorm(6)) for _ in range(3))

    def forward(self, x):
        skip = x * 0.5
        h = skip
        for i, block in enumerate(self.blocks):
            h = block(h) + skip
        return h - skip


class Collected(nn.Module):
    """Every block's output is kept: the loop stays unrolled, and still right."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(4, 4, 3, padding=1) for _ in range(3))
        self.norms = nn.ModuleList(nn.BatchNorm1d(4) for _ in range(3))

    def forward(self, x):
        outs = []
        for conv in self.convs:
            x = F.relu(conv(x))
            outs.append(x)
        for conv, norm in zip(self.convs, self.norms):  # two lists at once: unrolled
            x = norm(conv(x))
        return torch.stack(outs, 0), x


class ResBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        h = self.fc(self.norm(x))
        return x + torch.relu(h)


class Gate(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, y):
        g = torch.sigmoid(self.proj(x))
        return g * y, (1 - g) * x


class Stack(nn.Module):
    """User modules: each gets a forward of its own, and the list of them a loop."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.blocks = nn.ModuleList(ResBlock(8) for _ in range(3))
        self.gate = Gate(8)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        a, b = self.gate(x, x * 2)
        return a + b
'''

MODELS = """\
crate: crate
models:
  - name: from_argument
    factory: loopmodels:FromArgument
    inputs:
      - x: {shape: [2, 5, 6]}
      - x: {shape: [3, 4, 6]}
  - name: residual
    factory: loopmodels:Residual
    inputs:
      - x: {shape: [2, 6]}
      - x: {shape: [4, 6]}
  - name: collected
    factory: loopmodels:Collected
    inputs:
      - x: {shape: [2, 4, 7]}
      - x: {shape: [1, 4, 3]}
  - name: stack
    factory: loopmodels:Stack
    inputs:
      - x: {shape: [2, 5, 6]}
      - x: {shape: [3, 4, 6]}
"""


def _forward(path) -> str:
    rust = path.read_text()
    return rust[rust.index("pub fn forward("):]


@pytest.mark.cargo
def test_module_list_loops_become_rust_loops(tmp_path, cargo_env, capsys):
    out = run_pipeline(tmp_path, {"loopmodels": MODULE}, MODELS, capsys)
    assert "parity: 8 passed, 0 failed" in out, out[-3000:]
    src = tmp_path / "crate" / "src"

    arg = _forward(src / "from_argument.rs")
    assert "let mut x = x.clone();\n" in arg, arg  # forward()'s `&Tensor` argument
    assert "for layer in &self.layers {" in arg, arg
    assert "x = layer_out.tanh()?;" in arg, arg
    assert "self.layers[" not in arg, arg
    assert "Ok(x)" in arg, arg

    res = _forward(src / "residual.rs")
    assert "for block in &self.blocks {" in res, res  # `for i, block in enumerate(...)`
    assert "let mut h = skip.clone();" in res, res  # `skip` is read again in the loop
    assert "let block_out = block.forward(&h)?;\n" in res, res  # the Sequential's own forward
    assert "h = block_out.add(&skip)?;" in res, res
    assert "self.blocks[" not in res, res

    kept = _forward(src / "collected.rs")
    assert "for " not in kept, kept  # every output is stacked; the zip walks two lists
    assert "self.convs[2]" in kept and "self.norms[2]" in kept, kept
    stack = (src / "stack.rs").read_text()
    forward = _forward(src / "stack.rs")
    loop = forward[forward.index("for block in &self.blocks {"):]
    loop = loop[:loop.index("\n        }")]
    assert loop.endswith("\n            x_1 = block.forward(&x_1)?;"), forward  # `x` is the arg
    assert loop.count(";") == 1, loop
    assert "impl Module for ResBlock {\n    fn forward(&self, x: &Tensor) -> Result<Tensor> {" \
        in stack, stack
    assert "pub fn forward(&self, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {" \
        in stack, stack  # Gate: two tensors in, two out
    assert "let (a, b) = self.gate.forward(&x_1, &mul)?;" in forward, forward
    # each block is checked on the inputs of its own call, after the layers
    parity_test = (tmp_path / "crate" / "tests" / "parity" / "stack.rs").read_text()
    for block in ("blocks.0", "blocks.1", "blocks.2", "gate"):
        assert f'report.check("block", "{block}",' in parity_test, parity_test
    assert "self.blocks[" not in stack, stack
    assert_clippy_clean(tmp_path / "crate")
