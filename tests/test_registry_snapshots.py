"""One snapshot test per registry entry: a one-node manifest per case line, lowered without torch
or cargo, and the emitted Rust compared with the block stored under the line.

The cases live in `tests/snapshots/<family>.txt`, one file per registry family module. A case
is one line of Python, the call, followed by the Rust it lowers to, indented by four spaces:

    torch.add(x, 2.5)
        let add = (x + 2.5)?;
    x.sum(-1, keepdim=True) -> (B, T, 1)
        let sum = x.sum_keepdim(D::Minus1)?;
        use: candle_core::D
    torch.mm(p, q) -> (T, 6)  given p = (T, 4), q = (4, 6)
        let matmul = p.matmul(q)?;
    nn.Linear(4, 3)(x) -> (B, T, 3)
        load: let linear: Linear = Linear::load(4, 3, vb.pp("linear"))?;
        let linear = self.linear.forward(x)?;
        use: candle_nn::Module, pycandle_runtime::Linear

Several calls that must emit the same Rust share one line, separated by ` | `: the spellings of
one op (`torch.exp(x) | x.exp() | x.exp_() | torch.exp_(x)`), so a new op is one line.

The call is a function (`torch.X`, `F.X` for `torch.nn.functional.X`, `torch.linalg.X`), a
method on an operand (`x.relu()` is `Tensor.relu`), an operator (`x + y` is `Tensor.__add__`,
`2 - x` is `Tensor.__rsub__`, `-x`, `abs(x)`, `x > 0`, `x @ w`, `x ** 2`, `x[1:, None]` is
`Tensor.__getitem__`), or a layer built and called: `nn.LSTM(4, 8, batch_first=True)(x)`.
Arguments are Python literals (numbers, strings, None, tuples, lists, slices, `...`, dtypes
such as `torch.float64`), operands, sizes taken from shapes (`x.shape[1]`, `x.size(0)`, and
`+ - * //` of them: the manifest's SymInt; `x.shape` and `x.size()` are tuples of them), and `pack(x, lens, batch_first=True)` for a
`pack_padded_sequence` node feeding a recurrent layer.

Operands are tensors with fixed metadata (`OPERANDS`); two trace cases give the dimensions `B`
and `T` different values (`CASE_DIMS`), so sizes that follow the input shape show as such.
`given name = <meta>, ...` declares or overrides operands for one case. `-> <meta>` declares
the node's output (the emitters read its dtype and shape); without it, the output is like the
first tensor operand. A meta is `f32(B, T, 4)` (also f64, f16, bf16, i64, i32, u8, u32, bool),
a bare shape `(B, T, 4)` (the dtype of the first tensor operand), a bare dtype `i64` (the shape
of the first tensor operand), or a tuple of metas for an op or layer returning several tensors
(`None` for a leaf that is None).

The block under a case lists, in order: `load:` the field the model struct loads for a layer,
`state:` the state it carries between chunks, the statements of `forward`, and `use:` the
imports beyond the ones every model has; or `unsupported:` (and `hint:`) for each problem
lowering reports. `PYCANDLE_UPDATE_SNAPSHOTS=1 pytest tests/test_registry_snapshots.py`
rewrites the blocks from the current code, keeping the case lines, their order and comments.
"""

from __future__ import annotations

import ast
import difflib
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pycandle import registry
from pycandle.lowering import lower
from pycandle.errors import UnsupportedError
from pycandle.manifest import (
    PACK, DType, Manifest, ModuleInfo, Node, Ref, SymInt, TensorMeta, leaves,
)
from pycandle.names import rust_ident

SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"
UPDATE = os.environ.get("PYCANDLE_UPDATE_SNAPSHOTS") == "1"
INDENT = "    "

# The two trace cases: the values the dimension names take in each.
CASE_DIMS = ({"B": 2, "T": 3}, {"B": 1, "T": 5})

# Operands every case may use, as metas (see the module docstring).
OPERANDS = {
    "x": "f32(B, T, 4)",  # (batch, time, features)
    "y": "f32(B, T, 4)",  # like x
    "v": "f32(4)",  # a vector that broadcasts against x
    "s": "f32()",  # a 0-d tensor
    "w": "f32(B, 4, 6)",  # a matrix product partner of x
    "i": "i64(B, T)",  # integer indices
    "m": "bool(B, T, 4)",  # a mask like x
    "c": "f32(B, 4, T)",  # channels first (N, C, L): convolutions, pooling, norms
    "im": "f32(B, 3, 6, T + 4)",  # images (N, C, H, W)
    "lens": "i64(B)",  # sequence lengths
}

