"""Loops over sizes and tensors, folded back from the trace.

The trace runs `for t in range(x.size(1)): h, c = self.cell(x[:, t], (h, c))` once per frame, so
two trace cases of different lengths record graphs of different lengths. Here each case's
passes of such a loop (the tracer marks every node with the pass it ran in, `tracer.Step`) are
checked to run the same operations, and folded into one LOOP node followed by the nodes of one
pass:

- a value read the same way in every pass stays a reference (to a node before the loop, or to
  a node of the same pass);
- a value read from the loop's start in pass 0 and from the previous pass after that is loop
  state: the pass reads `Ref(loop, (i,))`, the LOOP node holds its initial value and the value
  that replaces it at the end of a pass;
- an integer that is the pass number (`x[:, t]`), or grows with it (`x[:, t:t + 1]`), becomes
  an expression of the symbolic integer STEP;
- after the loop, the last pass's loop state is the LOOP node's result `i`, and a list of one
  value from every pass in order (`torch.stack(outs, 1)`) is one of its collected results.

Anything else (a value of one pass used after the loop other than as state or collected, passes
that differ) leaves the loop as it is, unrolled; `_merge` then reports it when the trace cases
disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from pycandle.enums import SymKind
from pycandle.manifest import Ref, SymInt, TensorMeta, at_path, map_refs, refs_in
from pycandle.record.tracer import CaseTrace, DraftNode
from pycandle.shapes import combine

_UNBIND = ("torch.unbind", "Tensor.unbind")
_GOLDEN = re.compile(r"c(\d+)\.([A-Za-z0-9_]+)\.(in|out)\.(.+)")


class _Differs(Exception):
    """The passes of a loop cannot be written as one pass."""


@dataclass
class _Run:
    loop: str  # file:line of the `for`
    index: str | None
    element: str | None
    passes: list[list[int]]  # node indexes of each pass

    @property
    def start(self) -> int:
        return self.passes[0][0]

    @property
    def end(self) -> int:
        return self.passes[-1][-1] + 1


@dataclass
class Folded:
    trace: CaseTrace
    counts: dict[str, int]  # loop -> its number of passes in this case
    reasons: dict[str, str]  # loop -> why it stayed unrolled


def runs(nodes: list[DraftNode]) -> list[_Run]:
    """Each loop's passes: consecutive nodes of one loop, split where the pass changes."""
    found: list[_Run] = []
    current: _Run | None = None
    for i, node in enumerate(nodes):
        step = node.step
        if step is None:
            current = None
            continue
        if current is None or current.loop != step.loop or step.k < len(current.passes) - 1:
            current = _Run(step.loop, step.index, step.element, [])
            found.append(current)
        if step.k >= len(current.passes):
            current.passes.append([])
        current.passes[-1].append(i)
    return found


def fold(trace: CaseTrace) -> Folded:
    """`trace` with every loop over sizes or tensors that can be folded folded."""
    counts: dict[str, int] = {}
    reasons: dict[str, str] = {}
    for run in reversed(runs(trace.nodes)):  # from the end: earlier indexes stay valid
        counts[run.loop] = len(run.passes)
        try:
            trace = _fold_run(trace, run)
        except _Differs as e:
            reasons[run.loop] = str(e)
    return Folded(trace, counts, reasons)


