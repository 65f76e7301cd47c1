"""Containers and user modules become nested Rust structs; repeated identical blocks a `Vec`.

One model holds every kind of container, traced at two shapes, and must pass parity; the
generated struct layout is checked too, and that codegen of the struct tree alone (no torch)
names and shares structs as documented.
"""

from __future__ import annotations

import re

import pytest

from conftest import assert_clippy_clean, pin_lockfile
from pycandle.lowering.structs import LeafField, build_tree

CONTAINERS = '''
import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x):
        return x + F.relu(self.norm(self.conv(x)))


class Stage(nn.Module):
    """A user module holding a list of blocks, itself repeated."""

    def __init__(self, channels):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(channels) for _ in range(2))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class Containers(nn.Module):
    def __init__(self, channels=6, dim=8):
        super().__init__()
        self.stem = ResBlock(channels)  # the same struct as the stages' blocks
        self.stages = nn.ModuleList(Stage(channels) for _ in range(2))  # Vec<Stage>
        self.wide = ResBlock(2 * channels)  # same class, other sizes: a struct of its own
        self.expand = nn.Conv1d(channels, 2 * channels, 1)
        self.heads = nn.ModuleList(nn.Linear(2 * channels, dim) for _ in range(3))  # Vec<Linear>
        self.norms = nn.ModuleList(nn.LayerNorm(dim, elementwise_affine=False)
                                   for _ in range(2))  # Vec<LayerNorm>, built in a block
        self.mixed = nn.ModuleList([nn.Linear(dim, dim), nn.Linear(dim, 4)])  # unlike: a struct
        self.branches = nn.ModuleDict({"left": nn.Linear(4, 4), "match": nn.Linear(4, 4)})
        self.tail = nn.Sequential(nn.Sequential(nn.Linear(4, 5), nn.Tanh()), nn.Linear(5, 3))

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        x = self.wide(self.expand(x)).transpose(1, 2)
        y = sum(head(x) for head in self.heads)
        for norm in self.norms:
            y = norm(y)
        for layer in self.mixed:
            y = F.gelu(layer(y))
        y = self.branches["left"](y) * torch.sigmoid(self.branches["match"](y))
        return self.tail(y)
'''

CONFIG = """\
crate: crate
models:
  - name: containers
    factory: containers:Containers
    inputs:
      - x: {shape: [2, 6, 9]}
      - x: {shape: [3, 6, 14]}
"""


@pytest.mark.cargo
def test_nested_containers_pass_parity_as_nested_structs(tmp_path, cargo_env, capsys):
    pytest.importorskip("torch")
    from pycandle.cli import main

    (tmp_path / "containers.py").write_text(CONTAINERS)
    (tmp_path / "models.yaml").write_text(CONFIG)
    pin_lockfile(tmp_path / "crate")
    assert main(["all", "--config", str(tmp_path / "models.yaml")]) == 0, capsys.readouterr()
    assert "parity: 2 passed, 0 failed" in capsys.readouterr().out

    src = (tmp_path / "crate" / "src" / "containers.rs").read_text()
    fields = dict(re.findall(r"pub (\w+): ([^,]+),", src.split("impl Containers")[0]))
    assert fields == {
        "stem": "ResBlock", "stages": "Vec<Stage>", "expand": "Conv1d", "wide": "ResBlock2",
        "heads": "Vec<Linear>", "norms": "Vec<LayerNorm>", "mixed": "Mixed",
        "branches": "Branches", "tail": "Tail"}
    structs = re.findall(r"pub struct (\w+)", src)
    assert structs == ["Containers", "ResBlock", "Stage", "ResBlock2", "Mixed", "Branches",
                       "Tail", "Tail0"]
    assert "pub blocks: Vec<ResBlock>," in src  # a Vec inside a struct inside a Vec
    assert "pub match_: Linear," in src  # a ModuleDict key that is a Rust keyword
    # each user module and container has its own forward; lists of blocks run as loops
    assert "for stage in &self.stages {" in src and "x_1 = stage.forward(&x_1)?;" in src
    stage = src[src.index("impl Module for Stage {"):]
    stage = stage[:stage.index("\n}\n")]
    assert "for block in &self.blocks {" in stage and "x = block.forward(&x)?;" in stage, stage
    for struct in ("ResBlock", "ResBlock2", "Tail", "Tail0"):
        assert f"impl Module for {struct} {{" in src, src
    assert "self.stages[" not in src and "self.blocks[" not in src, src
    # weights still load by their state-dict names
    assert 'vb.pp("stages").pp(i)' in src and 'vb.pp("blocks").pp(i)' in src

    assert_clippy_clean(tmp_path / "crate")


