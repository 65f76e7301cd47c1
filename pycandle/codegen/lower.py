"""Manifest -> a model IR holding every decision; the templates only lay it out.

This is also the support check: `record` lowers each manifest before writing anything, so an
unsupported layer, op or argument is reported (with its source line) before any file changes.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

from pycandle import registry
from pycandle.codegen.structs import FieldDecl, LeafField, StructDef, build_tree
from pycandle.errors import Problem, UnsupportedError
from pycandle.manifest import (
    PACK, PAD, Manifest, Node, Param, Ref, SymInt, TensorMeta, golden_input_key, golden_node_key,
    golden_output_key, leaves, path_key, refs_in,
)
from pycandle.registry import Dim, Packed, T, Unsupported
from pycandle.symbolic import evaluate

_FIELD_OPEN, _FIELD_CLOSE = "\u27e6", "\u27e7"  # around a module name awaiting its Rust path
_FIELD_RE = re.compile(f"{_FIELD_OPEN}([^{_FIELD_CLOSE}]*){_FIELD_CLOSE}")

RUST_DTYPES = {"float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16",
               "int64": "I64", "uint8": "U8", "uint32": "U32"}


@dataclass(frozen=True)
class Stmt:
    pattern: str
    expr: str
    comment: str | None = None


@dataclass(frozen=True)
class Check:
    label: str  # output name shown in reports
    var: str
    key: str  # golden key without the case prefix


@dataclass(frozen=True)
class LayerTest:
    node: str
    module: str
    torch_type: str
    inputs: list[tuple[str, str]]  # (variable, golden key without case prefix)
    stmt: Stmt
    checks: list[Check]
    stream_lines: list[str] = field(default_factory=list)  # the chunked-run check, if any
    prelude: list[str] = field(default_factory=list)  # statements before the call


@dataclass(frozen=True)
class Arg:
    name: str
    shape: str


@dataclass
class ModelIR:
    name: str  # Rust module name
    struct: str
    factory: str
    doc_lines: list[str]
    uses: list[str]
    fields: list[FieldDecl]
    structs: list[StructDef]  # nested ones: containers and user modules
    args: list[Arg]
    stmts: list[Stmt]
    return_type: str
    return_expr: str
    layer_tests: list[LayerTest]
    model_checks: list[Check]
    input_keys: list[tuple[str, str]]  # (forward arg, golden key suffix)
    out_pattern: str  # binds the model's outputs to the `model_checks` variables
    state_fields: list[tuple[str, str, str]]  # carried recurrent state: (name, type, module)
    output_alias: tuple[str, str] | None  # (alias, tuple type) for a long tuple of outputs
    num_cases: int
    atol: float
    rtol: float
    dtype: str
    test_uses: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or "Model"


def _shape_names(manifest: Manifest) -> dict[tuple[int, ...], str]:
    """Names for the dimensions that vary between trace cases, for shape comments."""
    names: dict[tuple[int, ...], str] = {}
    for arg in manifest.inputs:
        meta = manifest.node(arg).out
        for d in range(meta.rank):
            sizes = tuple(s[d] for s in meta.shapes)
            if len(set(sizes)) > 1 and sizes not in names:
                names[sizes] = f"{arg}.dim({d})" if len(manifest.inputs) > 1 else f"d{d}"
    return names


def shape_comment(meta: Any, names: dict[tuple[int, ...], str]) -> str | None:
    if not isinstance(meta, TensorMeta):
        return None
    dims = []
    for d in range(meta.rank):
        sizes = tuple(s[d] for s in meta.shapes)
        if len(set(sizes)) == 1:
            dims.append(str(sizes[0]))
        else:
            dims.append(names.get(sizes, "_"))
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def live_nodes(manifest: Manifest) -> list[Node]:
    """Nodes that contribute to the output, in graph order (value checks and the like drop out)."""
    needed: set[str] = set()
    work = [r.node for r in refs_in(manifest.output)]
    by_name = {n.name: n for n in manifest.nodes}
    while work:
        name = work.pop()
        if name in needed:
            continue
        needed.add(name)
        node = by_name[name]
        work += [r.node for r in refs_in((node.args, node.kwargs))]
    return [n for n in manifest.nodes if n.name in needed]


def _uses_of(nodes: list[Node], output: Any) -> dict[tuple[str, tuple[int, ...]], int]:
    counts: dict[tuple[str, tuple[int, ...]], int] = {}
    for node in nodes:
        for v in refs_in((node.args, node.kwargs)):
            counts[(v.node, v.path)] = counts.get((v.node, v.path), 0) + 1
    for _, v in leaves(output):
        if isinstance(v, Ref):
            counts[(v.node, v.path)] = counts.get((v.node, v.path), 0) + 1
    return counts


def _out_names(layer_outputs: Any, out: Any, base: str) -> Any:
    """Variable names for a node's output structure, following the layer's output names."""
    if isinstance(out, TensorMeta):
        if isinstance(layer_outputs, str):
            return base if layer_outputs == "out" else f"{base}_{layer_outputs}"
        return base
    if isinstance(out, (tuple, list)):
        names = layer_outputs if isinstance(layer_outputs, (tuple, list)) \
            and len(layer_outputs) == len(out) else [str(i) for i in range(len(out))]
        return tuple(_out_names(n, o, base) for n, o in zip(names, out))
    return None


def _pattern(names: Any, used: set[tuple[int, ...]], path: tuple[int, ...] = ()) -> str:
    if isinstance(names, str):
        return names if path in used else f"_{names}"
    return "(" + ", ".join(_pattern(n, used, path + (i,)) for i, n in enumerate(names)) + ")"


_USE_RE = re.compile(r"^([\w:]+?)::(\{(.*)\}|(\w+))$")


def merge_uses(paths: set[str]) -> list[str]:
    grouped: dict[str, set[str]] = {}
    for p in paths:
        m = _USE_RE.match(p)
        if not m:
            raise ValueError(f"bad use path {p}")
        items = m.group(3).split(",") if m.group(3) is not None else [m.group(4)]
        grouped.setdefault(m.group(1), set()).update(i.strip() for i in items if i.strip())
    out = []
    for root in sorted(grouped):
        items = sorted(grouped[root], key=lambda s: (s != "self", s))
        out.append(f"{root}::{items[0]}" if len(items) == 1 else f"{root}::{{{', '.join(items)}}}")
    return out


class _Lowering:
    def __init__(self, manifest: Manifest):
        self.m = manifest
        self.problems: list[Problem] = []
        self.vars: dict[tuple[str, tuple[int, ...]], T] = {}
        self.fields: dict[str, LeafField] = {}  # by qualified module name
        self.uses: set[str] = {"candle_core::{Result, Tensor}", "candle_nn::VarBuilder"}
        self.test_uses: set[str] = set()
        self.stmts: list[Stmt] = []
        self.layer_tests: list[LayerTest] = []
        self.state_fields: list[tuple[str, str, str]] = []  # (node, Rust type, module)
        # outputs of recurrent layers run on a packed batch: (the Packed input, layer layout)
        self.packed_outputs: dict[tuple[str, tuple[int, ...]], tuple[Packed, bool]] = {}
        self.shape_names = _shape_names(manifest)

    def problem(self, node: Node, what: str, hint: str | None = None) -> None:
        module = node.target if node.op == "call_module" else None
        self.problems.append(Problem(what, node.source, module, hint))

    def operand(self, value: Any) -> Any:
        if isinstance(value, Ref):
            t = self.vars.get((value.node, value.path))
            if t is None:
                raise Unsupported(f"reference to an unavailable value {value.node}{list(value.path)}")
            return t
        if isinstance(value, Param):
            raise Unsupported(f"direct use of parameter '{value.name}' in forward()",
                              hint="wrap the computation in a supported layer")
        if isinstance(value, tuple):
            return tuple(self.operand(v) for v in value)
        if isinstance(value, list):
            return [self.operand(v) for v in value]
        if isinstance(value, slice):
            return slice(self.operand(value.start), self.operand(value.stop),
                         self.operand(value.step))
        if isinstance(value, SymInt):
            return Dim(self.usize(value), self.sym_values(value))
        return value

    def usize(self, sym: Any, context: int = 0) -> str:
        """A symbolic integer as a Rust usize expression, parenthesised for an operator of
        precedence `context` (1: `+ -`, 2: `* /`; one more for a right-hand operand)."""
        if isinstance(sym, int):
            return str(sym)
        if sym.kind == "dim":
            return self.operand(sym.a).dim(sym.b)
        kind, b = sym.kind, sym.b
        if kind == "add" and isinstance(b, int) and b < 0:
            kind, b = "sub", -b
        prec = 1 if kind in ("add", "sub") else 2
        op = {"add": "+", "sub": "-", "mul": "*", "floordiv": "/"}[kind]
        # `a - (b + c)`, `a / (b * c)`: the right operand binds tighter than its operator
        right = prec + 1 if kind in ("sub", "floordiv") else prec
        text = f"{self.usize(sym.a, prec)} {op} {self.usize(b, right)}"
        return f"({text})" if prec < context else text

    def sym_values(self, sym: SymInt) -> tuple[int, ...]:
        return tuple(
            evaluate(sym, lambda ref, d, c=case: self.m.meta(ref).shapes[c][d])
            for case in range(self.m.num_cases))

    def run(self) -> None:
        live = live_nodes(self.m)
        used = _uses_of(live, self.m.output)
        for node in live:
            try:
                self.lower_node(node, used)
            except Unsupported as e:
                self.problem(node, e.what, e.hint)

    def lower_node(self, node: Node, used: dict[tuple[str, tuple[int, ...]], int]) -> None:
        if node.op == "input":
            self.vars[(node.name, ())] = T(node.name, node.out, is_ref=True)
            return
        if node.op == "constant":
            raise Unsupported("a tensor created outside the traced graph (a global or captured "
                              "tensor) is used in forward()",
                              hint="register it as a buffer of the module")
        if node.op == "call_module":
            self.lower_module(node, used)
        elif node.op == "call_function":
            self.lower_function(node)
        else:
            raise Unsupported(f"unknown node kind '{node.op}'")

    def _bind(self, node: Node, names: Any) -> None:
        for path, name in leaves(names):
            meta = _at(node.out, path)
            if not isinstance(meta, TensorMeta):
                continue
            self.vars[(node.name, path)] = T(name, meta)

    def lower_module(self, node: Node, used: dict[tuple[str, tuple[int, ...]], int]) -> None:
        info = self.m.modules.get(node.target)
        if info is None:
            raise Unsupported(f"module '{node.target}' missing from the manifest")
        layer = registry.layer_for(info.type)
        if layer is None:
            supported = ", ".join(sorted(l.short for l in registry.LAYERS.values()))
            raise Unsupported(f"layer type {info.type} is not supported",
                              hint=f"supported layers: {supported}")
        for p in layer.check(info.config):
            self.problem(node, f"{layer.short} option not supported: {p}")
        args = self.operand(node.args)
        kwargs = {k: self.operand(v) for k, v in node.kwargs.items()}
        if layer.passthrough:
            expr = layer.call(info.config, "", args, kwargs)
            src = next(t for _, t in leaves((args, tuple(kwargs.values()))) if isinstance(t, T))
            self.vars[(node.name, ())] = src
            return
        this = self.field_for(node.target, info, layer, "self")
        names = _out_names(layer.outputs, node.out, node.name)
        used_paths = {p for (n, p), c in used.items() if n == node.name and c}
        stream = layer.stream
        streaming = stream is not None and stream.blocker(info.config, args, kwargs) is None
        if streaming:
            # the call resumes from the carried state and leaves its final state there
            x = registry.one_tensor(args, kwargs, "input, hx=None")
            expr = stream.call(info.config, this, x, stream.resume(f"state.{node.name}"))
            used_paths |= set(stream.state_paths)
        else:
            expr = layer.call(info.config, this, args, kwargs)
        self.uses.update(layer.uses + layer.call_uses)
        self.stmts.append(Stmt(_pattern(names, used_paths), expr,
                               self.comment(node, names)))
        x_arg = next((v for _, v in leaves((args, tuple(kwargs.values())))
                      if isinstance(v, (T, Packed))), None)
        if isinstance(x_arg, Packed):
            self.packed_outputs[(node.name, (0,))] = (x_arg, bool(info.config.get("batch_first")))
        if streaming:
            finals = [f"{_at(names, p)}.clone()" for p in stream.state_paths]
            value = finals[0] if len(finals) == 1 else "(" + ", ".join(finals) + ")"
            self.stmts.append(Stmt("", f"state.{node.name} = Some({value})"))
            self.state_fields.append((node.name, stream.state_type, node.target))
        self._bind(node, names)
        self.layer_test(node, layer, info.config, self.field_for(node.target, info, layer, "model"),
                        names, stream if streaming else None)

    def comment(self, node: Node, names: Any) -> str | None:
        parts = []
        for path, name in leaves(names):
            c = shape_comment(_at(node.out, path), self.shape_names)
            if c:
                parts.append(c if isinstance(names, str) else f"{name}: {c}")
        return ", ".join(parts) or None

    def field_for(self, qual: str, info: Any, layer: registry.Layer, owner: str) -> str:
        """`owner` plus a placeholder for the path to the sublayer `qual` (filled in once
        every sublayer is known and the struct tree is built), or "" for a stateless layer."""
        if qual not in self.fields:
            built = layer.field(info.config)
            if built is None:
                return ""
            self.fields[qual] = LeafField(built.rust_type, built.init, info.type)
        return f"{owner}.{_FIELD_OPEN}{qual}{_FIELD_CLOSE}"

    def layer_test(self, node: Node, layer: registry.Layer, cfg: dict[str, Any],
                   this: str, names: Any, stream: registry.Stream | None) -> None:
        counter = iter(range(1 << 30))
        inputs: list[tuple[str, str]] = []

        prelude: list[str] = []

        def golden_operand(v: Any) -> Any:
            if isinstance(v, Ref) and self.m.node(v.node).target == PACK:
                # recorded as the padded batch, in the layer's layout, and the lengths
                i, j = next(counter), next(counter)
                for k in (i, j):
                    key = golden_node_key(0, node.name, "in", str(k)).split(".", 1)[1]
                    inputs.append((f"in{k}", key))
                prelude.append(f"let lengths = sequence_lengths(&in{j})?;")
                self.test_uses.add("pycandle_runtime::sequence_lengths")
                return Packed(T(f"in{i}", self.m.meta(v)), "lengths",
                              T(f"in{j}", self.m.meta(v)), bool(cfg.get("batch_first")))
            if isinstance(v, Ref):
                i = next(counter)
                var = f"in{i}"
                inputs.append((var, golden_node_key(0, node.name, "in", str(i)).split(".", 1)[1]))
                return T(var, self.m.meta(v))
            if isinstance(v, tuple):
                return tuple(golden_operand(x) for x in v)
            if isinstance(v, list):
                return [golden_operand(x) for x in v]
            return v

        # Same flattening order as the recorder: positional args, then kwargs by name.
        args = golden_operand(node.args)
        kw_sorted = {k: golden_operand(node.kwargs[k]) for k in sorted(node.kwargs)}
        expr = layer.call(cfg, this, args, kw_sorted)
        checks = []
        for path, name in leaves(names):
            if isinstance(_at(node.out, path), TensorMeta):
                label = name[len(node.name) + 1:] if name != node.name else path_key(path)
                key = golden_node_key(0, node.name, "out", path_key(path)).split(".", 1)[1]
                checks.append(Check(label or path_key(path), name, key))
        self.test_uses.update(layer.call_uses)
        stream_lines = _stream_test(node, cfg, this, args, names, stream) if stream else []
        self.layer_tests.append(LayerTest(node.name, node.target, layer.torch_type, inputs,
                                          Stmt(_pattern(names, {p for p, _ in leaves(names)}),
                                               expr), checks, stream_lines, prelude))

    def lower_packing(self, node: Node) -> None:
        """pack_padded_sequence: no computation, the padded batch and the lengths travel on;
        pad_packed_sequence: the recurrent layer already returned the padded batch."""
        if node.target == PACK:
            a = registry.bind("input, lengths, batch_first=False, enforce_sorted=True",
                              self.operand(node.args),
                              {k: self.operand(v) for k, v in node.kwargs.items()})
            x, lengths = a["input"], a["lengths"]
            if not isinstance(x, T) or not isinstance(lengths, T):
                raise Unsupported("pack_padded_sequence needs the padded batch and the lengths "
                                  "as tensors (pass lengths to forward() as a tensor)")
            var = f"{node.name}_lengths"
            self.stmts.append(Stmt(var, f"sequence_lengths({lengths.borrow})?"))
            self.uses.add("pycandle_runtime::sequence_lengths")
            self.vars[(node.name, ())] = Packed(x, var, lengths, bool(a["batch_first"]))
            return
        a = registry.bind("sequence, batch_first=False, padding_value=0.0, total_length=None",
                          self.operand(node.args),
                              {k: self.operand(v) for k, v in node.kwargs.items()})
        ref = node.args[0]
        source = self.packed_outputs.get((ref.node, ref.path)) if isinstance(ref, Ref) else None
        if source is None:
            raise Unsupported("pad_packed_sequence of a value that is not the output of a "
                              "recurrent layer fed by pack_padded_sequence")
        packed, layer_batch_first = source
        if a["padding_value"] != 0.0:
            raise Unsupported(f"pad_packed_sequence with padding_value={a['padding_value']}",
                              hint="only zero padding is supported")
        out = a["sequence"]
        expr = out.name
        if bool(a["batch_first"]) != layer_batch_first:
            expr += ".transpose(0, 1)?"
        if a["total_length"] is not None:
            if expr != out.name:
                raise Unsupported("pad_packed_sequence with both a layout change and total_length")
            td = 1 if a["batch_first"] else 0
            total = registry.usize_expr(a["total_length"])
            expr = f"{out.name}.pad_with_zeros({td}, 0, {total} - {out.name}.dim({td})?)?"
        meta = _at(node.out, (0,))
        if expr == out.name:
            self.vars[(node.name, (0,))] = out
        else:
            self.stmts.append(Stmt(node.name, expr, shape_comment(meta, self.shape_names)))
            self.vars[(node.name, (0,))] = T(node.name, meta)
        self.vars[(node.name, (1,))] = packed.lengths_t

    def lower_function(self, node: Node) -> None:
        if node.target in (PACK, PAD):
            self.lower_packing(node)
            return
        op = registry.op_for(node.target)
        if op is None:
            raise Unsupported(f"function {node.target} is not supported",
                              hint="see `pycandle coverage` for the supported ops")
        args = self.operand(node.args)
        kwargs = {k: self.operand(v) for k, v in node.kwargs.items()}
        bound = registry.bind(op.spellings[node.target], args, kwargs)
        expr = op.emit(node.target, bound, node.out)  # its own problems are the clearest
        if isinstance(node.out, TensorMeta) and op.name not in registry.DTYPE_AWARE_OPS:
            dtypes = {t.meta.dtype for _, t in leaves((args, tuple(kwargs.values())))
                      if isinstance(t, T)}
            if dtypes and node.out.dtype not in dtypes:
                raise Unsupported(
                    f"{node.target} gives {node.out.dtype} from {', '.join(sorted(dtypes))} "
                    "(PyTorch's type promotion, which the port does not model here)",
                    hint="cast the operand first, e.g. x.float()")
        self.uses.update(op.uses)
        if isinstance(node.out, (tuple, list)) and node.out \
                and all(isinstance(m, TensorMeta) for m in node.out):
            # ops such as chunk/split/unbind: `expr` is a Vec<Tensor>, elements are indexed
            self.stmts.append(Stmt(node.name, expr))
            for i, m in enumerate(node.out):
                self.vars[(node.name, (i,))] = T(f"{node.name}[{i}]", m)
            return
        if not isinstance(node.out, TensorMeta):
            raise Unsupported(f"{node.target} returning {type(node.out).__name__}")
        if expr.isidentifier():  # the op returns an existing value unchanged
            self.vars[(node.name, ())] = next(
                t for _, t in leaves((args, tuple(kwargs.values())))
                if isinstance(t, T) and t.name == expr)
            return
        self.stmts.append(Stmt(node.name, expr, shape_comment(node.out, self.shape_names)))
        self.vars[(node.name, ())] = T(node.name, node.out)


def _stream_test(node: Node, cfg: dict[str, Any], this: str, args: Any, names: Any,
                 stream: registry.Stream) -> list[str]:
    """Rust lines running the layer on its golden input in two chunks, the second resuming
    from the first's final state; the joined output and the final state must match the
    whole-sequence goldens."""
    x = next(t for _, t in leaves(args) if isinstance(t, T))
    td = stream.time_dim(cfg, x.rank)
    first, second = _out_names_suffixed(names, "a"), _out_names_suffixed(names, "b")
    every = {p for p, _ in leaves(names)}
    out_a, out_b = _at(first, (0,)), _at(second, (0,))
    resume = stream.some([_at(first, p) for p in stream.state_paths])
    lines = [
        f"let steps = {x.name}.dim({td})?;",
        "if steps >= 2 {",
        f"let head = {x.name}.narrow({td}, 0, steps / 2)?;",
        f"let tail = {x.name}.narrow({td}, steps / 2, steps - steps / 2)?;",
        f"let {_pattern(first, every)} = "
        f"{stream.call(cfg, this, T('head', x.meta), 'None')};",
        f"let {_pattern(second, every)} = "
        f"{stream.call(cfg, this, T('tail', x.meta), resume)};",
        f"let joined = Tensor::cat(&[&{out_a}, &{out_b}], {td})?;",
        f'report.check("stream", "{node.target}", "output", &joined, '
        f'&g("{golden_node_key(0, node.name, "out", "0").split(".", 1)[1]}")?)?;',
    ]
    for p in stream.state_paths:
        key = golden_node_key(0, node.name, "out", path_key(p)).split(".", 1)[1]
        label = _at(names, p)[len(node.name) + 1:]
        lines.append(f'report.check("stream", "{node.target}", "{label}", &{_at(second, p)}, '
                     f'&g("{key}")?)?;')
    lines.append("}")
    return lines


def _out_names_suffixed(names: Any, suffix: str) -> Any:
    if isinstance(names, str):
        return f"{names}_{suffix}"
    return tuple(_out_names_suffixed(n, suffix) for n in names)


def _at(value: Any, path: tuple[int, ...]) -> Any:
    for i in path:
        if not isinstance(value, (tuple, list)) or i >= len(value):
            return None
        value = value[i]
    return value


def lower(manifest: Manifest) -> ModelIR:
    """Lower a manifest to Rust-ready decisions, or raise UnsupportedError listing every problem."""
    lo = _Lowering(manifest)
    for _, v in leaves(manifest.output):
        if not isinstance(v, Ref):
            lo.problems.append(Problem(f"forward() returns {v!r}; only tensors and (nested) tuples "
                                       "or lists of tensors are supported"))
    if not lo.problems:
        lo.run()
    if lo.problems:
        raise UnsupportedError(manifest.name, lo.problems)

    out_leaves = list(leaves(manifest.output))
    rets = []
    for _, ref in out_leaves:
        t = lo.vars[(ref.node, ref.path)]
        # clone what cannot be moved out: a `&Tensor` argument, a Vec element, a repeated value
        rets.append(f"{t.name}.clone()" if t.is_ref or "[" in t.name or sum(
            1 for _, r in out_leaves if lo.vars[(r.node, r.path)].name == t.name) > 1 else t.name)
    output_alias = None
    if isinstance(manifest.output, Ref):
        return_type, return_expr = "Tensor", rets[0]
    else:
        return_type = _type_of(manifest.output)
        return_expr = _tuple_expr(manifest.output, iter(rets))
        if len(out_leaves) >= 3:  # name a long tuple rather than spell it out
            output_alias = (f"{camel(manifest.name)}Output", return_type)
            return_type = output_alias[0]

    model_checks = []
    for path, ref in out_leaves:
        label = path_key(path)
        model_checks.append(Check(label, f"out{'_' + label.replace('.', '_') if len(out_leaves) > 1 else ''}",
                                  golden_output_key(0, path).split(".", 1)[1]))
    check_vars = iter(c.var for c in model_checks)
    out_pattern = _tuple_expr(manifest.output, check_vars)
    struct = camel(manifest.name)
    tree = build_tree(lo.fields, {q: info.type for q, info in manifest.modules.items()}, struct,
                      { f"{struct}State", f"{struct}Output", *_PRELUDE_TYPES,
                       *_imported_names(lo.uses | lo.test_uses)})

    def fill(code: str) -> str:
        return _FIELD_RE.sub(lambda m: tree.access[m.group(1)], code)

    device = f"{manifest.inputs[0]}.device()"  # creation ops make tensors where inputs live
    lo.stmts = [Stmt(st.pattern, fill(st.expr.replace("$device", device)), st.comment)
                for st in lo.stmts]
    lo.layer_tests = [dataclasses.replace(
        t, stmt=Stmt(t.stmt.pattern, fill(t.stmt.expr), t.stmt.comment),
        stream_lines=[fill(line) for line in t.stream_lines]) for t in lo.layer_tests]
    all_code = " ".join(s.expr for s in lo.stmts) + " ".join(
        f.init for f in lo.fields.values())
    lo.uses |= _names_used(all_code)
    test_code = " ".join(t.stmt.expr for t in lo.layer_tests)
    test_uses = set(lo.test_uses) | _names_used(test_code) | {
        "candle_core::{DType, Result}"}
    if any(t.stream_lines for t in lo.layer_tests):
        test_uses.add("candle_core::Tensor")
    first_param = next((p["dtype"] for info in manifest.modules.values()
                        for p in info.parameters.values()), None)
    dtype = first_param or manifest.node(manifest.inputs[0]).out.dtype
    args = [Arg(a, shape_comment(manifest.node(a).out, lo.shape_names) or "") for a in manifest.inputs]
    ir = ModelIR(
        name=manifest.name, struct=struct, factory=manifest.factory,
        doc_lines=[], uses=merge_uses(lo.uses), fields=tree.fields, structs=tree.structs,
        args=args,
        stmts=lo.stmts, return_type=return_type, return_expr=return_expr,
        layer_tests=lo.layer_tests, model_checks=model_checks,
        input_keys=[(a, golden_input_key(0, a).split(".", 1)[1]) for a in manifest.inputs],
        out_pattern=out_pattern, state_fields=lo.state_fields, output_alias=output_alias,
        num_cases=manifest.num_cases, atol=manifest.atol, rtol=manifest.rtol,
        dtype=RUST_DTYPES.get(dtype, "F32"), test_uses=merge_uses(test_uses),
        warnings=[line for w in manifest.warnings
                  for line in textwrap.wrap(f"Trace note: {w}", 95, subsequent_indent="  ")],
    )
    return ir


# type names a nested struct must not take: the prelude's and the generated files' own
_PRELUDE_TYPES = frozenset({"Box", "Option", "Result", "Some", "String", "Vec", "Self"})


def _imported_names(uses: set[str]) -> set[str]:
    names = set()
    for path in uses:
        m = _USE_RE.match(path)
        items = m.group(3).split(",") if m and m.group(3) is not None else [path.rsplit(":", 1)[-1]]
        names.update(i.strip() for i in items if i.strip() and i.strip() != "self")
    return names


# the runtime's functions and types generated code calls unqualified
_RUNTIME_NAMES = ("masked_select", "take", "take_every", "pad_circular", "pad_constant",
                  "pad_reflect", "max_pool_dim", "avg_pool_dim", "PoolDim", "Divisor")


def _names_used(code: str) -> set[str]:
    """`use` lines for the Candle names and runtime functions the code mentions unqualified."""
    uses = set()
    for name in ("D", "DType", "Device", "IndexOp"):
        if re.search(rf"(?<![\w:]){name}::", code):
            uses.add(f"candle_core::{name}")
    for name in _RUNTIME_NAMES:
        if re.search(rf"(?<![\w:.]){name}(\(| {{|::)", code):
            uses.add(f"pycandle_runtime::{name}")
    return uses


def _type_of(structure: Any) -> str:
    if isinstance(structure, Ref):
        return "Tensor"
    inner = [_type_of(v) for v in structure]
    return "(" + ", ".join(inner) + ("," if len(inner) == 1 else "") + ")"


def _tuple_expr(structure: Any, rets: Any) -> str:
    if isinstance(structure, Ref):
        return next(rets)
    inner = [_tuple_expr(v, rets) for v in structure]
    return "(" + ", ".join(inner) + ("," if len(inner) == 1 else "") + ")"
