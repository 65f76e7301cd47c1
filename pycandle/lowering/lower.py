"""Manifest -> a model IR holding every decision; the templates only lay it out.

This is also the support check: `record` lowers each manifest before writing anything, so an
unsupported layer, op or argument is reported (with its source line) before any file changes.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

from pycandle import names, registry
from pycandle.enums import DType, EntryKind, NodeOp, SymKind
from pycandle.errors import Problem, UnsupportedError, grouped
from pycandle.lowering.blocks import Method, extract_methods
from pycandle.lowering.loops import (
    LOCAL_NAME, Stmt, compact_names, defs, fold_loops, rename,
)
from pycandle.lowering.structs import FieldDecl, LeafField, StructDef, build_tree
from pycandle.manifest import (
    PACK, PAD, Block, Manifest, Node, Param, Ref, SymInt, TensorMeta, found_in,
    golden_input_key, golden_node_key, golden_output_key, leaves, path_key, refs_in,
)
from pycandle.registry import Dim, FloatSize, FromEnd, Packed, Rust, T, Unsupported
from pycandle.registry.core import Embedded
from pycandle.rust import rust_float, rust_str
from pycandle.symbolic import evaluate


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
    cases: str | None = None  # the test of the trace cases it runs in, if not all


@dataclass(frozen=True)
class Arg:
    name: str
    shape: str


@dataclass(frozen=True)
class Fold:
    """An embedding folded at load into the recurrent layer it alone feeds
    (`fold_embedding`): the Rust paths of both fields from the model, and their modules."""

    layer: str  # `lstm`, `encoder.lstm`
    embedding: str
    layer_module: str
    embedding_module: str


# the recurrent layers an embedding can be folded into, and the token dtypes their
# `forward_tokens` reads as Candle's embedding does
_FOLDS_INTO = ("torch.nn.LSTM", "torch.nn.GRU")
_TOKEN_DTYPES = ("int64", "uint8", "uint32")


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
    methods: dict[str, Method] = field(default_factory=dict)  # by struct name
    block_tests: list[LayerTest] = field(default_factory=list)  # user modules, containers
    folds: list[Fold] = field(default_factory=list)  # embeddings folded into recurrent layers


camel = names.camel


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


def _params_in(value: Any) -> Iterator[Param]:
    return found_in(value, Param)


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
    if names is None:  # a None output leaf (MultiheadAttention's weights without need_weights)
        return "_"
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


class _FollowOn(Exception):
    """A node needs the result of `root`, a node that could not be lowered."""

    def __init__(self, root: str):
        super().__init__(root)
        self.root = root


class _Locals:
    """Rust local names, unique in a function and clear of every name generated code reserves
    for itself (`pycandle.names`): a user's `state` or `report` becomes `state_1`, `report_1`."""

    def __init__(self) -> None:
        self.taken: set[str] = set()
        self.of: dict[str, str] = {}
        self.bases: dict[str, str] = {}  # local -> the name it was made from (`x_2` -> `x`)

    def __call__(self, key: Any, reserved: frozenset[str] = names.RESERVED_LOCALS,
                 base: str | None = None) -> str:
        """The local for `key` (a manifest name, the same local every time), made from `base`
        (default: the key itself)."""
        if key not in self.of:
            # a reserved name gets a number, as a repeated one does (`model_1`, never `model_`:
            # suffixes such as `_output` are appended to it)
            stem = names.rust_ident(key if base is None else base, frozenset()).rstrip("_")
            local, k = stem, 1
            while local in self.taken or local in reserved:
                local, k = f"{stem}_{k}", k + 1
            self.taken.add(local)
            self.of[key] = local
            self.bases[local] = stem
        return self.of[key]


