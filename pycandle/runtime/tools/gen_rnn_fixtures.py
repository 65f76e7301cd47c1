#!/usr/bin/env python3
"""Generate the PyTorch reference fixtures for the GRU, RNN, cell and
padded-batch tests of pycandle-runtime.

Builds small ``torch.nn`` recurrent modules with fixed seeds, runs each one on
a few inputs in float32 and writes the parameters, inputs, initial states and
expected results as literal Rust arrays, one file per family, under
``tests/recurrent/fixtures/``:

* ``gru.rs``    ``nn.GRU``
* ``rnn.rs``    ``nn.RNN`` (tanh and relu)
* ``cells.rs``  ``nn.LSTMCell``, ``nn.GRUCell``, ``nn.RNNCell``
* ``padded.rs`` ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` on padded batches, computed
  as ``pad_packed_sequence(module(pack_padded_sequence(x, lengths,
  enforce_sorted=False)))``
* ``mod.rs``    the fixture types

Usage (from anywhere, with a Python that has torch):

    python pycandle/runtime/tools/gen_rnn_fixtures.py

Pass another directory as the single argument to write elsewhere. Sizes,
rounding and the literal format come from ``gen_lstm_fixtures.py`` in this
directory (on ``sys.path`` when the script runs).
"""

import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from gen_lstm_fixtures import HIDDEN_SIZE, INPUT_SIZE, round3, rust_tensor

CRATE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_OUT = CRATE_DIR / "tests" / "recurrent" / "fixtures"


# A run is (input dims, lengths or None, explicit initial state?).
# Stacked modules: dims (T, B), or (T,) for unbatched input; the input layout
# follows the module's batch_first. Cells: dims (B,), or () for unbatched.
def run(dims, with_state=False, lengths=None):
    return (dims, lengths, with_state)


# family file -> [(const name, seed, module class, kwargs, runs)]
FAMILIES = {
    "gru": [
        (
            "ONE_LAYER",
            101,
            nn.GRU,
            dict(),
            [run((5, 2)), run((5, 2), True), run((5,)), run((4,), True)],
        ),
        (
            "BIDIRECTIONAL_2L",
            102,
            nn.GRU,
            dict(num_layers=2, bidirectional=True),
            [run((4, 3)), run((4, 3), True)],
        ),
        (
            "BATCH_FIRST_STATE",
            103,
            nn.GRU,
            dict(num_layers=2, batch_first=True),
            [run((5, 2), True), run((3, 3))],
        ),
        (
            "NO_BIAS",
            104,
            nn.GRU,
            dict(num_layers=2, bias=False),
            [run((5, 2)), run((4, 2), True)],
        ),
        (
            "UNBATCHED_BIDIRECTIONAL",
            105,
            nn.GRU,
            dict(num_layers=2, bidirectional=True, batch_first=True),
            [run((5,), True), run((3,))],
        ),
    ],
    "rnn": [
        (
            "TANH_2L",
            201,
            nn.RNN,
            dict(num_layers=2),
            [run((5, 2)), run((5, 2), True), run((4,), True)],
        ),
        (
            "RELU_BIDIRECTIONAL_2L",
            202,
            nn.RNN,
            dict(num_layers=2, nonlinearity="relu", bidirectional=True),
            [run((4, 3)), run((4, 3), True)],
        ),
        (
            "RELU_BATCH_FIRST",
            203,
            nn.RNN,
            dict(nonlinearity="relu", batch_first=True),
            [run((5, 2), True), run((5,))],
        ),
        (
            "NO_BIAS_BIDIRECTIONAL_2L",
            204,
            nn.RNN,
            dict(num_layers=2, bias=False, bidirectional=True),
            [run((5, 2)), run((3,), True)],
        ),
    ],
    "cells": [
        (
            "LSTM_CELL",
            301,
            nn.LSTMCell,
            dict(),
            [run((3,)), run((3,), True), run(()), run((), True)],
        ),
        ("LSTM_CELL_NO_BIAS", 302, nn.LSTMCell, dict(bias=False), [run((2,), True)]),
        (
            "GRU_CELL",
            303,
            nn.GRUCell,
            dict(),
            [run((3,)), run((3,), True), run(()), run((), True)],
        ),
        ("GRU_CELL_NO_BIAS", 304, nn.GRUCell, dict(bias=False), [run((2,), True)]),
        (
            "RNN_CELL_TANH",
            305,
            nn.RNNCell,
            dict(),
            [run((3,)), run((3,), True), run(()), run((), True)],
        ),
        (
            "RNN_CELL_RELU_NO_BIAS",
            306,
            nn.RNNCell,
            dict(nonlinearity="relu", bias=False),
            [run((3,), True), run(())],
        ),
    ],
    "padded": [
        (
            "LSTM_BIDIRECTIONAL_2L",
            401,
            nn.LSTM,
            dict(num_layers=2, bidirectional=True),
            [
                run((5, 3), lengths=[2, 5, 3]),
                run((5, 3), True, [2, 5, 3]),
                run((5, 3), True, [4, 2, 3]),
            ],
        ),
        (
            "LSTM_BIDIRECTIONAL_2L_BATCH_FIRST_PROJ",
            402,
            nn.LSTM,
            dict(num_layers=2, bidirectional=True, batch_first=True, proj_size=2),
            [run((5, 3), True, [2, 5, 3]), run((5, 3), lengths=[3, 1, 4])],
        ),
        (
            "GRU_BIDIRECTIONAL_2L",
            403,
            nn.GRU,
            dict(num_layers=2, bidirectional=True),
            [
                run((5, 3), lengths=[2, 5, 3]),
                run((5, 3), True, [2, 5, 3]),
                run((5, 3), True, [4, 2, 3]),
            ],
        ),
        (
            "GRU_BIDIRECTIONAL_2L_BATCH_FIRST",
            404,
            nn.GRU,
            dict(num_layers=2, bidirectional=True, batch_first=True),
            [
                run((5, 3), lengths=[2, 5, 3]),
                run((5, 3), True, [2, 5, 3]),
                run((4, 3), True, [1, 3, 2]),
            ],
        ),
        (
            "RNN_TANH_BIDIRECTIONAL_2L",
            405,
            nn.RNN,
            dict(num_layers=2, bidirectional=True),
            [
                run((5, 3), lengths=[2, 5, 3]),
                run((5, 3), True, [2, 5, 3]),
                run((5, 3), True, [4, 2, 3]),
            ],
        ),
        (
            "RNN_RELU_2L_BATCH_FIRST",
            406,
            nn.RNN,
            dict(num_layers=2, nonlinearity="relu", batch_first=True),
            [run((5, 3), True, [2, 5, 3]), run((5, 3), lengths=[3, 1, 4])],
        ),
    ],
}

