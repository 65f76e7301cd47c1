"""`if` statements on sizes, joined from trace cases that take different sides.

`if t % 4 != 0: x = F.pad(x, (0, 4 - t % 4))` runs the pad in a trace case of length 13 and not
in one of length 16, so the two cases record different graphs. The tracer keeps each such test
as a `Decision` (its comparison, with the sizes as symbolic integers) and marks the nodes run in
the `if`'s body or `else` part with it. Here, for each decision whose outcome differs between the
cases, the nodes it ran are taken out of every case, and the cases are checked to agree
everywhere else. Each case then gets, in their place:

- a BRANCH node: its test (`op`, `left`, `right`), which side each case took (`taken`), and the
  values that leave it: for each value read after the `if` that differs with the side, the value
  the body gives (`then`) and the one the `else` part gives (`else`, often a value from before
  the `if`); its outputs are those values, in the case's side;
- the nodes of the body, then those of the `else` part, each marked with the BRANCH node and its
  side (a case that did not run a side holds the nodes of a case that did, so that every case
  lists the same nodes);
- the nodes after the `if`, reading the BRANCH node's outputs.

Nested `if`s on sizes, a test of several comparisons, and branches inside loops over time are
left as they are: the cases then differ, which `record` reports.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pycandle.manifest import Ref, at_path
from pycandle.record.tracer import CaseTrace, Decision, DraftNode
from pycandle.record.steps import rename_golden, renamed_refs


class _Apart(Exception):
    """The cases differ in a way a branch does not explain."""


def join(traces: list[CaseTrace]) -> tuple[list[CaseTrace] | None, str | None]:
    """The traces with their branches on sizes joined; else None and, where an `if` on a size
    took different sides in the cases, why it cannot be joined (naming it)."""
    try:
        return _join(traces), None
    except _Apart as e:
        return None, str(e) or None


def _key(d: Decision) -> tuple:
    return d.where, d.op, repr(d.left), repr(d.right)


def _join(traces: list[CaseTrace]) -> list[CaseTrace]:
    decided = [t.decisions for t in traces]
    if len({len(d) for d in decided}) != 1 or any(
            [_key(d) for d in ds] != [_key(d) for d in decided[0]] for ds in decided[1:]):
        raise _Apart
    # the tests that went either way (a test of several comparisons: either, as far as known)
    joined = [k for k in range(len(decided[0]))
              if len({ds[k].value for ds in decided}) > 1
              or not all(ds[k].simple for ds in decided)]
    if not joined:
        raise _Apart
    first = [ds[joined[0]] for ds in decided]
    sides_taken = "different paths in the trace cases" if not all(d.simple for d in first) \
        else " and ".join(f"{'its body' if d.value else 'its else part'} in case {c}"
                          for c, d in enumerate(first))
    where = f"the `if` at {first[0].where} takes {sides_taken}, and cannot be written as a " \
            "Rust `if`: "
    try:
        return _joined(traces, decided, joined)
    except _Apart as e:
        raise _Apart(where + str(e)) from None


def _joined(traces: list[CaseTrace], decided: list[list[Decision]],
            joined: list[int]) -> list[CaseTrace]:
    if any(not ds[k].simple for ds in decided for k in joined):
        raise _Apart("its test makes more than one comparison")
    # each case: its nodes with each joined decision's nodes cut out (runs by decision)
    cut = [_cut(t, joined) for t in traces]
    shapes = [[(n.op, n.target) for n in nodes] for nodes, _ in cut]
    if any(s != shapes[0] for s in shapes[1:]):
        raise _Apart("the trace cases differ outside its sides too")
    taken = {k: [ds[k].value for ds in decided] for k in joined}
    taken_by = {(k, side): [c for c, v in enumerate(taken[k]) if v == side]
                for k in joined for side in (True, False)}
    # canonical names: case 0's for the nodes outside the branches; a side's nodes as the
    # first case that ran it names them, kept apart from the rest
    names: list[dict[str, str]] = [{} for _ in traces]
    canonical = [n.name for n in cut[0][0]]
    for c, (nodes, _) in enumerate(cut):
        names[c].update({n.name: canon for n, canon in zip(nodes, canonical)})
    taken_names = set(canonical) | {b.name for b in traces[0].blocks}
    sides: dict[tuple[int, bool], list[DraftNode]] = {}
    body_names: dict[tuple[int, bool, str], str] = {}
    branch_names = {}
    for k in joined:
        name, i = "branch", 1
        while name in taken_names:
            name, i = f"branch_{i}", i + 1
        taken_names.add(name)
        branch_names[k] = name
        for side in (True, False):
            cases = taken_by[(k, side)]
            runs = [cut[c][1][k] for c in cases]
            if any([(n.op, n.target) for n in r] != [(n.op, n.target) for n in runs[0]]
                   for r in runs[1:]):
                raise _Apart("one side runs different operations in different trace cases")
            for r, c in zip(runs, cases):
                for n, first in zip(r, runs[0]):
                    base, i = first.name, 1
                    if (k, side, first.name) not in body_names:
                        while base in taken_names:
                            base, i = f"{first.name}_{i}", i + 1
                        taken_names.add(base)
                        body_names[(k, side, first.name)] = base
                    names[c][n.name] = body_names[(k, side, first.name)]
            sides[(k, side)] = [] if not cases else _renamed_side(
                cut[cases[0]][1][k], names[cases[0]], branch_names[k], side)
    # what leaves each branch: values read after it that differ with the side taken
    leaving: dict[int, list[tuple[Ref, Ref]]] = {k: [] for k in joined}
    side_of = {}
    for k in joined:
        for side in (True, False):
            for n in sides[(k, side)]:
                side_of[n.name] = (k, side)

    def leave(values: list[Any]) -> list[Any]:
        """One value read after the branches, seen in each case (renamed): a BRANCH node's
        output where it differs with the side."""
        if all(isinstance(v, Ref) for v in values):
            if len(set(values)) == 1 and values[0].node not in side_of:
                return values
            ks = {side_of[v.node][0] for v in values if v.node in side_of}
            if len(ks) != 1:
                raise _Apart("a value read after it comes from two `if`s")
            (k,) = ks
            by_side: dict[bool, set[Ref]] = {True: set(), False: set()}
            for c, v in enumerate(values):
                by_side[taken[k][c]].add(v)
            if any(len(s) != 1 for s in by_side.values()):
                raise _Apart("a value read after it comes from different places in trace cases "
                             "that took the same side")
            pair = (by_side[True].pop(), by_side[False].pop())
            for v, side in zip(pair, (True, False)):
                if v.node in side_of and side_of[v.node] != (k, side):
                    raise _Apart("a value read after it comes from the side not taken")
            if pair not in leaving[k]:
                leaving[k].append(pair)
            return [Ref(branch_names[k], (leaving[k].index(pair),))] * len(values)
        first = values[0]
        if isinstance(first, (tuple, list)) and all(
                type(v) is type(first) and len(v) == len(first) for v in values):
            columns = [leave([v[i] for v in values]) for i in range(len(first))]
            return [type(first)(col[c] for col in columns) for c in range(len(values))]
        if isinstance(first, dict) and all(isinstance(v, dict) and v.keys() == first.keys()
                                           for v in values):
            columns = {key: leave([v[key] for v in values]) for key in first}
            return [{key: col[c] for key, col in columns.items()} for c in range(len(values))]
        if isinstance(first, slice) and all(isinstance(v, slice) for v in values):
            parts = [leave([getattr(v, a) for v in values]) for a in ("start", "stop", "step")]
            return [slice(*(p[c] for p in parts)) for c in range(len(values))]
        if any(isinstance(v, Ref) for v in values):
            raise _Apart("a value read after it is a tensor in some trace cases only")
        return values

    renamed = [[replace(n, name=names[c][n.name], args=renamed_refs(n.args, names[c]),
                        kwargs=renamed_refs(n.kwargs, names[c])) for n in nodes]
               for c, (nodes, _) in enumerate(cut)]
    for j in range(len(canonical)):
        if renamed[0][j].op == "branch":
            continue
        args = leave([r[j].args for r in renamed])
        kwargs = leave([r[j].kwargs for r in renamed])
        for c in range(len(traces)):
            renamed[c][j] = replace(renamed[c][j], args=args[c], kwargs=kwargs[c])
    outputs = leave([renamed_refs(t.output, names[c]) for c, t in enumerate(traces)])
    metas = [{n.name: n.out for n in trace_nodes} for trace_nodes in
             ([*r, *(n for k in joined for side in (True, False) for n in sides[(k, side)])]
              for r in renamed)]
    out_traces = []
    for c, t in enumerate(traces):
        nodes: list[DraftNode] = []
        for n in renamed[c]:
            if n.op != "branch":
                nodes.append(n)
                continue
            k = n.args[0]
            d = t.decisions[k]
            own = {side: list(sides[(k, side)]) for side in (True, False)}
            mine = _renamed_side(cut[c][1][k], names[c], branch_names[k], taken[k][c])
            own[taken[k][c]] = mine
            value = [pair[0 if taken[k][c] else 1] for pair in leaving[k]]
            out = tuple(_meta_of(metas[c], v, mine) for v in value)
            nodes.append(DraftNode(
                branch_names[k], "branch", "if",
                (d.op, renamed_refs(d.left, names[c]), renamed_refs(d.right, names[c])),
                {"then": [p[0] for p in leaving[k]], "else": [p[1] for p in leaving[k]],
                 "taken": taken[k]}, out, d.where))
            nodes += [*own[True], *own[False]]
        at = {n.name: i for i, n in enumerate(nodes)}
        blocks = []
        for b in t.blocks:
            inside = [at.get(names[c].get(m.name)) for m in t.nodes[b.start:b.end]]
            if b.branch is not None or not inside or None in inside \
                    or any(nodes[i].in_branch for i in inside):
                continue  # a block in a branch, or around one, stays inline
            blocks.append(replace(b, name=names[c].get(b.name, b.name), start=inside[0],
                                  end=inside[-1] + 1, args=renamed_refs(b.args, names[c]),
                                  out=renamed_refs(b.out, names[c])))
        folded = {d.warning for k, d in enumerate(t.decisions) if k in joined}
        out_traces.append(replace(
            t, nodes=nodes, output=outputs[c], blocks=blocks,
            golden=rename_golden(t.golden, names[c], set()),
            warnings=[w for w in t.warnings if w not in folded]))
    # the block names must agree too: position by position, as case 0 names them
    first = out_traces[0].blocks
    for c, t in enumerate(out_traces[1:], start=1):
        if [b.module for b in t.blocks] != [b.module for b in first]:
            out_traces[c] = replace(t, blocks=[])
            out_traces[0] = replace(out_traces[0], blocks=[])
    return out_traces


def _cut(t: CaseTrace, joined: list[int]) -> tuple[list[DraftNode], dict[int, list[DraftNode]]]:
    """The case's nodes with each joined decision's run replaced by a placeholder, and the runs."""
    runs: dict[int, list[DraftNode]] = {k: [] for k in joined}
    nodes: list[DraftNode] = []
    after: dict[str | None, list[int]] = {}  # the node each test came after -> its decisions
    for k in joined:
        after.setdefault(t.decisions[k].after, []).append(k)
    nodes += [DraftNode(f"@{k}", "branch", "if", (k,), {}, None, None) for k in after.get(None, ())]
    for n in t.nodes:
        if n.branch is not None and n.branch[0] in runs:
            if n.step is not None or n.in_loop is not None:
                raise _Apart("it is inside a loop over time")
            runs[n.branch[0]].append(n)
            continue
        nodes.append(n)
        nodes += [DraftNode(f"@{k}", "branch", "if", (k,), {}, None, None)
                  for k in after.get(n.name, ())]
    # a run is the nodes right after its placeholder in the case's own order
    order = {n.name: i for i, n in enumerate(t.nodes)}
    for k, run in runs.items():
        if run and [order[n.name] for n in run] != list(range(order[run[0].name],
                                                              order[run[0].name] + len(run))):
            raise _Apart("its side runs in pieces (it holds another `if` on a size?)")
    return nodes, runs


def _renamed_side(run: list[DraftNode], names: dict[str, str], branch: str,
                  side: bool) -> list[DraftNode]:
    return [replace(n, name=names[n.name], args=renamed_refs(n.args, names),
                    kwargs=renamed_refs(n.kwargs, names), branch=None, in_branch=[branch, side])
            for n in run]


def _meta_of(metas: dict[str, Any], ref: Ref, own: list[DraftNode]) -> Any:
    mine = {n.name: n.out for n in own}
    return at_path(mine.get(ref.node, metas.get(ref.node)), ref.path)