class _Lowering:
    def __init__(self, manifest: Manifest):
        self.m = manifest
        self.problems: list[Problem] = []
        self.root_of: dict[str, str] = {}  # failed node -> the node whose problem caused it
        self.first_problem: dict[str, int] = {}  # failed node -> index of its first problem
        self.vars: dict[tuple[str, tuple[int, ...]], T] = {}
        self.local = _Locals()
        self.fields: dict[str, LeafField] = {}  # by qualified module name, in order of use
        self.field_uses: set[str] = set()
        self.access: dict[str, str] = {}  # qualified module name -> Rust path from the model
        self.uses: set[str] = {"candle_core::{Result, Tensor}", "candle_nn::VarBuilder"}
        self.test_uses: set[str] = set()
        self.stmts: list[Stmt] = []
        self.needs_device = False
        self.layer_tests: list[LayerTest] = []
        self.state_fields: list[tuple[str, str, str]] = []  # (node, Rust type, module)
        # outputs of recurrent layers run on a packed batch: (the Packed input, layer layout)
        self.packed_outputs: dict[tuple[str, tuple[int, ...]], tuple[Packed, bool]] = {}
        self.shape_names = _shape_names(manifest)
        self.struct_of: dict[str, str] = {}  # module -> the Rust struct it loads into
        self.loop_methods: dict[str, Method] = {}  # methods of the blocks loops call
        self.loop_called: list[Block] = []
        self._fresh = iter(range(1 << 30))
        self.index = {n.name: i for i, n in enumerate(manifest.nodes)}
        self.folded: set[str] = set()  # Embedding nodes folded into the layer they feed
        self.folds: list[Fold] = []

    def problem(self, node: Node, what: str, hint: str | None = None) -> None:
        module = node.target if node.op == NodeOp.CALL_MODULE else None
        self.first_problem.setdefault(node.name, len(self.problems))
        self.problems.append(Problem(what, node.source, module, hint))
        self.root_of[node.name] = node.name

    def lower_all(self, live: list[Node], used: dict[tuple[str, tuple[int, ...]], int]) -> None:
        """Lower every live node; a node that needs the result of one that failed is counted
        against that root cause instead of being reported on its own."""
        follow_ons: dict[str, int] = {}
        running: tuple[Node, int] | None = None  # a loop whose pass is being lowered
        # [BRANCH node, its start, its `else` part's start, the uses of every value]
        branching: list[Any] | None = None
        for node in [*live, None]:
            closing = None
            try:
                if running is not None and (node is None or node.step != running[0].name):
                    closing, running = running, None
                    self.close_loop(*closing)
                side = node.branch if node is not None else None
                if branching is not None and (side is None or side[0] != branching[0].name):
                    closing, branching = branching, None
                    self.close_branch(*closing)
                elif branching is not None and side[1] is False and branching[2] is None:
                    branching[2] = len(self.stmts)
            except Unsupported as e:
                self.problem(closing[0], e.what, e.hint)
            if node is None:
                break
            try:
                if node.op == NodeOp.LOOP:
                    running = (node, self.open_loop(node, used))
                elif node.op == NodeOp.BRANCH:
                    self.branch_test(node)  # reported at the `if`, before its sides
                    branching = [node, len(self.stmts), None, used]
                else:
                    self.lower_node(node, used)
            except _FollowOn as e:
                self.root_of[node.name] = e.root
                follow_ons[e.root] = follow_ons.get(e.root, 0) + 1
            except Unsupported as e:
                self.problem(node, e.what, e.hint)
        uses = [0] * len(self.problems)
        for root, count in follow_ons.items():
            uses[self.first_problem[root]] += count
        self.problems = grouped(self.problems, uses)

    def find_folds(self, live: list[Node], used: dict[tuple[str, tuple[int, ...]], int]) -> None:
        """The embeddings to fold into a recurrent layer at load: an `nn.Embedding` call (no
        `max_norm`) whose output is used once, as the `input` of an LSTM or GRU call (maybe
        through a Dropout or an Identity), both outside loops and branches. The layer then reads
        the token ids (`forward_tokens`), and its input projection is one table row per token."""
        for node in live:
            src = self._embedding_feeding(node, used)
            if src is None:
                continue
            self.folded.add(src.name)
            fold = Fold(self.access[node.target], self.access[src.target], node.target,
                        src.target)
            if fold not in self.folds:
                self.folds.append(fold)

    def _embedding_feeding(self, node: Node,
                           used: dict[tuple[str, tuple[int, ...]], int]) -> Node | None:
        """The Embedding call that `node`, a recurrent layer's call, can fold, or None."""
        def plain_call(n: Node, types: tuple[str, ...]) -> bool:
            info = self.m.modules.get(n.target) if n.op == NodeOp.CALL_MODULE else None
            return info is not None and info.type in types and n.target in self.access \
                and n.loop is None and n.branch is None and n.step is None

        if not plain_call(node, _FOLDS_INTO):
            return None
        try:
            x = registry.bind("input, hx=None", node.args, node.kwargs)["input"]
        except (Unsupported, TypeError):
            return None
        while True:
            if not isinstance(x, Ref) or x.path != () or used.get((x.node, ()), 0) != 1:
                return None
            src = self.m.node(x.node)
            info = self.m.modules.get(src.target) if src.op == NodeOp.CALL_MODULE else None
            layer = registry.layer_for(info.type) if info is not None else None
            if layer is None or not layer.passthrough or not src.args:
                break
            x = src.args[0]  # through a Dropout (eval) or an Identity
        if not plain_call(src, ("torch.nn.Embedding",)) \
                or self.m.modules[src.target].config.get("max_norm") is not None:
            return None
        try:
            tokens = registry.bind("input", src.args, src.kwargs)["input"]
        except (Unsupported, TypeError):
            return None
        if not isinstance(tokens, Ref) or self.m.meta(tokens).dtype not in _TOKEN_DTYPES:
            return None
        return src

    def open_loop(self, node: Node, used: dict[tuple[str, tuple[int, ...]], int]) -> int:
        """The loop state and the lists a loop fills, declared before it; the index of the
        statement its pass begins at."""
        count, inits = node.args
        self.usize(count)  # a size Rust can count to
        nexts, collects = node.kwargs["next"], node.kwargs["collect"]
        lists = node.kwargs.get("lists") or [None] * len(collects)
        at = self.index[node.name]
        for i, (init, after) in enumerate(zip(inits, nexts)):
            t = self.operand(init)
            if not isinstance(t, T):
                raise Unsupported(f"loop state {i} is not a tensor")
            target = _at(self.m.node(after.node).assign, after.path)
            made = next((j for j in range(len(self.stmts) - 1, -1, -1)
                         if self.stmts[j].pattern == t.name), None)
            if used.get((init.node, init.path), 0) == 1 and t.movable and not t.is_ref \
                    and made is not None:
                # `let mut h = ...` where the first state is made, named as the state
                local = t.name
                if isinstance(target, str) and self.local.bases.get(t.name) != target:
                    local = self.local((node.name, (i,)), base=target)
                self.stmts[made] = replace(self.stmts[made], pattern=f"mut {local}")
            else:
                local = self.local((node.name, (i,)), base=target
                                   if isinstance(target, str) else t.name)
                value = t.name if used.get((init.node, init.path), 0) == 1 and t.movable \
                    and not t.is_ref else f"{t.name}.clone()"
                self.stmts.append(Stmt(f"mut {local}", value, source=node.source, at=at))
            self.vars[(node.name, (i,))] = T(local, t.meta)
        for j, (kept, name) in enumerate(zip(collects, lists)):
            meta = node.out[len(inits) + j][0]
            local = self.local((node.name, (len(inits) + j,)),
                               base=name or f"{self.m.node(kept.node).assign or kept.node}s")
            self.stmts.append(Stmt(f"mut {local}", f"Vec::with_capacity({self.usize(count)})",
                                   source=node.source, at=at))
            self.vars[(node.name, (len(inits) + j,))] = T(local, meta, is_vec=True)
        return len(self.stmts)

    def branch_test(self, node: Node) -> str:
        """A BRANCH node's test in Rust: `x.dim(2)? % 4 != 0`."""
        op, left, right = node.args
        if _has_difference(left) or _has_difference(right):
            raise Unsupported("an `if` on a difference of sizes (Rust sizes are unsigned)",
                              hint="compare the sizes themselves (`if t > k` for `t - k > 0`)")
        return f"{self.usize(left)} {_COMPARISON[op]} {self.usize(right)}"

    def close_branch(self, node: Node, start: int, split: int | None,
                     used: dict[tuple[str, tuple[int, ...]], int]) -> None:
        """The statements of the `if`'s body (from `start`) and of its `else` part (from
        `split`) become one `let x = if t % 4 != 0 { .. } else { .. };`."""
        split = len(self.stmts) if split is None else split
        sides = (self.stmts[start:split], self.stmts[split:])
        del self.stmts[start:]
        if any(s.header for side in sides for s in side):
            raise Unsupported("a loop inside an `if` on a size")
        blocks = []
        for refs, stmts in zip((node.kwargs["then"], node.kwargs["else"]), sides):
            own = {d for s in stmts for d in defs(s)}
            values = []
            for ref in refs:
                t = self.operand(ref)
                # its side's own value, or one from before the `if` read nowhere else
                moved = t.name in own or used.get((ref.node, ref.path), 0) == 1
                values.append(t.name if moved and t.movable and not t.is_ref
                              else f"{t.name}.clone()")
            lines = []
            if len(stmts) == 1 and len(values) == 1 and stmts[0].pattern == values[0]:
                lines.append(stmts[0].expr)  # `if .. { x.pad_with_zeros(2, 0, 3)? }`
            else:
                for s in stmts:
                    if s.comment:
                        lines.append(f"// {s.comment}")
                    lines.append(f"let {s.pattern} = {s.expr};" if s.pattern else f"{s.expr};")
                lines.append(values[0] if len(values) == 1 else "(" + ", ".join(values) + ")")
            blocks.append("\n".join(lines))
        names_ = []
        for i, (a, b) in enumerate(zip(node.kwargs["then"], node.kwargs["else"])):
            target = next((t for t in (_at(self.m.node(r.node).assign, r.path) for r in (a, b))
                           if isinstance(t, str)), None)
            names_.append(self.local((node.name, (i,)), base=target or "chosen"))
            self.vars[(node.name, (i,))] = T(names_[-1], node.out[i])
        pattern = names_[0] if len(names_) == 1 else "(" + ", ".join(names_) + ")"
        self.stmts.append(Stmt(pattern, f"if {self.branch_test(node)} {{\n{blocks[0]}\n}} "
                                        f"else {{\n{blocks[1]}\n}}",
                               source=node.source, at=self.index[node.name]))

    def fresh(self, base: str) -> str:
        """A new local, made from `base`."""
        return self.local(("new", next(self._fresh)), base=base)

    def tensor_of(self, ref: Any) -> T | None:
        t = self.vars.get((ref.node, ref.path)) if isinstance(ref, Ref) else None
        return t if isinstance(t, T) else None

    def close_loop(self, node: Node, start: int) -> None:
        """The statements of one pass, from `start` on, become the body of a `for` loop that
        ends by keeping its values and replacing its state."""
        body = self.stmts[start:]
        del self.stmts[start:]
        count, inits = node.args
        # the user modules a pass calls, as methods (`self.attention.forward(..)`)
        blocks = [b for b in self.m.blocks if self.m.nodes[b.start].step == node.name]
        body, methods, renamed, called = extract_methods(
            body, blocks, self.struct_of, self.access, self.tensor_of, self.fresh,
            self.local.bases)
        self.loop_methods.update(methods)
        self.loop_called += called
        for key, t in self.vars.items():
            if isinstance(t, T) and t.name in renamed:
                self.vars[key] = replace(t, name=renamed[t.name])
        nexts = [self.operand(r) for r in node.kwargs["next"]]
        body, assigned = _assign_in_place(body, {
            t.name: self.vars[(node.name, (i,))].name for i, t in enumerate(nexts)
            if t.movable and not t.is_ref})
        nexts = [replace(t, name=assigned.get(t.name, t.name)) for t in nexts]
        for j, kept in enumerate(node.kwargs["collect"]):
            t = self.operand(kept)
            t = replace(t, name=assigned.get(t.name, t.name))
            vec = self.vars[(node.name, (len(inits) + j,))]
            own = t.movable and not t.is_ref and all(n.name != t.name for n in nexts)
            body.append(Stmt("", f"{vec.name}.push({t.name if own else t.name + '.clone()'})"))
        for i, t in enumerate(nexts):
            state = self.vars[(node.name, (i,))]
            if t.name != state.name:
                own = t.movable and not t.is_ref
                body.append(Stmt("", f"{state.name} = {t.name if own else t.name + '.clone()'}"))
        var = self.local((node.name, "step"), base=node.target)
        if not any(var in LOCAL_NAME.findall(f"{b.pattern} {b.expr}") for b in body):
            var = "_"
        self.stmts.append(Stmt("", "", source=node.source,
                               header=f"{var} in 0..{self.usize(count)}", body=tuple(body),
                               at=self.index[node.name]))

    def operand(self, value: Any) -> Any:
        if isinstance(value, Ref):
            t = self.vars.get((value.node, value.path))
            if t is None:
                if value.node in self.root_of:
                    raise _FollowOn(self.root_of[value.node])
                raise Unsupported(f"reference to an unavailable value {value.node}{list(value.path)}")
            return t
        if isinstance(value, Param):
            return self.param(value, "self")
        if isinstance(value, tuple):
            return tuple(self.operand(v) for v in value)
        if isinstance(value, list):
            return [self.operand(v) for v in value]
        if isinstance(value, slice):
            return slice(self.operand(value.start), self.operand(value.stop),
                         self.operand(value.step))
        if isinstance(value, SymInt):
            if value.kind == SymKind.NEG:  # `x[:-pad]`: counted from the end
                return FromEnd(Dim(self.usize(value.a), self.sym_values(value.a)))
            if _float_valued(value):
                return FloatSize(self.f64(value), self.sym_values(value))
            return Dim(self.usize(value), self.sym_values(value))
        return value

    def usize(self, sym: Any, context: int = 0) -> str:
        """A symbolic integer as a Rust usize expression, parenthesised for a place of
        precedence `context`: 1 an operand of `+ -`, 2 of `* / %` (one more on the right of
        `- / %`), 3 of `as`, 4 a method's receiver."""
        if not isinstance(sym, SymInt):
            if isinstance(sym, bool) or not isinstance(sym, int) or sym < 0:
                raise Unsupported(f"{sym!r} where a size (a non-negative integer) is expected")
            return str(sym)
        kind = SymKind(sym.kind)
        if kind == SymKind.DIM:
            return self.operand(sym.a).dim(sym.b)
        if kind == SymKind.STEP:  # the loop's variable
            return self.local((sym.a.node, "step"), base=self.m.node(sym.a.node).target)
        if kind == SymKind.NEG or _float_valued(sym):
            what = "a negative number" if kind == SymKind.NEG else "a float"
            raise Unsupported(f"a size computed from the input shapes is {what} here, where "
                              "Candle takes a non-negative integer")
        if kind in (SymKind.MAX, SymKind.MIN):
            a, b = (sym.b, sym.a) if isinstance(sym.a, int) else (sym.a, sym.b)
            if kind == SymKind.MAX and _difference(b) and not _difference(a):
                a, b = b, a
            if kind == SymKind.MAX and _difference(a) and not _difference(b):
                # `max(t - 6, 2)`: where Python's difference goes negative the other operand,
                # a size (never negative), wins; a usize difference saturates at 0 instead of
                # wrapping, which gives the same maximum
                x, y = _difference(a)
                text = f"{self.usize(x, 4)}.saturating_sub({self.usize(y)})"
                return f"{text}.max({self.usize(b)})"
            text, prec = f"{self.usize(a, 4)}.{kind.value}({self.usize(b)})", 4
        elif kind.unary:
            text, prec = self._rounded(kind, sym.a)
        else:
            b = sym.b
            if kind == SymKind.ADD and isinstance(b, int) and b < 0:
                kind, b = SymKind.SUB, -b
            prec = kind.precedence
            # `a - (b + c)`, `a / (b * c)`: the right operand binds tighter than its operator
            right = prec + 1 if kind in (SymKind.SUB, SymKind.FLOORDIV, SymKind.MOD) else prec
            text = f"{self.usize(sym.a, prec)} {kind.operator} {self.usize(b, right)}"
        return f"({text})" if prec < context else text

    def _rounded(self, kind: SymKind, x: Any) -> tuple[str, int]:
        """`math.ceil(x)`, `math.floor(x)`, `int(x)`, `round(x)` of a float from sizes, and the
        precedence of the text. A quotient of two sizes stays in integers (`t.div_ceil(s)`)."""
        if kind != SymKind.ROUND and isinstance(x, SymInt) and x.kind == SymKind.TRUEDIV \
                and not _float_valued(x.a) and not _float_valued(x.b):
            if kind == SymKind.CEIL:
                return f"{self.usize(x.a, 4)}.div_ceil({self.usize(x.b)})", 4
            return f"{self.usize(x.a, 2)} / {self.usize(x.b, 3)}", 2  # sizes are >= 0
        method = "round_ties_even" if kind == SymKind.ROUND else kind.value
        return f"{self.f64(x, 4)}.{method}() as usize", 3

    def f64(self, sym: Any, context: int = 0) -> str:
        """A number computed from sizes as a Rust f64 expression (Python's float arithmetic:
        the same IEEE operations); `context` as for `usize`."""
        if not isinstance(sym, SymInt):
            text = rust_float(sym)
            return f"({text})" if text.startswith("-") and context > 1 else text
        if not _float_valued(sym):
            text, prec = f"{self.usize(sym, 4)} as f64", 3
        else:
            kind, b = SymKind(sym.kind), sym.b
            if kind in (SymKind.MAX, SymKind.MIN):
                text, prec = f"{self.f64(sym.a, 4)}.{kind.value}({self.f64(b)})", 4
            else:
                if kind == SymKind.ADD and not isinstance(b, SymInt) and b < 0:
                    kind, b = SymKind.SUB, -b
                prec = kind.precedence
                right = prec + 1 if kind in (SymKind.SUB, SymKind.TRUEDIV) else prec
                text = f"{self.f64(sym.a, prec)} {kind.operator} {self.f64(b, right)}"
        return f"({text})" if prec < context else text

    def sym_values(self, sym: SymInt) -> tuple[int, ...]:
        return tuple(
            evaluate(sym, lambda ref, d, c=case: self.m.meta(ref).shapes[c][d])
            for case in range(self.m.num_cases))

    def collect_fields(self, live: list[Node]) -> None:
        """The sublayers the forward pass calls and the parameters it reads directly, arranged
        as the model's struct tree, so that every use is emitted with its final Rust path
        (`self.encoder.lstm`, `self.scale`)."""
        for node in live:
            for param in _params_in((node.args, node.kwargs)):
                self.collect_param(param.name)
            if node.op != NodeOp.CALL_MODULE or node.target in self.fields:
                continue
            info = self.m.modules.get(node.target)
            layer = registry.layer_for(info.type) if info is not None else None
            if layer is None or layer.passthrough:
                continue  # reported when the node is lowered
            try:
                built = layer.emit_field(info.config)
            except (Unsupported, KeyError, TypeError, ValueError):
                continue  # the layer's check reports what is wrong with its config
            if built is not None:
                field_, uses = built
                init = field_.init
                if "weight_norm" in info.config:  # `weight` computed from `weight_g`, `weight_v`
                    init = _weight_normed(init, info.config["weight_norm"])
                    uses = uses | {"pycandle_runtime::weight_norm"}
                self.fields[node.target] = LeafField(field_.rust_type, init, info.type)
                self.field_uses |= uses

    def collect_param(self, name: str) -> None:
        owner, _, local = name.rpartition(".")
        info = self.m.modules.get(owner)
        spec = None if info is None else (info.parameters.get(local) or info.buffers.get(local))
        if spec is None or name in self.fields:
            return  # reported where it is used
        if registry.layer_for(info.type) is not None:
            return  # a registered layer's own parameter: reported where it is used
        dtype = DType(spec["dtype"])
        kind = "parameter" if local in info.parameters else "buffer"
        self.fields[name] = LeafField("Tensor", None, kind, tuple(spec["shape"]),
                                      None if dtype.is_float else dtype.candle)

    def param(self, p: Param, owner: str) -> T:
        """A parameter or buffer that forward() reads directly, as the struct field holding it."""
        owner_module, _, local = p.name.rpartition(".")
        info = self.m.modules.get(owner_module)
        layer = None if info is None else registry.layer_for(info.type)
        if layer is not None:
            method = dict(layer.params).get(local)
            spec = info.parameters.get(local)
            if method is None or spec is None or owner_module not in self.access \
                    or "weight_norm" in info.config or not layer.params_as_loaded(info.config):
                raise Unsupported(f"direct use of parameter '{p.name}' of a {info.type} layer "
                                  "in forward()", hint="call the layer, or keep the tensor in a "
                                  "parameter of your own module")
            meta = TensorMeta(spec["dtype"], (tuple(spec["shape"]),) * self.m.num_cases)
            return T(f"{owner}.{self.access[owner_module]}.{method}", meta, is_ref=True,
                     movable=False)
        leaf = self.fields.get(p.name)
        if leaf is None or leaf.shape is None:
            raise Unsupported(f"direct use of '{p.name}', which is not a parameter or buffer "
                              "of the recorded modules")
        dtype = self.m.modules[owner_module].parameters.get(local) or \
            self.m.modules[owner_module].buffers[local]
        meta = TensorMeta(dtype["dtype"], (tuple(leaf.shape),) * self.m.num_cases)
        return T(f"{owner}.{self.access[p.name]}", meta, movable=False)

    def this(self, qual: str, owner: str) -> str:
        """The Rust path of sublayer `qual` from `owner` (`self`, or `model` in the tests)."""
        return f"{owner}.{self.access[qual]}" if qual in self.access else ""

    def lower_node(self, node: Node, used: dict[tuple[str, tuple[int, ...]], int]) -> None:
        if node.op == NodeOp.INPUT:
            self.vars[(node.name, ())] = T(self.local(node.name, names.RESERVED_ARGS), node.out,
                                           is_ref=True)
            return
        if node.op == NodeOp.CONSTANT:
            raise Unsupported("a tensor created outside the traced graph (a global or captured "
                              "tensor) is used in forward()",
                              hint="register it as a buffer of the module")
        if node.op == NodeOp.CALL_MODULE:
            self.lower_module(node, used)
        else:
            self.lower_function(node)

    def _bind(self, node: Node, names_: Any) -> None:
        for path, name in leaves(names_):
            meta = _at(node.out, path)
            if not isinstance(meta, TensorMeta):
                continue
            self.vars[(node.name, path)] = T(name, meta)

    def emit(self, node: Node, pattern: str, code: Rust, comment: str | None = None) -> None:
        """A statement of `forward` porting `node`; its uses join the model file's."""
        loop = (names.rust_ident(node.loop[0]), names.rust_ident(node.loop[1])) \
            if node.loop else None
        if node.branch is not None:  # a side of an `if` ran in some trace cases: no shapes
            comment = None
        self.stmts.append(Stmt(pattern, code.code, comment, node.source, loop,
                               at=self.index[node.name]))
        self.uses |= code.uses
        self.needs_device |= code.device

    def lower_module(self, node: Node, used: dict[tuple[str, tuple[int, ...]], int]) -> None:
        info = self.m.modules.get(node.target)
        if info is None:
            raise Unsupported(f"module '{node.target}' missing from the manifest")
        layer = registry.layer_for(info.type)
        if layer is None:
            raise Unsupported(f"layer type {info.type} is not supported",
                              hint="see `pycandle coverage` for the supported layers")
        problems = layer.check(info.config)
        if "reparametrized" in info.config:
            problems = [*problems, f"a parametrization of its parameters "
                        f"({info.config['reparametrized']}; weight normalisation of `weight` is "
                        "supported)"]
        for p in problems:
            self.problem(node, f"{layer.short} option not supported: {p}")
        if problems:
            return
        args = self.operand(node.args)
        kwargs = {k: self.operand(v) for k, v in node.kwargs.items()}
        if layer.passthrough:
            out = layer.emit_call(info.config, "", args, kwargs)
            if out.alias is None:
                raise Unsupported(f"{layer.short} should pass its input through")
            self.vars[(node.name, ())] = out.alias
            return
        this = self.this(node.target, "self")
        local = self.node_local(node)
        out_names = self.assigned_names(node, _out_names(layer.outputs, node.out, local))
        if node.name in self.folded:
            # folded into the recurrent layer it feeds, which looks the tokens up itself
            tokens = registry.one_tensor(args, kwargs)
            self.vars[(node.name, ())] = Embedded("", node.out, tokens=tokens, embedding=this)
            self.layer_test(node, layer, info.config, self.this(node.target, "model"),
                            out_names, None)
            return
        used_paths = {p for (n, p), c in used.items() if n == node.name and c}
        stream = layer.stream
        streaming = stream is not None and stream.blocker(info.config, args, kwargs) is None
        if streaming:
            # the call resumes from the carried state and leaves its final state there
            x = registry.one_tensor(args, kwargs, "input, hx=None")
            code = registry.emitted(stream.call, info.config, this, x,
                                    stream.resume(f"state.{self.local(node.name)}"))
            used_paths |= set(stream.state_paths)
            code = Rust(code.code, code.uses | set(layer.uses + layer.call_uses), code.device)
        else:
            code = layer.emit_call(info.config, this, args, kwargs)
            if code.alias is not None:  # e.g. Flatten over a single dimension: no statement
                self.vars[(node.name, ())] = code.alias
                return
        self.emit(node, _pattern(out_names, used_paths), code, self.comment(node, out_names))
        x_arg = next((v for _, v in leaves((args, tuple(kwargs.values())))
                      if isinstance(v, (T, Packed))), None)
        if isinstance(x_arg, Packed):
            self.packed_outputs[(node.name, (0,))] = (x_arg, bool(info.config.get("batch_first")))
        if streaming:
            finals = [f"{_at(out_names, p)}.clone()" for p in stream.state_paths]
            value = finals[0] if len(finals) == 1 else "(" + ", ".join(finals) + ")"
            field = self.local(node.name)  # the layer's own name, as the struct field
            self.stmts.append(Stmt("", f"state.{field} = Some({value})", source=node.source,
                                   at=self.index[node.name]))
            self.state_fields.append((field, stream.state_type, node.target))
        self._bind(node, out_names)
        self.layer_test(node, layer, info.config, self.this(node.target, "model"), out_names,
                        stream if streaming else None)

    def node_local(self, node: Node) -> str:
        """The local holding a node's value: the Python variable it is assigned to where the
        source has one (`x = self.conv(x)`), else the node's own name."""
        if isinstance(node.assign, str) and isinstance(node.out, TensorMeta):
            return self.local(node.name, base=node.assign)
        if node.target == "Tensor.__getitem__" and node.step is not None and any(
                isinstance(v, SymInt) and v.kind == SymKind.STEP for _, v in leaves(node.args)):
            # `x[:, t]` in a loop's pass: `x_t`
            x, step = self.operand(node.args[0]), self.m.node(node.step)
            if isinstance(x, T) and re.fullmatch(r"[a-z_][a-z0-9_]*", x.name):
                return self.local(node.name,
                                  base=f"{self.local.bases.get(x.name, x.name)}_{step.target}")
        return self.local(node.name)

    def assigned_names(self, node: Node, out_names: Any) -> Any:
        """`out_names` with the leaves a tuple assignment names (`outputs, _ = self.lstm(x)`)
        renamed after their Python targets."""
        if not isinstance(node.assign, list) or not isinstance(node.out, (tuple, list)):
            return out_names

        def rename(names_: Any, target: Any, out: Any, path: tuple[int, ...]) -> Any:
            if isinstance(target, str) and isinstance(out, TensorMeta):
                return self.local((node.name, path), base=target)
            if isinstance(target, list) and isinstance(out, (tuple, list)) \
                    and isinstance(names_, tuple) and len(target) == len(out) == len(names_):
                return tuple(rename(n, t, o, path + (i,))
                             for i, (n, t, o) in enumerate(zip(names_, target, out)))
            return names_

        return rename(out_names, node.assign, node.out, ())

    def named_alias(self, node: Node, alias: T) -> T:
        """An op that passes its input through (`F.dropout` in eval mode) as the whole right-hand
        side of `x = F.dropout(F.relu(h))`: the statement just emitted for its input takes the
        name `x`, when nothing else refers to that statement's local yet."""
        if not isinstance(node.assign, str) or not self.stmts or alias.is_ref:
            return alias
        last = self.stmts[-1]
        if last.pattern != alias.name or self.local.of.get(node.name) is not None:
            return alias
        producers = [k for k, v in self.vars.items() if v.name == alias.name]
        if len(producers) != 1 or self.m.node(producers[0][0]).assign is not None:
            return alias
        renamed = replace(alias, name=self.local(node.name, base=node.assign))
        self.stmts[-1] = replace(last, pattern=renamed.name)
        self.vars[producers[0]] = renamed
        return renamed

    def comment(self, node: Node, names_: Any) -> str | None:
        parts = []
        for path, name in leaves(names_):
            c = shape_comment(_at(node.out, path), self.shape_names)
            if c:
                parts.append(c if isinstance(names_, str) else f"{name}: {c}")
        return ", ".join(parts) or None

    def layer_test(self, node: Node, layer: registry.Layer, cfg: dict[str, Any],
                   this: str, out_names: Any, stream: registry.Stream | None) -> None:
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
            if isinstance(v, Param):
                return self.param(v, "model")
            if isinstance(v, tuple):
                return tuple(golden_operand(x) for x in v)
            if isinstance(v, list):
                return [golden_operand(x) for x in v]
            return v

        # Same flattening order as the recorder: positional args, then kwargs by name.
        args = golden_operand(node.args)
        kw_sorted = {k: golden_operand(node.kwargs[k]) for k in sorted(node.kwargs)}
        code = layer.emit_call(cfg, this, args, kw_sorted)
        checks = []
        labels = _out_names(layer.outputs, node.out, "")
        for path, name in leaves(out_names):
            if isinstance(_at(node.out, path), TensorMeta):
                label = _at(labels, path).lstrip("_") or path_key(path)
                key = golden_node_key(0, node.name, "out", path_key(path)).split(".", 1)[1]
                checks.append(Check(label or path_key(path), name, key))
        self.test_uses |= set(layer.call_uses) | (code.uses - set(layer.uses))
        stream_lines = []
        if stream:
            lines = registry.emitted(_stream_test, node, labels, cfg, this, args, out_names, stream)
            stream_lines = lines.code.split("\n")
            self.test_uses |= lines.uses | {"candle_core::Tensor"}
        self.layer_tests.append(LayerTest(node.name, node.target, layer.torch_type, inputs,
                                          Stmt(_pattern(out_names, {p for p, _ in leaves(out_names)}),
                                               code.code), checks, stream_lines, prelude,
                                          self.cases_running(node)))

    def cases_running(self, node: Node) -> str | None:
        """The Rust test of the trace cases that ran `node`, when it is in one side of an `if`
        on a size (`case == 1`), else None (every case ran it)."""
        if node.branch is None:
            return None
        taken = self.m.node(node.branch[0]).kwargs["taken"]
        cases = [str(c) for c, side in enumerate(taken) if side == node.branch[1]]
        return f"case == {cases[0]}" if len(cases) == 1 else f"matches!(case, {' | '.join(cases)})"

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
            var = self.local(f"{node.name}_lengths")
            self.emit(node, var, Rust(f"sequence_lengths({lengths.borrow})?",
                                frozenset({"pycandle_runtime::sequence_lengths"})))
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
            local = self.local(node.name)
            self.emit(node, local, Rust(expr), shape_comment(meta, self.shape_names))
            self.vars[(node.name, (0,))] = T(local, meta)
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
        code = op.lower(node.target, bound, node.out)  # its own problems are the clearest
        if isinstance(node.out, TensorMeta) and op.name not in registry.DTYPE_AWARE_OPS:
            dtypes = {t.meta.dtype for _, t in leaves((args, tuple(kwargs.values())))
                      if isinstance(t, T)}
            if dtypes and node.out.dtype not in dtypes:
                raise Unsupported(
                    f"{node.target} gives {node.out.dtype} from {', '.join(sorted(dtypes))} "
                    "(PyTorch's type promotion, which the port does not model here)",
                    hint="cast the operand first, e.g. x.float()")
        if isinstance(node.out, (tuple, list)) and node.out \
                and all(isinstance(m, TensorMeta) for m in node.out):
            # ops such as chunk/split/unbind: the code is a Vec<Tensor>, elements are indexed
            local = self.local(node.name)
            self.emit(node, local, code)
            for i, m in enumerate(node.out):
                self.vars[(node.name, (i,))] = T(f"{local}[{i}]", m, movable=False)
            return
        if not isinstance(node.out, TensorMeta):
            raise Unsupported(f"{node.target} returning {type(node.out).__name__}")
        if code.alias is not None:  # the op returns an existing value unchanged
            self.vars[(node.name, ())] = self.named_alias(node, code.alias)
            return
        local = self.node_local(node)
        self.emit(node, local, code, shape_comment(node.out, self.shape_names))
        self.vars[(node.name, ())] = T(local, node.out)


