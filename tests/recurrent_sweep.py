"""Random recurrent-layer configurations, written as PyTorch models plus models.yaml entries,
for sweeps through the real pipeline (record -> codegen -> cargo test)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

from conftest import pin_lockfile


@dataclass(frozen=True)
class RecurrentCase:
    kind: str  # "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"
    input_size: int
    hidden: int
    layers: int
    bidirectional: bool
    proj: int
    bias: bool
    batch_first: bool
    with_state: bool
    unbatched: bool
    batches: tuple[int, int]
    steps: tuple[int, int]
    relu: bool = False  # RNN / RNNCell nonlinearity
    vocab: int = 0  # > 0: the input is token ids through an nn.Embedding of this many rows

    @property
    def h_out(self) -> int:
        return self.proj or self.hidden

    @property
    def cell(self) -> bool:
        return self.kind.endswith("Cell")

    @property
    def pair(self) -> bool:
        return self.kind.startswith("LSTM")

    def constructor(self) -> str:
        args = [str(self.input_size), str(self.hidden), f"bias={self.bias}"]
        if not self.cell:
            args += [f"num_layers={self.layers}", f"batch_first={self.batch_first}",
                     f"bidirectional={self.bidirectional}"]
        if self.kind == "LSTM":
            args.append(f"proj_size={self.proj}")
        if self.kind.startswith("RNN"):
            args.append(f"nonlinearity={'relu' if self.relu else 'tanh'!r}")
        return f"nn.{self.kind}({', '.join(args)})"


@st.composite
def recurrent_cases(draw, kinds=("LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell")
                    ) -> RecurrentCase:
    kind = draw(st.sampled_from(kinds))
    hidden = draw(st.integers(1, 8))
    return RecurrentCase(
        kind=kind, input_size=draw(st.integers(1, 8)), hidden=hidden,
        layers=draw(st.integers(1, 3)), bidirectional=draw(st.booleans()),
        proj=draw(st.integers(0, hidden - 1)) if kind == "LSTM" and hidden > 1
        and draw(st.booleans()) else 0,
        bias=draw(st.booleans()), batch_first=draw(st.booleans()),
        with_state=draw(st.booleans()), unbatched=draw(st.booleans()),
        batches=(draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        steps=(draw(st.integers(1, 9)), draw(st.integers(1, 9))),
        relu=draw(st.booleans()),
        vocab=0 if kind.endswith("Cell") or not draw(st.booleans()) else draw(st.integers(1, 20)),
    )


def model_source(case: RecurrentCase, i: int) -> str:
    state = ("(h0, c0)" if case.pair else "h0") if case.with_state else None
    args = ("x, h0, c0" if case.pair else "x, h0") if case.with_state else "x"
    call = f"self.rnn(x, {state})" if state else "self.rnn(x)"
    if case.cell:
        body = f"return {call}"
    elif case.pair:
        body = f"out, (h, c) = {call}\n        return out, h, c"
    else:
        body = f"out, h = {call}\n        return out, h"
    embed, lookup = "", ""
    if case.vocab:  # the tokens' embedding feeds the layer alone: folded into it at load
        embed = f"        self.embed = nn.Embedding({case.vocab}, {case.input_size})\n"
        lookup = "        x = self.embed(x)\n"
    return (f"\n\nclass Model{i}(nn.Module):\n"
            f"    def __init__(self):\n"
            f"        super().__init__()\n"
            f"{embed}"
            f"        self.rnn = {case.constructor()}\n\n"
            f"    def forward(self, {args}):\n"
            f"{lookup}"
            f"        {body}\n")


def yaml_entry(case: RecurrentCase, i: int) -> str:
    dirs = 1 if case.cell else (2 if case.bidirectional else 1)
    layers = 1 if case.cell else case.layers
    lines = [f"  - name: model{i}", f"    factory: sweep:Model{i}", f"    seed: {i}", "    inputs:"]
    for b, t in zip(case.batches, case.steps):
        batch = [] if case.unbatched else [b]
        if case.cell:
            x, h, c = batch + [case.input_size], batch + [case.hidden], batch + [case.hidden]
        else:
            x = [t, case.input_size] if case.unbatched else (
                [b, t, case.input_size] if case.batch_first else [t, b, case.input_size])
            h = [layers * dirs] + batch + [case.h_out]
            c = [layers * dirs] + batch + [case.hidden]
        if case.vocab:
            ids = f"shape: {x[:-1]}, dtype: int64, low: 0, high: {case.vocab}"
            lines.append(f"      - x: {{{ids}}}")
        else:
            lines.append(f"      - x: {{shape: {x}, low: -1, high: 1}}")
        if case.with_state:
            lines.append(f"        h0: {{shape: {h}, low: -1, high: 1}}")
            if case.pair:
                lines.append(f"        c0: {{shape: {c}, low: -1, high: 1}}")
    lines.append("    tolerance: {atol: 2.0e-5, rtol: 1.0e-4}")
    return "\n".join(lines) + "\n"


def write_sweep(root: Path, cases: list[RecurrentCase]) -> Path:
    """A project directory with one model per case, all in one crate (one cargo build)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.py").write_text(
        "from torch import nn\n" + "".join(model_source(c, i) for i, c in enumerate(cases)))
    config = root / "models.yaml"
    config.write_text("crate: crate\nmodels:\n"
                      + "".join(yaml_entry(c, i) for i, c in enumerate(cases)))
    pin_lockfile(root / "crate")
    return config