_DTYPES = {"f32": "float32", "f64": "float64", "f16": "float16", "bf16": "bfloat16",
           "i64": "int64", "i32": "int32", "i16": "int16", "u8": "uint8", "u32": "uint32", "bool": "bool"}


class CaseError(Exception):
    """A case line that cannot be read: a mistake in the case file, not in PyCandle."""


# --- the one place that reads lowering's IR -------------------------------------------------------

_BASE_USES = {"candle_core::Result", "candle_core::Tensor", "candle_nn::VarBuilder"}
_USE = re.compile(r"^(?P<root>[\w:]+?)::(?:\{(?P<group>.*)\}|(?P<item>\w+))$")


def emitted(manifest: Manifest) -> list[str]:
    """The Rust a one-node manifest lowers to, as snapshot lines; or the problems reported.

    The only function here that knows the IR's shape (`ModelIR.fields`, `.state_fields`,
    `.stmts`, `.uses`): adapt it when the IR changes."""
    try:
        ir = lower(manifest)
    except UnsupportedError as e:
        lines = []
        for p in e.problems:
            lines += f"unsupported: {p.what}".splitlines()
            if p.hint:
                lines += f"hint: {p.hint}".splitlines()
        return lines
    lines = []
    for f in ir.fields:
        lines += f"load: let {f.name}: {f.rust_type} = {f.init};".splitlines()
    for name, rust_type, _module in ir.state_fields:
        lines.append(f"state: {name}: Option<{rust_type}>")
    for st in ir.stmts:
        lines += (f"let {st.pattern} = {st.expr};" if st.pattern else f"{st.expr};").splitlines()
    if not ir.stmts:
        lines.append(f"(no statement) returns {ir.return_expr}")
    uses = set()
    for u in ir.uses:  # `candle_core::{D, Tensor}` -> candle_core::D, candle_core::Tensor
        m = _USE.match(u)
        assert m, f"unexpected use path {u!r}"
        items = m["group"].split(",") if m["group"] is not None else [m["item"]]
        uses.update(f"{m['root']}::{i.strip()}" for i in items)
    extra = sorted(uses - _BASE_USES)
    if extra:
        lines.append("use: " + ", ".join(extra))
    return [line.rstrip() for line in lines]


# --- case files -----------------------------------------------------------------------------------


@dataclass
class Case:
    path: Path
    line: int  # 1-based number of the case line
    text: str
    expected: list[str] = field(default_factory=list)
    closed: bool = False  # a blank or comment line ended its block

    @property
    def family(self) -> str:
        return self.path.stem

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(SNAPSHOTS.parent.parent)}:{self.line}"


def parse_file(path: Path) -> list[Case]:
    cases: list[Case] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if "\t" in line:
            raise CaseError(f"{path}:{n}: a tab; indent expected Rust with four spaces")
        if line.startswith(INDENT):
            if not cases or cases[-1].closed:
                raise CaseError(f"{path}:{n}: an indented line that follows no case line")
            cases[-1].expected.append(line[len(INDENT):].rstrip())
        elif not line.strip() or line.startswith("#"):
            if cases:
                cases[-1].closed = True
        elif line.startswith(" "):
            raise CaseError(f"{path}:{n}: indent expected Rust by exactly four spaces")
        else:
            cases.append(Case(path, n, line.rstrip()))
    return cases


def rewrite_file(path: Path, blocks: dict[int, list[str]]) -> None:
    """Replace the blocks under the case lines numbered in `blocks`, keeping everything else."""
    out: list[str] = []
    skipping = False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if skipping and line.startswith(INDENT):
            continue
        skipping = False
        out.append(line)
        if n in blocks:
            out += [INDENT + b for b in blocks[n]]
            skipping = True
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


# --- metas ----------------------------------------------------------------------------------------


class _DType:
    def __init__(self, name: str):
        self.name = name

    def __call__(self, *dims: int) -> "_Meta":
        return _Meta(self.name, tuple(dims))


@dataclass(frozen=True)
class _Meta:
    dtype: str | None
    dims: tuple[int, ...] | None


def eval_meta(text: str, like: TensorMeta | None) -> Any:
    """A meta expression -> TensorMeta (or a nested tuple of them), in both trace cases."""
    per_case = []
    for dims in CASE_DIMS:
        ns = {k: _DType(v) for k, v in _DTYPES.items()} | dims
        try:
            per_case.append(eval(text, {"__builtins__": {}}, ns))  # noqa: S307 (test data)
        except Exception as e:
            raise CaseError(f"cannot read the meta {text!r}: {e}") from None
    return _merge(per_case, like, text)