def _stream_test(node: Node, labels: Any, cfg: dict[str, Any], this: str, args: Any,
                 out_names: Any, stream: registry.Stream) -> str:
    """Rust lines running the layer on its golden input in two chunks, the second resuming
    from the first's final state; the joined output and the final state must match the
    whole-sequence goldens."""
    x = next(t for _, t in leaves(args) if isinstance(t, T))
    td = stream.time_dim(cfg, x.rank)
    first, second = _out_names_suffixed(out_names, "a"), _out_names_suffixed(out_names, "b")
    every = {p for p, _ in leaves(out_names)}
    out_a, out_b = _at(first, (0,)), _at(second, (0,))
    resume = stream.some([_at(first, p) for p in stream.state_paths])
    kind, module = rust_str(EntryKind.STREAM), rust_str(node.target)
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
        f'report.check({kind}, {module}, "output", &joined, '
        f'&g({rust_str(golden_node_key(0, node.name, "out", "0").split(".", 1)[1])})?)?;',
    ]
    for p in stream.state_paths:
        key = golden_node_key(0, node.name, "out", path_key(p)).split(".", 1)[1]
        label = _at(labels, p).lstrip("_") or path_key(p)
        lines.append(f"report.check({kind}, {module}, {rust_str(label)}, "
                     f"&{_at(second, p)}, &g({rust_str(key)})?)?;")
    lines.append("}")
    return "\n".join(lines)