IS_CELL = (nn.LSTMCell, nn.GRUCell, nn.RNNCell)


def rust_list(tensors) -> str:
    if not tensors:
        return "&[]"
    return "&[\n" + "".join(f"        {rust_tensor(t)},\n" for t in tensors) + "    ]"


def initial_state(module, dims):
    """Random initial state(s) for a run, shaped as the module expects."""
    if isinstance(module, IS_CELL):
        shapes = [(*dims, HIDDEN_SIZE)]
        if isinstance(module, nn.LSTMCell):
            shapes.append((*dims, HIDDEN_SIZE))
    else:
        n = module.num_layers * (2 if module.bidirectional else 1)
        lead = (n,) if len(dims) == 1 else (n, dims[1])
        h_out = getattr(module, "proj_size", 0) or HIDDEN_SIZE
        shapes = [(*lead, h_out)]
        if isinstance(module, nn.LSTM):
            shapes.append((*lead, HIDDEN_SIZE))
    return [round3(torch.randn(*s)) for s in shapes]


def module_input(module, dims):
    if isinstance(module, IS_CELL):
        return round3(torch.randn(*dims, INPUT_SIZE))
    if len(dims) == 2 and module.batch_first:
        t_len, batch = dims
        return round3(torch.randn(batch, t_len, INPUT_SIZE))
    return round3(torch.randn(*dims, INPUT_SIZE))


def flatten(result):
    """A module's return value as a flat list of tensors."""
    if isinstance(result, torch.Tensor):
        return [result]
    out = []
    for r in result:
        out.extend(flatten(r))
    return out


def build_run(module, dims, lengths, with_state):
    x = module_input(module, dims)
    state = initial_state(module, dims) if with_state else []
    hx = None
    if state:
        hx = tuple(state) if len(state) == 2 else state[0]
    with torch.no_grad():
        if lengths is None:
            result = flatten(module(x, hx))
        else:
            bf = module.batch_first
            packed = pack_padded_sequence(
                x, torch.tensor(lengths), batch_first=bf, enforce_sorted=False
            )
            out, final = module(packed, hx)
            out, _ = pad_packed_sequence(out, batch_first=bf)
            result = [out] + flatten(final)
    lengths_src = "&[" + ", ".join(str(n) for n in (lengths or [])) + "]"
    return f"""    Run {{
        lengths: {lengths_src},
        input: {rust_tensor(x)},
        state: {rust_list(state)},
        outputs: {rust_list(result)},
    }},
"""