def _merge(values: list[Any], like: TensorMeta | None, text: str) -> Any:
    v0 = values[0]
    if all(v is None for v in values):  # a None output leaf (MultiheadAttention's weights)
        return None
    if isinstance(v0, _DType):
        values = [_Meta(v.name, None) for v in values]
    elif isinstance(v0, tuple) and all(isinstance(d, int) for d in v0):
        values = [_Meta(None, v) for v in values]
    v0 = values[0]
    if isinstance(v0, _Meta):
        dtype = v0.dtype or (like.dtype if like else "float32")
        if v0.dims is None:
            if like is None:
                raise CaseError(f"meta {text!r}: a bare dtype needs a tensor operand")
            return TensorMeta(dtype, like.shapes)
        return TensorMeta(dtype, tuple(tuple(v.dims) for v in values))
    if isinstance(v0, tuple) and all(isinstance(v, tuple) and len(v) == len(v0) for v in values):
        return tuple(_merge([v[k] for v in values], like, text) for k in range(len(v0)))
    raise CaseError(f"{text!r} is not a tensor meta")


# --- layers: constructor signatures and the attributes `record` reads -----------------------------

_CONV = "in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, " \
        "bias=True, padding_mode='zeros'"
_TRANSPOSED = "in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, " \
              "groups=1, bias=True, dilation=1, padding_mode='zeros'"
_SEQ = "input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0, " \
       "bidirectional=False"
_MAXPOOL = "kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False"
_AVGPOOL = "kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True"
_BATCHNORM = "num_features, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True"
_INSTANCENORM = "num_features, eps=1e-05, momentum=0.1, affine=False, track_running_stats=False"
LAYER_SIGNATURES = {
    "ReLU": "inplace=False", "Tanh": "", "Sigmoid": "", "GELU": "approximate='none'",
    "SiLU": "inplace=False", "Mish": "inplace=False",
    "LeakyReLU": "negative_slope=0.01, inplace=False", "ELU": "alpha=1.0, inplace=False",
    "Softplus": "beta=1.0, threshold=20.0",
    "Hardtanh": "min_val=-1.0, max_val=1.0, inplace=False", "ReLU6": "inplace=False",
    "Softmax": "dim=None", "LogSoftmax": "dim=None",
    "Flatten": "start_dim=1, end_dim=-1", "Unflatten": "dim, unflattened_size",
    "Conv1d": _CONV, "Conv2d": _CONV,
    "ConvTranspose1d": _TRANSPOSED, "ConvTranspose2d": _TRANSPOSED,
    "Embedding": "num_embeddings, embedding_dim, padding_idx=None, max_norm=None, norm_type=2.0, "
                 "scale_grad_by_freq=False, sparse=False",
    "Dropout": "p=0.5, inplace=False", "Identity": "",
    "Linear": "in_features, out_features, bias=True",
    "LayerNorm": "normalized_shape, eps=1e-05, elementwise_affine=True, bias=True",
    "GroupNorm": "num_groups, num_channels, eps=1e-05, affine=True",
    "BatchNorm1d": _BATCHNORM, "BatchNorm2d": _BATCHNORM,
    "MaxPool1d": _MAXPOOL, "MaxPool2d": _MAXPOOL,
    "AvgPool1d": _AVGPOOL, "AvgPool2d": _AVGPOOL + ", divisor_override=None",
    "AdaptiveAvgPool1d": "output_size",
    "LSTM": _SEQ + ", proj_size=0", "GRU": _SEQ,
    "RNN": "input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True, "
           "batch_first=False, dropout=0.0, bidirectional=False",
    "LSTMCell": "input_size, hidden_size, bias=True",
    "GRUCell": "input_size, hidden_size, bias=True",
    "RNNCell": "input_size, hidden_size, bias=True, nonlinearity='tanh'",
    "MultiheadAttention": "embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, "
                          "add_zero_attn=False, kdim=None, vdim=None, batch_first=False",
    "PReLU": "num_parameters=1, init=0.25", "GLU": "dim=-1",
    "Hardswish": "inplace=False", "Hardsigmoid": "inplace=False",
    "InstanceNorm1d": _INSTANCENORM, "InstanceNorm2d": _INSTANCENORM,
    "RMSNorm": "normalized_shape, eps=None, elementwise_affine=True",
    "AdaptiveAvgPool2d": "output_size",
    "Upsample": "size=None, scale_factor=None, mode='nearest', align_corners=None, "
                "recompute_scale_factor=None",
    "UpsamplingNearest2d": "size=None, scale_factor=None",
    "UpsamplingBilinear2d": "size=None, scale_factor=None",
    "Unfold": "kernel_size, dilation=1, padding=0, stride=1",
    "Fold": "output_size, kernel_size, dilation=1, padding=0, stride=1",
}
for _n in (1, 2, 3):
    LAYER_SIGNATURES |= {f"ConstantPad{_n}d": "padding, value", f"ZeroPad{_n}d": "padding",
                         f"ReflectionPad{_n}d": "padding", f"ReplicationPad{_n}d": "padding",
                         f"CircularPad{_n}d": "padding"}