def _out_names_suffixed(out_names: Any, suffix: str) -> Any:
    if isinstance(out_names, str):
        return f"{out_names}_{suffix}"
    return tuple(_out_names_suffixed(n, suffix) for n in out_names)


def _at(value: Any, path: tuple[int, ...]) -> Any:
    for i in path:
        if not isinstance(value, (tuple, list)) or i >= len(value):
            return None
        value = value[i]
    return value


def _model_dtype(manifest: Manifest) -> str:
    """The Candle dtype the parity test loads the weights as: the parameters' (the first
    input's for a model without any)."""
    first_param = next((p["dtype"] for info in manifest.modules.values()
                        for p in info.parameters.values()), None)
    name = first_param or manifest.node(manifest.inputs[0]).out.dtype
    variant = DType(name).candle
    if variant is None:
        raise UnsupportedError(manifest.name, [Problem(
            f"the model's dtype {name} has no Candle equivalent",
            hint="convert the model with `dtype:` in models.yaml")])
    return variant


def _weight_normed(init: Callable[[str], str], dim: int | None) -> Callable[[str], str]:
    """A layer's constructor reading its `VarBuilder` through the runtime's `weight_norm`."""
    arg = "None" if dim is None else f"Some({int(dim)})"
    return lambda vb: init(f"weight_norm({vb}, {arg})?")