def _fold_run(trace: CaseTrace, run: _Run) -> CaseTrace:
    nodes = trace.nodes
    n = len(run.passes)
    if run.loop in trace.escapes:
        raise _Differs(f"whether it goes on is decided by tensor values (at "
                       f"{trace.escapes[run.loop]}), so its trip count is not a size")
    if n < 2:
        raise _Differs("it ran fewer than two passes")
    shape = [(nodes[i].op, nodes[i].target) for i in run.passes[0]]
    if any([(nodes[i].op, nodes[i].target) for i in p] != shape for p in run.passes[1:]):
        raise _Differs("its passes run different operations")
    where = {nodes[i].name: (k, j) for k, p in enumerate(run.passes) for j, i in enumerate(p)}
    taken = {n_.name for n_ in nodes} | {b.name for b in trace.blocks}
    name, k = "steps", 1
    while name in taken:
        name, k = f"steps_{k}", k + 1
    body_names = [nodes[i].name for i in run.passes[0]]
    carries: dict[tuple[Ref, tuple[int, tuple[int, ...]]], int] = {}
    nodes_by_name = {n_.name: n_ for n_ in nodes}

    def ref(values: list[Ref]) -> Ref:
        locs = [where.get(r.node) for r in values]
        paths = {r.path for r in values}
        if all(loc is None for loc in locs) and len(set(values)) == 1:
            return values[0]
        if len(paths) == 1 and all(loc is not None and loc[0] == k and loc[1] == locs[0][1]
                                   for k, loc in enumerate(locs)):
            return Ref(body_names[locs[0][1]], values[0].path)
        if len({r.path for r in values[1:]}) == 1 and locs[0] is None and all(
                loc is not None and loc[0] == k - 1 and loc[1] == locs[1][1]
                for k, loc in enumerate(locs) if k):
            init, after = values[0], (locs[1][1], values[1].path)
            a = at_path(nodes_by_name[init.node].out, init.path)
            b = at_path(nodes_by_name[values[1].node].out, values[1].path)
            if not (isinstance(a, TensorMeta) and a == b):
                raise _Differs("its loop state changes shape or type from pass to pass")
            return Ref(name, (carries.setdefault((init, after), len(carries)),))
        unbound = nodes_by_name.get(values[0].node)
        if all(loc is None and r.node == values[0].node for loc, r in zip(locs, values)) \
                and [r.path for r in values] == [(k,) for k in range(n)] \
                and unbound is not None and unbound.target in _UNBIND:
            return element(unbound)
        raise _Differs("a pass reads a value that is neither from before the loop, from the "
                       "same pass, nor from the pass before")

    selects: dict[str, DraftNode] = {}  # unbind node -> its element of the pass

    def element(unbound: DraftNode) -> Ref:
        """`x_t` of `for x_t in x.unbind(d)`: `x.select(d, t)` in the pass."""
        if unbound.name not in selects:
            x = unbound.args[0] if unbound.args else unbound.kwargs.get("input")
            d = unbound.args[1] if len(unbound.args) > 1 else unbound.kwargs.get("dim", 0)
            local, k = f"{unbound.name}_step", 1
            while local in taken:
                local, k = f"{unbound.name}_step_{k}", k + 1
            taken.add(local)
            selects[unbound.name] = DraftNode(
                local, "call_function", "torch.select",
                (x, d, SymInt(SymKind.STEP, Ref(name, ()), None)), {}, unbound.out[0],
                run.loop, assign=run.element, in_loop=name)
        return Ref(selects[unbound.name].name, ())

    def unify(values: list[Any]) -> Any:
        first = values[0]
        if all(isinstance(v, Ref) for v in values):
            return ref(values)
        if isinstance(first, (tuple, list)) and all(
                type(v) is type(first) and len(v) == len(first) for v in values):
            return type(first)(unify([v[i] for v in values]) for i in range(len(first)))
        if isinstance(first, dict) and all(isinstance(v, dict) and v.keys() == first.keys()
                                           for v in values):
            return {key: unify([v[key] for v in values]) for key in first}
        if isinstance(first, slice) and all(isinstance(v, slice) for v in values):
            return slice(*(unify([getattr(v, a) for v in values])
                           for a in ("start", "stop", "step")))
        if all(type(v) is type(first) and v == first for v in values):
            return first
        if all(type(v) is int for v in values):
            # `x[:, t]`, `x[:, t:t + 1]`, `x[:, t * hop:(t + 1) * hop]`: a * t + b
            a, b = values[1] - values[0], values[0]
            if a > 0 and b >= 0 and values == [a * k + b for k in range(n)]:
                sym = SymInt(SymKind.STEP, Ref(name, ()), None)
                sym = sym if a == 1 else SymInt(SymKind.MUL, sym, a)
                return sym if b == 0 else SymInt(SymKind.ADD, sym, b)
        if any(isinstance(v, SymInt) for v in values) \
                and all(isinstance(v, SymInt) or type(v) is int for v in values):
            template = _per_pass(values, SymInt(SymKind.STEP, Ref(name, ()), None))
            if template is not None:
                return template
        raise _Differs(f"an argument changes from pass to pass in a way not written as the "
                       f"pass number: {', '.join(repr(v) for v in values[:4])}")

    body = []
    for j, first in enumerate(run.passes[0]):
        seen = [nodes[p[j]] for p in run.passes]
        args, kwargs = unify([(s.args, s.kwargs) for s in seen])
        body.append(replace(nodes[first], args=args, kwargs=kwargs, step=None, in_loop=name))
    # the user modules each pass calls, alike in every pass: calls of the body
    in_pass = [[b for b in trace.blocks if p[0] <= b.start and b.end <= p[-1] + 1]
               for p in run.passes]
    looped: list[tuple[Any, ...]] = []  # (block of pass 0, its args, its out, every pass's)
    if all([b.module for b in bs] == [b.module for b in in_pass[0]] for bs in in_pass[1:]):
        for j, first in enumerate(in_pass[0]):
            seen = [bs[j] for bs in in_pass]
            before = dict(carries)
            try:
                args, out_ = unify([b.args for b in seen]), unify([b.out for b in seen])
            except _Differs:
                args = None
            if args is None or len(carries) != len(before):
                carries.clear()
                carries.update(before)
                continue
            looped.append((first, args, out_, seen))
    nexts = [Ref(body_names[j], path) for (_, (j, path)) in carries]
    collected: dict[tuple[int, tuple[int, ...]], int] = {}

    lists: dict[tuple[int, tuple[int, ...]], str | None] = {}

    def after(value: Any, named: str | None = None) -> Any:
        if isinstance(value, Ref):
            loc = where.get(value.node)
            if loc is None:
                return value
            key = (loc[1], value.path)
            state = next((i for (_, a), i in carries.items() if a == key), None)
            if loc[0] != n - 1 or state is None:
                raise _Differs("a value of one of its passes is used after it, other than as "
                               "loop state or in a list of one value from every pass")
            return Ref(name, (state,))
        if isinstance(value, (tuple, list)) and len(value) == n and all(
                isinstance(v, Ref) for v in value):
            locs = [where.get(v.node) for v in value]
            if all(loc is not None for loc in locs) and [loc[0] for loc in locs] == \
                    list(range(n)) and len({(loc[1], v.path) for loc, v in zip(locs, value)}) == 1:
                key = (locs[0][1], value[0].path)
                if lists.get(key) is None:
                    lists[key] = named
                return Ref(name, (len(carries) + collected.setdefault(key, len(collected)),))
        if isinstance(value, (tuple, list)):
            return type(value)(after(v) for v in value)
        if isinstance(value, dict):
            return {k: after(v) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(after(value.start), after(value.stop), after(value.step))
        return value

    rest = [replace(nd, args=tuple(after(a, (nd.arg_names or ())[i:i + 1] and nd.arg_names[i])
                                   for i, a in enumerate(nd.args)), kwargs=after(nd.kwargs))
            for nd in nodes[run.end:]]
    output = after(trace.output)
    collects = [Ref(body_names[j], path) for (j, path) in collected]
    inits = [init for (init, _) in carries]
    out = tuple([*(at_path(nodes_by_name[r.node].out, r.path) for r in inits),
                 *([at_path(nodes_by_name[r.node].out, r.path)] for r in collects)])
    # `for start in range(0, t, hop)`: as many passes as the range has items, at any length
    length = nodes[run.start].step.length
    count = length[0] if length is not None and length[1] == n else n
    # the Rust loop counts passes: under the name of the Python loop's variable if that counts
    # them too (`for t in range(x.size(1))`), not if it steps by more (`range(0, t, hop)`)
    counts = all(nodes[p[0]].step.at == k for k, p in enumerate(run.passes))
    loop = DraftNode(name, "loop", "step" if run.index and not counts else run.index or "t",
                     (count, inits),
                     {"next": nexts, "collect": collects,
                      "lists": [lists.get(key) for key in collected]}, out, run.loop)
    new_nodes = [*nodes[:run.start], loop, *selects.values(), *body, *rest]
    # goldens: the body's layers on their inputs of the second pass (state no longer zero)
    shown = run.passes[min(1, n - 1)]
    renamed = {nodes[i].name: nodes[run.passes[0][j]].name for j, i in enumerate(shown)}
    for first, _, _, seen in looped:
        renamed[seen[min(1, n - 1)].name] = first.name
    in_loop = {b.name for bs in in_pass for b in bs}
    golden = rename_golden(trace.golden, renamed, (set(where) | in_loop) - set(renamed))
    # an unbind that only fed the loop goes: its output's length differs between cases
    read = {r.node for nd in new_nodes for r in refs_in((nd.args, nd.kwargs))}
    read |= {r.node for r in refs_in(output)}
    new_nodes = [nd for nd in new_nodes if nd.name not in selects or nd.name in read]
    at = {nd.name: i for i, nd in enumerate(new_nodes)}
    blocks = []
    for first, args, out_, _ in looped:
        kept = [at[nd.name] for nd in nodes[first.start:first.end] if nd.name in at]
        if kept:
            blocks.append(replace(first, start=kept[0], end=kept[-1] + 1, args=args, out=out_,
                                  step=None))
    for b in trace.blocks:
        if b.start < run.end and b.end > run.start:
            continue  # a block in the loop (above), or around it: inline
        kept = [at[nd.name] for nd in nodes[b.start:b.end] if nd.name in at]
        if kept:
            blocks.append(replace(b, start=kept[0], end=kept[-1] + 1, args=after(b.args),
                                  out=after(b.out)))
    blocks.sort(key=lambda b: (b.start, -b.end))  # in the order they started
    return replace(trace, nodes=new_nodes, output=output, golden=golden, blocks=blocks)


_NEUTRAL = {SymKind.ADD: 0, SymKind.MUL: 1}  # what traced arithmetic leaves out


def _per_pass(values: list[Any], step: SymInt) -> Any:
    """One size expression of the pass number `step` that every pass's size is, or None: with
    `start` from `range(0, t, hop)`, `min(hop, t - start)` is `min(4, t)`, `min(4, t - 4)`,
    `min(4, t - 8)` in passes 0, 1, 2, and `min(4, t - 4 * step)` in the loop. The passes after
    the first give the expression (a number that differs between them grows linearly with the
    pass number); it must then rebuild every pass's size, the first one's too, where Python's
    arithmetic dropped the `- 0`."""
    k = 1 if len(values) > 2 else 0  # pass 0's sizes are simplified: later passes show more

    def generalise(u: Any, v: Any) -> Any:
        if type(u) is int and type(v) is int:
            if u == v:
                return u
            slope, offset = v - u, u - (v - u) * k
            return combine(SymKind.ADD, combine(SymKind.MUL, step, slope), offset)
        if isinstance(u, SymInt) and isinstance(v, SymInt) and u.kind == v.kind \
                and u.kind not in (SymKind.DIM, SymKind.STEP):
            return _tidy(SymInt(u.kind, generalise(u.a, v.a), generalise(u.b, v.b)), step)
        if u == v:
            return u
        if isinstance(v, SymInt) and v.kind in _NEUTRAL:
            # pass 0 of `start + n` is `n`: Python's arithmetic dropped the `0 +`
            neutral = _NEUTRAL[v.kind]
            if type(v.a) is int:
                return generalise(SymInt(v.kind, neutral, u), v)
            if type(v.b) is int:
                return generalise(SymInt(v.kind, u, neutral), v)
        raise _Differs("")

    try:
        template = generalise(values[k], values[k + 1])
    except _Differs:
        return None
    if all(_at_pass(template, i) == v for i, v in enumerate(values)):
        return template
    return None


def _tidy(sym: SymInt, step: SymInt) -> SymInt:
    """`t + (-4 * step + c)` as `(t + c) - 4 * step`: sizes stay non-negative in Rust."""
    b = sym.b
    if sym.kind != SymKind.ADD or not isinstance(b, SymInt):
        return sym
    offset = 0
    if b.kind == SymKind.ADD and type(b.b) is int and isinstance(b.a, SymInt):
        b, offset = b.a, b.b
    if b.kind == SymKind.MUL and b.a == step and type(b.b) is int and b.b < 0:
        return SymInt(SymKind.SUB, combine(SymKind.ADD, sym.a, offset),
                      combine(SymKind.MUL, step, -b.b))
    return sym


def _at_pass(sym: Any, k: int) -> Any:
    """`sym` with the pass number `k` put in, simplified as Python's traced arithmetic
    (pycandle.shapes) simplifies: the size the tracer recorded in pass `k`."""
    if not isinstance(sym, SymInt) or sym.kind == SymKind.DIM:
        return sym
    if sym.kind == SymKind.STEP:
        return k
    kind = SymKind(sym.kind)
    a, b = _at_pass(sym.a, k), _at_pass(sym.b, k)
    if not isinstance(a, SymInt) and not isinstance(b, SymInt):
        return kind.apply(a, b)
    if kind.unary:
        return SymInt(kind, a, None)
    return combine(kind, a, b)


def renamed_refs(value: Any, names: dict[str, str]) -> Any:
    """`value` reading the nodes in `names` under their new names."""
    return map_refs(value, lambda r: Ref(names.get(r.node, r.node), r.path))


def rename_golden(golden: dict[str, Any], names: dict[str, str],
                  dropped: set[str]) -> dict[str, Any]:
    """Golden tensors with their nodes' and blocks' names changed, and those of `dropped`
    left out."""
    out = {}
    for key, value in golden.items():
        m = _GOLDEN.fullmatch(key)
        if m and m.group(2) in dropped:
            continue
        if m and m.group(2) in names:
            key = f"c{m.group(1)}.{names[m.group(2)]}.{m.group(3)}.{m.group(4)}"
        out[key] = value
    return out


def align(traces: list[CaseTrace]) -> list[CaseTrace]:
    """Name each case's nodes and blocks as case 0 names them, position by position (after
    folding, later nodes of a case with more passes were numbered further on)."""
    first = traces[0]
    out = [first]
    for t in traces[1:]:
        names = {a.name: b.name for a, b in zip(t.nodes, first.nodes)}
        names.update({a.name: b.name for a, b in zip(t.blocks, first.blocks)})
        if all(a == b for a, b in names.items()):
            out.append(t)
            continue
        nodes = [replace(nd, name=names[nd.name], args=renamed_refs(nd.args, names),
                         kwargs=renamed_refs(nd.kwargs, names),
                         in_loop=names.get(nd.in_loop, nd.in_loop)) for nd in t.nodes]
        blocks = [replace(b, name=names[b.name], args=renamed_refs(b.args, names),
                          out=renamed_refs(b.out, names)) for b in t.blocks]
        golden = rename_golden(t.golden, names, set())
        out.append(replace(t, nodes=nodes, blocks=blocks, golden=golden,
                           output=renamed_refs(t.output, names)))
    return out
