"""Shared by ``gen_lstm_fixtures.py`` and ``gen_rnn_fixtures.py``: builds small
``torch.nn`` recurrent modules with fixed seeds, runs each one on a few inputs
in float32 and writes the parameters, inputs, initial states and results as
JSON data under ``tests/fixtures/``, one file per family (``<family>.json``),
which the Rust tests load through ``tests/common/fixtures.rs``.

A family is a list of modules ``(name, seed, module class, kwargs, runs)``;
``run(...)`` describes one call. Parameters, inputs and initial states are
rounded to 3 decimals (the results are computed from the rounded values, so
nothing is lost) and every number is written as the shortest decimal text that
reads back as the same float32. The output is the same byte for byte on every
run with the same torch.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

CRATE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_OUT = CRATE_DIR / "tests" / "fixtures"

INPUT_SIZE = 3
HIDDEN_SIZE = 4

IS_CELL = (nn.LSTMCell, nn.GRUCell, nn.RNNCell)

# Numbers per line in a tensor's "values" (as in the Rust literals before).
VALUES_PER_LINE = 12


# A run is (input dims, lengths or None, explicit initial state?).
# Stacked modules: dims (T, B), or (T,) for unbatched input; the input layout
# follows the module's batch_first. Cells: dims (B,), or () for unbatched.
def run(dims, with_state=False, lengths=None):
    return (dims, lengths, with_state)


def round3(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t * 1e3) / 1e3


def f32_text(x: float) -> str:
    """Shortest decimal text that reads back as the same float32."""
    if not np.isfinite(x):
        raise ValueError(f"{x} has no JSON number")
    s = np.format_float_positional(np.float32(x), unique=True, trim="0")
    if "." not in s:
        s += ".0"
    return s


class Values(list):
    """A tensor's flattened values, already as text (see ``f32_text``)."""


def tensor(t: torch.Tensor) -> dict:
    vals = t.detach().to(torch.float32).flatten().tolist()
    return {"shape": list(t.shape), "values": Values(f32_text(v) for v in vals)}


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


def build_run(module, dims, lengths, with_state) -> dict:
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
    return {
        "lengths": list(lengths or []),
        "input": tensor(x),
        "state": [tensor(s) for s in state],
        "outputs": [tensor(r) for r in result],
    }


def build_module(name, seed, cls, kwargs, runs) -> dict:
    torch.manual_seed(seed)
    module = cls(INPUT_SIZE, HIDDEN_SIZE, **kwargs).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(round3(p))
    runs = [build_run(module, *r) for r in runs]
    signature = ", ".join(
        [str(INPUT_SIZE), str(HIDDEN_SIZE)] + [f"{k}={v!r}" for k, v in kwargs.items()]
    )
    return {
        "name": name,
        "torch": f"nn.{cls.__name__}({signature})",
        "seed": seed,
        "num_layers": getattr(module, "num_layers", 1),
        "bias": module.bias,
        "batch_first": getattr(module, "batch_first", False),
        "bidirectional": getattr(module, "bidirectional", False),
        "proj_size": getattr(module, "proj_size", 0),
        "relu": getattr(module, "nonlinearity", "tanh") == "relu",
        "params": {k: tensor(v) for k, v in module.state_dict().items()},
        "runs": runs,
    }


def dump(value, depth: int = 0) -> str:
    """JSON text, one field per line and a tensor's values in rows of
    ``VALUES_PER_LINE``, so that a regenerated file diffs line by line."""
    pad = "  " * depth
    if isinstance(value, Values):
        if len(value) <= VALUES_PER_LINE:
            return "[" + ", ".join(value) + "]"
        rows = [
            pad + "  " + ", ".join(value[i : i + VALUES_PER_LINE])
            for i in range(0, len(value), VALUES_PER_LINE)
        ]
        return "[\n" + ",\n".join(rows) + "\n" + pad + "]"
    if isinstance(value, dict) and isinstance(value.get("values"), Values):
        shape = json.dumps(value["shape"])
        return f'{{"shape": {shape}, "values": {dump(value["values"], depth)}}}'
    if isinstance(value, dict):
        items = [f"{pad}  {json.dumps(k)}: {dump(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        items = [pad + "  " + dump(v, depth + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value)


def main(script: str, families: dict) -> None:
    """Writes ``<family>.json`` for each family into the directory given as the
    single argument, or ``tests/fixtures/`` of this crate."""
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    torch.set_num_threads(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = f"python pycandle/runtime/tools/{script}"
    for family, modules in families.items():
        doc = {
            "generated_by": f"pycandle/runtime/tools/{script}; do not edit by hand, "
            f"regenerate from the repository root with: {command}",
            "torch_version": torch.__version__,
            "input_size": INPUT_SIZE,
            "hidden_size": HIDDEN_SIZE,
            "modules": [build_module(*m) for m in modules],
        }
        text = dump(doc) + "\n"
        json.loads(text)  # raises if the text is not well-formed JSON
        path = out_dir / f"{family}.json"
        path.write_text(text)
        print(f"wrote {path} ({len(text)} bytes, {len(modules)} modules)")