def lower(manifest: Manifest) -> ModelIR:
    """Lower a manifest to Rust-ready decisions, or raise UnsupportedError listing every problem."""
    lo = _Lowering(manifest)
    for _, v in leaves(manifest.output):
        if not isinstance(v, (Ref, Param)):
            lo.problems.append(Problem(f"forward() returns {v!r}; only tensors and (nested) tuples "
                                       "or lists of tensors are supported"))
    struct = ""
    tree = None
    arg_locals: list[str] = []
    if not lo.problems:
        live = live_nodes(manifest)
        arg_locals = [lo.local(a, names.RESERVED_ARGS) for a in manifest.inputs]  # first
        lo.collect_fields(live)
        for param in _params_in(manifest.output):
            lo.collect_param(param.name)
        # the model's type takes its name first: nested structs and imports stay clear of it
        imported = _imported_names(lo.field_uses | _layer_uses(manifest, live)) | {
            "ParityCase", "DType", "Result", "Tensor", "VarBuilder", "D", "Module", "ModuleT",
            "IndexOp", "Device"}
        struct = names.model_struct(manifest.name, imported)
        tree = build_tree(lo.fields, {q: info.type for q, info in manifest.modules.items()},
                          struct, {f"{struct}State", f"{struct}Output", *names.PRELUDE_TYPES,
                                   *imported})
        lo.access = tree.access
        lo.struct_of = {q: s.name for s in tree.structs for q in s.modules}
        used = _uses_of(live, manifest.output)
        lo.find_folds(live, used)
        lo.lower_all(live, used)
    if lo.problems:  # each once (a layer's check and its emitter may find the same thing)
        raise UnsupportedError(manifest.name, list(dict.fromkeys(lo.problems)))

    out_leaves = list(leaves(manifest.output))
    returned = [lo.param(v, "self") if isinstance(v, Param) else lo.vars[(v.node, v.path)]
                for _, v in out_leaves]
    fresh, operand = lo.fresh, lo.tensor_of
    lo.stmts, methods, renamed, called = extract_methods(lo.stmts, manifest.blocks, lo.struct_of,
                                                         tree.access, operand, fresh,
                                                         lo.local.bases)
    methods = {**lo.loop_methods, **methods}
    called = sorted([*lo.loop_called, *called], key=lambda b: (b.start, -b.end))
    block_tests = [_block_test(b, tree.access[b.module]) for b in called]
    if called:
        lo.test_uses.add("candle_nn::Module")
    returned = [replace(t, name=renamed.get(t.name, t.name)) for t in returned]
    lo.stmts, renamed = fold_loops(lo.stmts, set(arg_locals),
                                   {t.name.split("[")[0] for t in returned}, fresh)
    returned = [replace(t, name=renamed.get(t.name, t.name)) for t in returned]
    lo.stmts, renamed = compact_names(lo.stmts, set(arg_locals), names.RESERVED_LOCALS,
                                      lo.local.bases)
    returned = [replace(t, name=rename(t.name, renamed)) for t in returned]
    if any(m.is_module for m in methods.values()):
        lo.uses.add("candle_nn::Module")
    rets = []
    for t in returned:
        # clone what cannot be moved out: a `&Tensor` argument, a field or Vec element, a
        # value returned twice
        rets.append(f"{t.name}.clone()" if t.is_ref or not t.movable or sum(
            1 for r in returned if r.name == t.name) > 1 else t.name)
    output_alias = None
    if isinstance(manifest.output, (Ref, Param)):
        return_type, return_expr = "Tensor", rets[0]
    else:
        return_type = _type_of(manifest.output)
        return_expr = _tuple_expr(manifest.output, iter(rets))
        if len(out_leaves) >= 3:  # name a long tuple rather than spell it out
            output_alias = (f"{struct}Output", return_type)
            return_type = output_alias[0]

    model_checks = []
    for path, ref in out_leaves:
        label = path_key(path)
        model_checks.append(Check(label, f"out{'_' + label.replace('.', '_') if len(out_leaves) > 1 else ''}",
                                  golden_output_key(0, path).split(".", 1)[1]))
    check_vars = iter(c.var for c in model_checks)
    out_pattern = _tuple_expr(manifest.output, check_vars)
    stmts = lo.stmts
    if lo.needs_device:  # creation ops make tensors where the inputs live
        stmts = [Stmt("device", f"{arg_locals[0]}.device()"), *stmts]
    lo.uses |= lo.field_uses
    test_uses = set(lo.test_uses) | {"candle_core::{DType, Result}"}
    args = [Arg(local, shape_comment(manifest.node(a).out, lo.shape_names) or "")
            for a, local in zip(manifest.inputs, arg_locals)]
    return ModelIR(
        name=manifest.name, struct=struct, factory=manifest.factory,
        doc_lines=[], uses=merge_uses(lo.uses), fields=tree.fields, structs=tree.structs,
        args=args,
        stmts=stmts, return_type=return_type, return_expr=return_expr,
        layer_tests=lo.layer_tests, model_checks=model_checks,
        input_keys=[(a, golden_input_key(0, a).split(".", 1)[1]) for a in manifest.inputs],
        out_pattern=out_pattern, state_fields=lo.state_fields, output_alias=output_alias,
        num_cases=manifest.num_cases, atol=manifest.atol, rtol=manifest.rtol,
        dtype=_model_dtype(manifest), test_uses=merge_uses(test_uses),
        methods=methods, block_tests=block_tests, folds=lo.folds,
        warnings=[line for w in manifest.warnings
                  for line in textwrap.wrap(f"Trace note: {w}", 95, subsequent_indent="  ")],
    )


