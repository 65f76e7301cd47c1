"""Random recurrent-layer configurations, written as PyTorch models plus models.yaml entries,
for sweeps through the real pipeline (record -> codegen -> cargo test)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

from conftest import pin_lockfile


@dataclass(frozen=True)
class RecurrentCase:
    kind: str  # "LSTM"
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

    @property
    def h_out(self) -> int:
        return self.proj or self.hidden


@st.composite
def recurrent_cases(draw, kinds=("LSTM",)) -> RecurrentCase:
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
    )


def model_source(case: RecurrentCase, i: int) -> str:
    args = "x, h0, c0" if case.with_state else "x"
    call = "self.rnn(x, (h0, c0))" if case.with_state else "self.rnn(x)"
    return textwrap.dedent(f"""
        class Model{i}(nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = nn.{case.kind}({case.input_size}, {case.hidden}, num_layers={case.layers},
                                   bias={case.bias}, batch_first={case.batch_first},
                                   bidirectional={case.bidirectional}, proj_size={case.proj})

            def forward(self, {args}):
                out, (h, c) = {call}
                return out, h, c
        """)


def yaml_entry(case: RecurrentCase, i: int) -> str:
    dirs = 2 if case.bidirectional else 1
    lines = [f"  - name: model{i}", f"    factory: sweep:Model{i}", f"    seed: {i}", "    inputs:"]
    for b, t in zip(case.batches, case.steps):
        if case.unbatched:
            x, h, c = [t, case.input_size], [case.layers * dirs, case.h_out], \
                [case.layers * dirs, case.hidden]
        else:
            x = [b, t, case.input_size] if case.batch_first else [t, b, case.input_size]
            h, c = [case.layers * dirs, b, case.h_out], [case.layers * dirs, b, case.hidden]
        lines.append(f"      - x: {{shape: {x}, low: -1, high: 1}}")
        if case.with_state:
            lines.append(f"        h0: {{shape: {h}, low: -1, high: 1}}")
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