def _bind_signature(sig: str, args: tuple, kwargs: dict[str, Any], what: str) -> dict[str, Any]:
    import inspect

    scope: dict[str, Any] = {}
    exec(f"def f({sig}): pass", scope)  # noqa: S102 (the table above)
    try:
        bound = inspect.signature(scope["f"]).bind(*args, **kwargs)
    except TypeError as e:
        raise CaseError(f"{what}: {e}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def _ntuple(v: Any, n: int) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def layer_attributes(short: str, a: dict[str, Any]) -> dict[str, Any]:
    """The module's attributes as PyTorch's constructor stores them."""
    a = dict(a)
    if short in ("Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d"):
        n = 2 if short.endswith("2d") else 1
        for k in ("kernel_size", "stride", "dilation", "output_padding"):
            if k in a:
                a[k] = _ntuple(a[k], n)
        if not isinstance(a["padding"], str):
            a["padding"] = _ntuple(a["padding"], n)
    if short in ("Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d", "Linear"):
        a["bias"] = True if a["bias"] else None  # the parameter, or None
    if short in ("LayerNorm", "RMSNorm"):
        ns = a["normalized_shape"]
        a["normalized_shape"] = (ns,) if isinstance(ns, int) else tuple(ns)
        if short == "LayerNorm":
            a["bias"] = True if a["bias"] and a["elementwise_affine"] else None
    if short in ("MaxPool1d", "MaxPool2d", "AvgPool2d") and a["stride"] is None:
        a["stride"] = a["kernel_size"]
    if short == "AvgPool1d":
        a["stride"] = _ntuple(a["kernel_size"] if a["stride"] is None else a["stride"], 1)
        a["kernel_size"], a["padding"] = _ntuple(a["kernel_size"], 1), _ntuple(a["padding"], 1)
    if short == "MultiheadAttention":
        a["kdim"] = a["kdim"] or a["embed_dim"]
        a["vdim"] = a["vdim"] or a["embed_dim"]
        a["in_proj_bias"] = True if a["bias"] else None
        a["bias_k"] = a["bias_v"] = True if a["add_bias_kv"] else None
    if short[-5:-2] == "Pad":  # ConstantPad1d, ZeroPad2d, ...: (left, right) per dimension
        a["padding"] = _ntuple(a["padding"], 2 * int(short[-2]))
        if short.startswith("ZeroPad"):
            a["value"] = 0.0
    if short.startswith("Upsampl"):  # as nn.Upsample stores them
        if short != "Upsample":
            a |= {"mode": "nearest" if "Nearest" in short else "bilinear",
                  "align_corners": True if "Bilinear" in short else None,
                  "recompute_scale_factor": None}
        s = a["scale_factor"]
        a["scale_factor"] = tuple(float(v) for v in s) if isinstance(s, tuple) else \
            None if s is None else float(s)
    if short in ("LSTM", "GRU"):
        a["mode"] = short
    if short == "RNN":
        a["mode"] = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}.get(a["nonlinearity"],
                                                                  a["nonlinearity"])
    return a


def _plain(v: Any) -> Any:
    """As `record` writes a config value: tuples become lists."""
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v