def _block_test(block: Block, access: str) -> LayerTest:
    """A user module's or container's `forward` on the inputs and outputs of its recorded call."""
    inputs = [(f"in{i}", golden_node_key(0, block.name, "in", str(i)).split(".", 1)[1])
              for i in range(len(block.args))]
    outs = list(leaves(block.out))
    out_vars = [f"out{i}" for i in range(len(outs))]
    pattern = out_vars[0] if not isinstance(block.out, tuple) else f"({', '.join(out_vars)})"
    call = f"model.{access}.forward({', '.join(f'&{v}' for v, _ in inputs)})?"
    checks = [Check(path_key(path) or "0", var,
                    golden_node_key(0, block.name, "out", path_key(path)).split(".", 1)[1])
              for (path, _), var in zip(outs, out_vars)]
    return LayerTest(block.name, block.module, "block", inputs, Stmt(pattern, call), checks)


def _layer_uses(manifest: Manifest, live: list[Node]) -> set[str]:
    """The `use` paths of every registered layer the forward pass calls."""
    out: set[str] = set()
    for node in live:
        if node.op == NodeOp.CALL_MODULE and node.target in manifest.modules:
            layer = registry.layer_for(manifest.modules[node.target].type)
            if layer is not None:
                out |= set(layer.uses + layer.call_uses)
    return out