def leaf(rust_type: str, arg: int = 1) -> LeafField:
    return LeafField(rust_type, lambda vb: f"{rust_type.lower()}({arg}, {vb})?",
                     f"torch.nn.{rust_type}")


def test_struct_tree_without_torch():
    types = {"": "m.Model", "blocks": "torch.nn.ModuleList", "blocks.0": "torch.nn.Linear",
             "blocks.1": "torch.nn.Linear", "lstms": "torch.nn.ModuleList",
             "lstms.0": "m.Lstm", "lstms.1": "m.Lstm", "lstms.0.cell": "torch.nn.LSTMCell",
             "lstms.1.cell": "torch.nn.LSTMCell", "only": "torch.nn.ModuleList",
             "only.0": "torch.nn.Linear"}
    tree = build_tree(
        # used out of order: the Vec is still indexed by the PyTorch names
        {"blocks.1": leaf("Linear"), "blocks.0": leaf("Linear"),
         "lstms.0.cell": leaf("Cell"), "lstms.1.cell": leaf("Cell"),
         "only.0": leaf("Linear")},
        types, "Model", {"Linear", "Cell", "Lstm"})
    assert [(f.name, f.rust_type) for f in tree.fields] == [
        ("blocks", "Vec<Linear>"), ("lstms", "Vec<LstmBlock>"), ("only", "Only")]
    assert tree.fields[0].init == \
        '(0..2).map(|i| linear(1, vb.pp("blocks").pp(i))).collect::<Result<Vec<_>>>()?'
    # a user class whose name is taken by an imported type gets a suffix
    assert [s.name for s in tree.structs] == ["LstmBlock", "Only"]
    assert tree.structs[0].doc == "`lstms.0`, `lstms.1` (m.Lstm)"
    # a single element is no list of repeated blocks
    assert [(f.name, f.rust_type) for f in tree.structs[1].fields] == [("layer_0", "Linear")]
    assert tree.access == {
        "blocks": "blocks", "blocks.1": "blocks[1]", "blocks.0": "blocks[0]",
        "lstms": "lstms", "lstms.0": "lstms[0]", "lstms.0.cell": "lstms[0].cell",
        "lstms.1": "lstms[1]", "lstms.1.cell": "lstms[1].cell", "only": "only",
        "only.0": "only.layer_0"}


def test_unlike_blocks_are_not_a_vec():
    types = {"": "m.Model", "layers": "torch.nn.ModuleList",
             "layers.0": "torch.nn.Linear", "layers.1": "torch.nn.Linear"}
    tree = build_tree({"layers.0": leaf("Linear", 1),
                       "layers.1": leaf("Linear", 2)}, types, "Model", set())
    (layers,) = tree.fields
    assert (layers.rust_type, layers.init) == ("Layers", 'Layers::load(vb.pp("layers"))?')
    assert [f.init for f in tree.structs[0].fields] == [
        'linear(1, vb.pp("0"))?', 'linear(2, vb.pp("1"))?']


def test_a_block_constructor_is_wrapped_for_the_vec():
    types = {"": "m.Model", "norms": "torch.nn.ModuleList",
             "norms.0": "torch.nn.LayerNorm", "norms.1": "torch.nn.LayerNorm"}
    def block(vb: str) -> str:
        return f"{{\nlet vb = {vb};\nLayerNorm::new_no_bias(ones(vb)?, 1e-5)\n}}"

    tree = build_tree({q: LeafField("LayerNorm", block, "torch.nn.LayerNorm")
                       for q in ("norms.0", "norms.1")}, types, "Model", set())
    assert tree.fields[0].init.startswith(
        "(0..2).map(|i| -> Result<LayerNorm> { Ok({\nlet vb = vb.pp(\"norms\").pp(i);")