def layer_parameters(short: str, a: dict[str, Any]) -> tuple[dict, dict]:
    """Plausible parameter and buffer shapes (lowering reads only their dtype)."""

    def p(*shape: int, dtype: str = "float32") -> dict[str, Any]:
        return {"shape": list(shape), "dtype": dtype}

    params: dict[str, Any] = {}
    buffers: dict[str, Any] = {}
    if short == "Linear":
        params["weight"] = p(a["out_features"], a["in_features"])
        if a["bias"]:
            params["bias"] = p(a["out_features"])
    elif short in ("Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d"):
        cin, cout, g = a["in_channels"], a["out_channels"], a["groups"]
        kernel = _ntuple(a["kernel_size"], 2 if short.endswith("2d") else 1)
        params["weight"] = p(cin, cout // g, *kernel) if short.startswith("ConvTranspose") else \
            p(cout, cin // g, *kernel)
        if a["bias"]:
            params["bias"] = p(cout)
    elif short == "MultiheadAttention":
        e = a["embed_dim"]
        if a["kdim"] == a["vdim"] == e:
            params["in_proj_weight"] = p(3 * e, e)
        else:
            params |= {"q_proj_weight": p(e, e), "k_proj_weight": p(e, a["kdim"]),
                       "v_proj_weight": p(e, a["vdim"])}
        if a["bias"]:
            params["in_proj_bias"] = p(3 * e)
        if a["add_bias_kv"]:
            params["bias_k"] = params["bias_v"] = p(1, 1, e)
    elif short == "Embedding":
        params["weight"] = p(a["num_embeddings"], a["embedding_dim"])
    elif short == "PReLU":
        params["weight"] = p(a["num_parameters"])
    elif short == "LayerNorm":
        if a["elementwise_affine"]:
            params["weight"] = p(*a["normalized_shape"])
            if a["bias"]:
                params["bias"] = p(*a["normalized_shape"])
    elif short == "RMSNorm":
        if a["elementwise_affine"]:
            params["weight"] = p(*a["normalized_shape"])
    elif short == "GroupNorm":
        if a["affine"]:
            params["weight"] = params["bias"] = p(a["num_channels"])
    elif short.startswith(("BatchNorm", "InstanceNorm")):
        c = a["num_features"]
        if a["affine"]:
            params["weight"] = params["bias"] = p(c)
        if a["track_running_stats"]:
            buffers = {"running_mean": p(c), "running_var": p(c),
                       "num_batches_tracked": p(dtype="int64")}
    elif short in ("LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"):
        gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[short.removesuffix("Cell")]
        h, proj = a["hidden_size"], a.get("proj_size", 0)
        out = proj or h
        if short.endswith("Cell"):
            params = {"weight_ih": p(gates * h, a["input_size"]), "weight_hh": p(gates * h, h)}
            if a["bias"]:
                params |= {"bias_ih": p(gates * h), "bias_hh": p(gates * h)}
            return params, buffers
        dirs = 2 if a["bidirectional"] else 1
        for k in range(a["num_layers"]):
            for sfx in ("", "_reverse")[:dirs]:
                isz = a["input_size"] if k == 0 else out * dirs
                params[f"weight_ih_l{k}{sfx}"] = p(gates * h, isz)
                params[f"weight_hh_l{k}{sfx}"] = p(gates * h, out)
                if a["bias"]:
                    params[f"bias_ih_l{k}{sfx}"] = params[f"bias_hh_l{k}{sfx}"] = p(gates * h)
                if proj:
                    params[f"weight_hr_l{k}{sfx}"] = p(proj, h)
    return params, buffers


# --- case line -> one-node manifest ---------------------------------------------------------------

_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "truediv",
           ast.MatMult: "matmul", ast.Pow: "pow", ast.FloorDiv: "floordiv", ast.Mod: "mod"}
_COMPARE = {ast.Gt: "gt", ast.Lt: "lt", ast.GtE: "ge", ast.LtE: "le", ast.Eq: "eq",
            ast.NotEq: "ne"}
_SYM_OPS = {ast.Add: "add", ast.Mult: "mul", ast.FloorDiv: "floordiv"}
_PREFIXES = {"F": "torch.nn.functional", "nn": "torch.nn"}


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(_PREFIXES.get(node.id, node.id))
    return ".".join(reversed(parts))


@dataclass
class Built:
    manifest: Manifest
    target: str  # the registry spelling or layer type the case exercises


def split_case(text: str) -> tuple[list[str], str | None, str | None]:
    """A case line -> its calls (alternatives separated by ` | `), output meta and `given`."""
    calls, given, out = text, None, None
    if " given " in calls:
        calls, given = calls.rsplit(" given ", 1)
    if " -> " in calls:
        calls, out = calls.rsplit(" -> ", 1)
    return ([c.strip() for c in calls.split(" | ")], out and out.strip(),
            given and given.strip())


class _CaseBuilder:
    def __init__(self, call: str, out: str | None, given: str | None):
        self.call, self.out_text = call, out
        self.metas = {k: eval_meta(v, None) for k, v in OPERANDS.items()}
        if given:
            try:
                decls = ast.parse(f"dict({given})", mode="eval").body.keywords
            except SyntaxError as e:
                raise CaseError(f"cannot read `given {given}`: {e}") from None
            for kw in decls:
                self.metas[kw.arg] = eval_meta(ast.unparse(kw.value), None)
        self.inputs: list[str] = []  # operands in order of first use
        self.extra_nodes: list[Node] = []  # pack_padded_sequence before the call

    def fail(self, what: str) -> CaseError:
        return CaseError(f"{self.call!r}: {what}")

    # values

    def operand(self, name: str) -> Ref:
        if name not in self.inputs:
            self.inputs.append(name)
        return Ref(name)

    def is_operand(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Name) and node.id in self.metas

    def value(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if self.is_operand(node):
            return self.operand(node.id)
        if isinstance(node, ast.Name) and node.id in ("inf", "nan"):
            return float(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self.value(node.operand)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return -v if isinstance(node.op, ast.USub) else v
            raise self.fail(f"cannot negate {ast.unparse(node.operand)} in an argument")
        if isinstance(node, ast.Tuple):
            return tuple(self.value(e) for e in node.elts)
        if isinstance(node, ast.List):
            return [self.value(e) for e in node.elts]
        if isinstance(node, ast.Slice):
            return slice(*(None if p is None else self.value(p)
                           for p in (node.lower, node.upper, node.step)))
        dotted = _dotted(node)
        if dotted and dotted.startswith("torch.") and dotted[6:] in _TORCH_DTYPES:
            return DType(_TORCH_DTYPES[dotted[6:]])
        if isinstance(node, ast.Attribute) and node.attr == "shape" \
                and self.is_operand(node.value):  # the whole shape: a tuple of sizes
            return tuple(self.dim(node.value.id, d) for d in range(self.metas[node.value.id].rank))
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "shape" and self.is_operand(node.value.value):
            return self.dim(node.value.value.id, self.value(node.slice))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "size" and self.is_operand(node.func.value):
            name = node.func.value.id
            if not node.args:
                return tuple(self.dim(name, d) for d in range(self.metas[name].rank))
            return self.dim(name, self.value(node.args[0]))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "pack":
            return self.pack(node)
        if isinstance(node, ast.BinOp):
            a, b = self.value(node.left), self.value(node.right)
            if isinstance(a, SymInt) or isinstance(b, SymInt):
                if isinstance(node.op, ast.Sub) and isinstance(b, int):
                    return SymInt("add", a, -b)
                if type(node.op) in _SYM_OPS:
                    return SymInt(_SYM_OPS[type(node.op)], a, b)
            raise self.fail(f"cannot read the size expression {ast.unparse(node)}")
        if isinstance(node, ast.Name):
            raise self.fail(f"{node.id} is not an operand (see OPERANDS, or declare it with "
                            "`given`)")
        raise self.fail(f"cannot read the argument {ast.unparse(node)}")

    def dim(self, name: str, d: Any) -> SymInt:
        rank = self.metas[name].rank
        if not isinstance(d, int) or not -rank <= d < rank:
            raise self.fail(f"dimension {d!r} of {name}")
        return SymInt("dim", self.operand(name), d % rank)

    def pack(self, node: ast.Call) -> Ref:
        args = tuple(self.value(a) for a in node.args)
        kwargs = {kw.arg: self.value(kw.value) for kw in node.keywords}
        x = args[0] if args else kwargs.get("input")
        meta = self.metas[x.node]
        self.extra_nodes.append(Node("packed", "call_function", PACK, args, kwargs, out=meta))
        return Ref("packed")

    def meta_of(self, v: Any) -> TensorMeta | None:
        for _, leaf in leaves(v):
            if isinstance(leaf, Ref):
                return self.metas[leaf.node] if leaf.node in self.metas else \
                    next(n.out for n in self.extra_nodes if n.name == leaf.node)
        return None

    # the call

    def build(self) -> Built:
        try:
            tree = ast.parse(self.call, mode="eval").body
        except SyntaxError as e:
            raise self.fail(f"not a Python expression ({e.msg})") from None
        module: tuple[str, ModuleInfo] | None = None
        if isinstance(tree, ast.Subscript) and self.is_operand(tree.value):
            target = "Tensor.__getitem__"
            args, kwargs = (self.operand(tree.value.id), self.value(tree.slice)), {}
        elif isinstance(tree, ast.BinOp) and type(tree.op) in _BINOPS:
            name = _BINOPS[type(tree.op)]
            left, right = self.value(tree.left), self.value(tree.right)
            if isinstance(left, Ref):
                target, args = f"Tensor.__{name}__", (left, right)
            else:
                target, args = f"Tensor.__r{name}__", (right, left)
            kwargs = {}
        elif isinstance(tree, ast.UnaryOp) and isinstance(tree.op, ast.USub):
            target, args, kwargs = "Tensor.__neg__", (self.value(tree.operand),), {}
        elif isinstance(tree, ast.Attribute) and self.is_operand(tree.value):  # x.data
            target, args, kwargs = f"Tensor.{tree.attr}", (self.operand(tree.value.id),), {}
        elif isinstance(tree, ast.Compare) and len(tree.ops) == 1:
            target = f"Tensor.__{_COMPARE[type(tree.ops[0])]}__"
            args, kwargs = (self.value(tree.left), self.value(tree.comparators[0])), {}
        elif isinstance(tree, ast.Call):
            args = tuple(self.value(a) for a in tree.args)
            kwargs = {kw.arg: self.value(kw.value) for kw in tree.keywords}
            func = tree.func
            if isinstance(func, ast.Call):  # nn.X(...)(...)
                target = _dotted(func.func) or ""
                module = self.module(target, func)
            elif isinstance(func, ast.Attribute) and self.is_operand(func.value):
                target = f"Tensor.{func.attr}"
                args = (self.operand(func.value.id),) + args
            elif isinstance(func, ast.Name) and func.id == "abs":
                target = "Tensor.__abs__"
            else:
                target = _dotted(func) or ""
        else:
            raise self.fail("expected a call, an operator or an index")
        return Built(self.manifest(target, args, kwargs, module), target)

    def module(self, target: str, ctor: ast.Call) -> tuple[str, ModuleInfo]:
        short = target.rsplit(".", 1)[-1]
        layer = registry.layer_for(target)
        if short not in LAYER_SIGNATURES or layer is None:
            raise self.fail(f"no constructor signature for {target} (add it to LAYER_SIGNATURES)")
        args = tuple(self.value(a) for a in ctor.args)
        kwargs = {kw.arg: self.value(kw.value) for kw in ctor.keywords}
        attrs = layer_attributes(short, _bind_signature(LAYER_SIGNATURES[short], args, kwargs,
                                                        target))
        config = {k: _plain(attrs[k]) for k in layer.config_attrs}
        params, buffers = layer_parameters(short, attrs)
        return short.lower(), ModuleInfo(target, config, params, buffers)

    def manifest(self, target: str, args: tuple, kwargs: dict[str, Any],
                 module: tuple[str, ModuleInfo] | None) -> Manifest:
        like = self.meta_of((args, tuple(kwargs.values())))
        out = eval_meta(self.out_text, like) if self.out_text else like
        if out is None:
            raise self.fail("no tensor operand: declare the output with `-> <meta>`")
        if not self.inputs:  # creation ops: the model still has an input (its device)
            self.operand("x")
        if module:
            name = module[0]
        else:
            op = registry.op_for(target)
            name = rust_ident(op.name if op else target.rsplit(".", 1)[-1])
        while name in self.inputs:
            name += "_1"
        nodes = [Node(n, "input", n, out=self.metas[n]) for n in self.inputs]
        nodes += self.extra_nodes
        nodes.append(Node(name, "call_module" if module else "call_function",
                          name if module else target, args, kwargs, out=out,
                          source=f"case:{self.call}"))
        output = _refs(out, name, ())
        modules = {"": ModuleInfo("snapshot.Case", {}, {}, {})}
        if module:
            modules[name] = module[1]
        return Manifest(
            name="case", factory="snapshot:Case", seed=0, atol=1e-5, rtol=1e-4,
            versions={"pycandle": "0.1.0", "torch": "2.15.0"}, content_hash="0" * 64,
            inputs=tuple(self.inputs),
            cases=tuple({"inputs": {n: {"shape": list(self.metas[n].shapes[c]),
                                        "dtype": self.metas[n].dtype} for n in self.inputs}}
                        for c in range(len(CASE_DIMS))),
            modules=modules, nodes=tuple(nodes), output=output)


_TORCH_DTYPES = {"float32": "float32", "float": "float32", "float64": "float64",
                 "double": "float64", "float16": "float16", "half": "float16",
                 "bfloat16": "bfloat16", "int64": "int64", "long": "int64", "int32": "int32",
                 "int": "int32", "int16": "int16", "uint8": "uint8", "bool": "bool"}


def _refs(out: Any, node: str, path: tuple[int, ...]) -> Any:
    if isinstance(out, TensorMeta):
        return Ref(node, path)
    # the model returns the tensors; a None leaf stays inside (forward() cannot return it)
    return tuple(_refs(o, node, path + (k,)) for k, o in enumerate(out) if o is not None)


def build_case(text: str) -> list[Built]:
    """One one-node manifest per call of the case line (they share its output and `given`)."""
    calls, out, given = split_case(text)
    return [_CaseBuilder(call, out, given).build() for call in calls]


# --- the tests ------------------------------------------------------------------------------------

CASES = [case for path in sorted(SNAPSHOTS.glob("*.txt")) for case in parse_file(path)]


def _targets(case: Case) -> list[str]:
    try:
        return [b.target for b in build_case(case.text)]
    except CaseError:
        return ["?"]


_TARGETS = {id(case): _targets(case) for case in CASES}


def _case_id(case: Case) -> str:
    targets = _TARGETS[id(case)]
    more = f"+{len(targets) - 1}" if len(targets) > 1 else ""
    return f"{case.family}:{case.line}:{targets[0]}{more}"
_UPDATES: dict[Path, dict[int, list[str]]] = {}


@pytest.fixture(scope="module", autouse=True)
def _write_updates():
    yield
    for path, blocks in _UPDATES.items():
        rewrite_file(path, blocks)
    _UPDATES.clear()


@pytest.mark.parametrize(
    "case", CASES, ids=[_case_id(c) for c in CASES])
def test_snapshot(case: Case) -> None:
    try:
        built, problem = build_case(case.text), None
    except CaseError as e:
        built, problem = [], f"{case.where}: {e}"
    if problem:
        pytest.fail(problem, pytrace=False)
    calls = split_case(case.text)[0]
    first = emitted(built[0].manifest)
    for call, b in zip(calls[1:], built[1:]):  # the spellings of one case agree
        other = emitted(b.manifest)
        if other != first:
            diff = "\n".join(difflib.unified_diff(first, other, calls[0], call, lineterm=""))
            pytest.fail(f"{case.where}: `{call}` emits other Rust than `{calls[0]}` on the same "
                        f"line (give it a line of its own):\n{diff}", pytrace=False)
    if first == case.expected:
        return
    if UPDATE:
        _UPDATES.setdefault(case.path, {})[case.line] = first
        return
    diff = "\n".join(difflib.unified_diff(case.expected, first, "stored", "emitted",
                                          lineterm=""))
    pytest.fail(f"{case.where}: `{calls[0]}` emits other Rust than its snapshot "
                f"(PYCANDLE_UPDATE_SNAPSHOTS=1 rewrites it):\n{diff}", pytrace=False)


def test_every_registry_entry_has_a_case() -> None:
    targets = {t for ts in _TARGETS.values() for t in ts}
    missing = sorted(set(registry.OPS) - targets) + sorted(set(registry.LAYERS) - targets)
    assert not missing, (f"{len(missing)} registry entries have no case line in "
                         f"tests/snapshots/: {', '.join(missing)}")


def test_case_lines_are_readable() -> None:
    bad = []
    for case in CASES:
        try:
            build_case(case.text)
        except CaseError as e:
            bad.append(f"{case.where}: {e}")
    assert not bad, "\n".join(bad)


def test_lowering_the_cases_imports_no_torch() -> None:
    """This file, the registry and lowering run without torch (the codegen side's promise)."""
    probe = (
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        f"spec = importlib.util.spec_from_file_location('snapshots_probe', {__file__!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "sys.modules['snapshots_probe'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "for case in mod.CASES:\n"
        "    try:\n"
        "        for built in mod.build_case(case.text):\n"
        "            mod.emitted(built.manifest)\n"
        "    except mod.CaseError:\n"
        "        pass\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded\n"
        "print(len(mod.CASES))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == len(CASES)


def test_update_rewrites_only_the_blocks(tmp_path: Path) -> None:
    """PYCANDLE_UPDATE_SNAPSHOTS keeps case lines, comments and order; only blocks change."""
    path = tmp_path / "family.txt"
    path.write_text("# head\n\ntorch.relu(x)\n    stale line\n    another\n# between\n"
                    "x.tanh()\nx.exp()\n    kept\n", encoding="utf-8")
    cases = parse_file(path)
    assert [(c.line, c.text, c.expected) for c in cases] == [
        (3, "torch.relu(x)", ["stale line", "another"]), (7, "x.tanh()", []),
        (8, "x.exp()", ["kept"])]
    rewrite_file(path, {3: emitted(build_case("torch.relu(x)")[0].manifest),
                        7: emitted(build_case("x.tanh()")[0].manifest)})
    assert path.read_text(encoding="utf-8") == (
        "# head\n\ntorch.relu(x)\n    let relu = pycandle_runtime::ops::relu(x)?;\n# between\n"
        "x.tanh()\n    let tanh = x.tanh()?;\nx.exp()\n    kept\n")