def _imported_names(uses: set[str]) -> set[str]:
    imported = set()
    for path in uses:
        m = _USE_RE.match(path)
        items = m.group(3).split(",") if m and m.group(3) is not None else [path.rsplit(":", 1)[-1]]
        imported.update(i.strip() for i in items if i.strip() and i.strip() != "self")
    return imported


def _type_of(structure: Any) -> str:
    if isinstance(structure, (Ref, Param)):
        return "Tensor"
    inner = [_type_of(v) for v in structure]
    return "(" + ", ".join(inner) + ("," if len(inner) == 1 else "") + ")"


def _tuple_expr(structure: Any, rets: Any) -> str:
    if isinstance(structure, (Ref, Param)):
        return next(rets)
    inner = [_tuple_expr(v, rets) for v in structure]
    return "(" + ", ".join(inner) + ("," if len(inner) == 1 else "") + ")"


_COMPARISON = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def _has_difference(sym: Any) -> bool:
    """Whether a size expression subtracts (a usize difference may wrap where Python's goes
    negative)."""
    if not isinstance(sym, SymInt):
        return isinstance(sym, int) and sym < 0
    return _difference(sym) is not None or sym.kind == SymKind.NEG \
        or _has_difference(sym.a) or _has_difference(sym.b)


def _assign_in_place(body: list[Stmt],
                     states: dict[str, str]) -> tuple[list[Stmt], dict[str, str]]:
    """A loop's pass with the statement that makes a new state assigning the state itself
    (`(h, c) = self.cell.forward(..)?`, no `let (h_1, c_1)` and `h = h_1` later), where every
    name it binds is a new state and no later statement reads the old ones; the renames made."""
    done: dict[str, str] = {}
    for i in range(len(body)):
        s = body[i]
        made = defs(s)
        if s.header or not made or s.pattern.startswith("mut ") \
                or not all(d in states and d not in done for d in made):
            continue
        renames = {d: states[d] for d in made}
        later = " ".join(f"{b.pattern} {b.expr}" for b in body[i + 1:])
        if any(old in LOCAL_NAME.findall(later) for old in renames.values()):
            continue
        body = [*body[:i],
                replace(s, pattern="", expr=f"{rename(s.pattern, renames)} = {s.expr}",
                        comment=s.comment and rename(s.comment, renames)),
                *(replace(b, pattern=rename(b.pattern, renames), expr=rename(b.expr, renames),
                          comment=b.comment and rename(b.comment, renames))
                  for b in body[i + 1:])]
        done.update(renames)
    return body, done


def _difference(sym: Any) -> tuple[Any, Any] | None:
    """`(a, b)` when `sym` is the size `a - b` (also written `a + (-b)`), else None."""
    if not isinstance(sym, SymInt) or _float_valued(sym):
        return None
    if sym.kind == SymKind.SUB:
        return sym.a, sym.b
    if sym.kind == SymKind.ADD and isinstance(sym.b, int) and not isinstance(sym.b, bool) \
            and sym.b < 0:
        return sym.a, -sym.b
    return None


def _float_valued(sym: Any) -> bool:
    """Whether a size expression is a float in Python (`t / s`, `t * 1.5`), not an int."""
    if not isinstance(sym, SymInt):
        return isinstance(sym, float)
    kind = SymKind(sym.kind)
    if kind == SymKind.TRUEDIV:
        return True
    if kind == SymKind.DIM or kind.unary and kind != SymKind.NEG:
        return False
    return _float_valued(sym.a) or _float_valued(sym.b)