def build_module(name, seed, cls, kwargs, runs):
    torch.manual_seed(seed)
    module = cls(INPUT_SIZE, HIDDEN_SIZE, **kwargs).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(round3(p))
    runs_src = "".join(build_run(module, *r) for r in runs)
    params = "\n".join(
        f'        ("{k}", {rust_tensor(v)}),' for k, v in module.state_dict().items()
    )
    signature = ", ".join(
        [str(INPUT_SIZE), str(HIDDEN_SIZE)] + [f"{k}={v!r}" for k, v in kwargs.items()]
    )
    torch_src = f"nn.{cls.__name__}({signature})"
    return f"""
/// `{torch_src}`, seed {seed}.
pub const {name}: Module = Module {{
    name: "{name.lower()}",
    torch: "{torch_src}",
    num_layers: {getattr(module, "num_layers", 1)},
    bias: {str(module.bias).lower()},
    batch_first: {str(getattr(module, "batch_first", False)).lower()},
    bidirectional: {str(getattr(module, "bidirectional", False)).lower()},
    proj_size: {getattr(module, "proj_size", 0)},
    relu: {str(getattr(module, "nonlinearity", "tanh") == "relu").lower()},
    params: &[
{params}
    ],
    runs: &[
{runs_src}    ],
}};
"""


def header(family: str) -> str:
    return f"""// @generated by pycandle/runtime/tools/gen_rnn_fixtures.py (torch {torch.__version__}).
// Do not edit by hand. To regenerate, run from the repository root:
//     python pycandle/runtime/tools/gen_rnn_fixtures.py
//
// Reference numbers ({family}) from PyTorch, float32, eval mode.

use super::{{Data, Module, Run}};
"""


MOD_DECLS = "".join(f"pub mod {family};\n" for family in FAMILIES)

MOD_RS = f"""// @generated by pycandle/runtime/tools/gen_rnn_fixtures.py (torch {torch.__version__}).
// Do not edit by hand. To regenerate, run from the repository root:
//     python pycandle/runtime/tools/gen_rnn_fixtures.py
//
// Fixture types for the tests under tests/recurrent/. Every module uses
// input_size {INPUT_SIZE} and hidden_size {HIDDEN_SIZE}.
#![allow(dead_code, clippy::excessive_precision, clippy::approx_constant)]

{MOD_DECLS}
/// A tensor as a shape and its row-major values.
pub struct Data {{
    pub shape: &'static [usize],
    pub values: &'static [f32],
}}

/// One PyTorch module with its parameters and the runs recorded with it.
pub struct Module {{
    pub name: &'static str,
    /// The PyTorch constructor call.
    pub torch: &'static str,
    pub num_layers: usize,
    pub bias: bool,
    pub batch_first: bool,
    pub bidirectional: bool,
    pub proj_size: usize,
    /// `nonlinearity="relu"` (RNN and RNNCell only).
    pub relu: bool,
    /// `state_dict()` entries, PyTorch names.
    pub params: &'static [(&'static str, Data)],
    pub runs: &'static [Run],
}}

/// One call of a module.
pub struct Run {{
    /// True sequence lengths of a padded batch; empty for a plain forward.
    pub lengths: &'static [usize],
    pub input: Data,
    /// Initial state: `[h0]`, `[h0, c0]` for LSTMs, or empty for none.
    pub state: &'static [Data],
    /// What the module returned, flattened: `[output, h_n]` or
    /// `[output, h_n, c_n]` for stacked modules, `[h]` or `[h, c]` for cells.
    pub outputs: &'static [Data],
}}

pub const INPUT_SIZE: usize = {INPUT_SIZE};
pub const HIDDEN_SIZE: usize = {HIDDEN_SIZE};
"""


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    torch.set_num_threads(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "mod.rs").write_text(MOD_RS)
    for family, cases in FAMILIES.items():
        parts = [header(family)]
        parts.extend(build_module(*case) for case in cases)
        names = ", ".join(f"&{c[0]}" for c in cases)
        parts.append(f"\n/// Every module above.\npub const ALL: &[&Module] = &[{names}];\n")
        path = out_dir / f"{family}.rs"
        path.write_text("".join(parts))
        print(f"wrote {path} ({path.stat().st_size} bytes, {len(cases)} modules)")


if __name__ == "__main__":
    main()
