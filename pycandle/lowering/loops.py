"""Python loops over a `ModuleList` or `Sequential`, back as Rust `for` loops.

The trace unrolls `for conv in self.convolutions: x = F.relu(conv(x))` into one group of
statements per block. Here the forward body is searched for a run of such groups: group k
reaches only `self.<field>[k]`, the groups are the same statements up to that index and the names
of their own locals, and one value (the loop state) flows from each group into the next and
nowhere else. Such a run becomes

    let mut x = x;
    for conv in &self.convolutions {
        let conv_0 = conv.layer_0.forward(&x)?;
        x = pycandle_runtime::ops::relu(&conv_0)?;
    }

and later statements read the loop state where they read the last group's value. Anything that
does not fit (a block's value used after the loop, a group that differs, state carried in two
values) stays unrolled, which is always correct.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable

# a local variable in Rust text (not a field, path segment or method after `.` or `::`)
LOCAL_NAME = re.compile(r"(?<![\w.:'\"])[a-z_][a-z0-9_]*\b")
_ELEMENT = re.compile(r"\bself\.([a-z_][a-z0-9_]*)\[(\d+)\]")
_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_TOKEN = re.compile(r"&?[A-Za-z_@#][A-Za-z0-9_@#]*|\s+|.")


@dataclass(frozen=True)
class Stmt:
    pattern: str  # what `let` binds (`x`, `(a, (b, _c))`); empty for a bare expression
    expr: str
    comment: str | None = None
    source: str | None = None  # the Python line it ports: statements of one line form a group
    loop_var: tuple[str, str] | None = None  # (field, variable) of the Python `for` it ran in
    header: str | None = None  # a `for` loop: `conv in &self.convolutions`, its body in `body`
    body: tuple[Stmt, ...] = ()
    at: int | None = None  # the index of the graph node it ports


def defs(s: Stmt) -> list[str]:
    return [n for n in _NAME.findall(s.pattern) if n != "mut"]


def _uses(text: str, known: set[str]) -> list[str]:
    return [m for m in LOCAL_NAME.findall(text) if m in known]


def rename(text: str, names: dict[str, str]) -> str:
    """`text` with the locals in `names` renamed (not fields, paths or methods of that name)."""
    if not names:
        return text
    return LOCAL_NAME.sub(lambda m: names.get(m.group(0), m.group(0)), text)


def reads_renamed(s: Stmt, names: dict[str, str]) -> Stmt:
    """`s` reading the locals in `names` under their new names, in a loop's body too."""
    return replace(s, expr=rename(s.expr, names), header=s.header and rename(s.header, names),
                   body=tuple(reads_renamed(b, names) for b in s.body))


def fold_loops(stmts: list[Stmt], args: set[str], tail_uses: set[str],
               fresh: Callable[[str], str]) -> tuple[list[Stmt], dict[str, str]]:
    """`stmts` with each unrolled loop over a `Vec` field folded into a `for` loop, and the
    renames later code needs (the last block's value -> the loop state). `args` are forward()'s
    `&Tensor` arguments, `tail_uses` the locals the return value reads, `fresh` makes a local."""
    renames: dict[str, str] = {}
    while True:
        for field in dict.fromkeys(m.group(1) for s in stmts for m in _ELEMENT.finditer(s.expr)):
            folded = _fold(stmts, field, args, tail_uses | set(renames), fresh)
            if folded is not None:
                stmts, new = folded
                renames = {k: new.get(v, v) for k, v in renames.items()} | new
                tail_uses = {new.get(u, u) for u in tail_uses}
                break
        else:
            return stmts, renames


def _fold(stmts: list[Stmt], field: str, args: set[str], tail_uses: set[str],
          fresh: Callable[[str], str]) -> tuple[list[Stmt], dict[str, str]] | None:
    at: dict[int, list[int]] = {}
    for i, s in enumerate(stmts):
        for m in _ELEMENT.finditer(s.expr):
            if m.group(1) == field:
                at.setdefault(int(m.group(2)), []).append(i)
    n = len(at)
    if n < 2 or sorted(at) != list(range(n)):
        return None
    firsts = [min(at[k]) for k in range(n)]
    length = firsts[1] - firsts[0]
    if length <= 0 or any(firsts[k + 1] - firsts[k] != length for k in range(n - 1)):
        return None
    for shift in range(length):  # a group may start before its first use of the block
        starts = [f - shift for f in firsts]
        if starts[0] < 0 or starts[-1] + length > len(stmts):
            break
        if any(max(at[k]) >= starts[k] + length for k in range(n)):
            continue
        folded = _try(stmts, field, starts, length, args, tail_uses, fresh)
        if folded is not None:
            return folded
    return None


def _canonical(group: list[Stmt], field: str, k: int, outer: set[str]) -> tuple[list[str], list[str], list[str]]:
    """The group's statements with block k written `self.<field>[#]` and its own locals
    numbered; also its locals in order and the outer locals it reads."""
    own: dict[str, str] = {}
    reads: list[str] = []
    lines = []
    for s in group:
        expr = re.sub(rf"\bself\.{field}\[{k}\]", f"self.{field}[#]", s.expr)
        for u in _uses(expr, outer):
            if u not in own and u not in reads:
                reads.append(u)
        expr = rename(expr, own)
        for d in defs(s):
            own[d] = f"@{len(own)}"
        lines.append(f"{rename(s.pattern, own)} = {expr} // {s.source}")
    return lines, list(own), reads


def _starts_alike(first: list[str], second: list[str], init: str) -> bool:
    """Whether the first group (tokens) is the second with its input `@in` read from `init`;
    `init` may be read elsewhere too (`h = x; for b in self.blocks: h = b(h) + x`), and a
    `&Tensor` argument is passed as it is where a local is borrowed."""
    if len(first) != len(second):
        return False
    return any(b in ("@in", "&@in") for b in second) and all(
        a == b or (b in ("@in", "&@in") and a in (init, f"&{init}"))
        for a, b in zip(first, second))


def text_of(s: Stmt) -> str:
    """Everything a statement reads, a loop's body included."""
    return "\n".join([s.expr, *(text_of(b) for b in s.body)])


def _try(stmts: list[Stmt], field: str, starts: list[int], length: int, args: set[str],
         tail_uses: set[str], fresh: Callable[[str], str]) -> tuple[list[Stmt], dict[str, str]] | None:
    n = len(starts)
    groups = [stmts[s:s + length] for s in starts]
    known = set(args) | {d for s in stmts for d in defs(s)}
    canon = [_canonical(g, field, k, known) for k, g in enumerate(groups)]
    # the loop state: the one local of group k-1 that group k reads, at the same place each time
    carried = None
    for k in range(1, n):
        prev_own = canon[k - 1][1]
        from_prev = [r for r in canon[k][2] if r in prev_own]
        if len(from_prev) != 1 or carried not in (None, prev_own.index(from_prev[0])):
            return None
        carried = prev_own.index(from_prev[0])
    state_of = [canon[k][1][carried] for k in range(n)]  # each group's new state

    def shape(k: int, old: str) -> str:
        return rename("\n".join(canon[k][0]), {old: "@in"})

    first = _TOKEN.findall("\n".join(canon[0][0]))
    second = _TOKEN.findall(shape(1, state_of[0]))
    init = next((r for r in canon[0][2] if _starts_alike(first, second, r)), None)
    if init is None or any(shape(k, state_of[k - 1]) != shape(1, state_of[0])
                           for k in range(2, n)):
        return None
    # each group's locals live in the group, its state also in the next group (the last one's
    # after the loop); the old state is read only until the new one is made
    reads = [(j, u) for j, s in enumerate(stmts) for u in _uses(text_of(s), known)]
    reads += [(len(stmts), u) for u in sorted(tail_uses)]
    end = starts[-1] + length

    def within(j: int, *ks: int) -> bool:
        return any(0 <= k < n and starts[k] <= j < starts[k] + length for k in ks)

    for k, g in enumerate(groups):
        for name in canon[k][1]:
            scope = (k, k + 1) if name == state_of[k] and k < n - 1 else (k,)
            if name == state_of[k] and k == n - 1:
                continue
            if any(u == name and not within(j, *scope) for j, u in reads):
                return None
        state_at = next(j for j, s in enumerate(g) if state_of[k] in defs(s))
        if g[state_at].pattern != state_of[k]:  # the state is a whole value, not a tuple part
            return None
        old = init if k == 0 else state_of[k - 1]
        if any(old in _uses(s.expr, known) for s in g[state_at + 1:]):
            return None
    if any(u == init and j >= starts[1] for j, u in reads):  # read again, in or after the loop
        carry = state_of[0]  # the first pass's value: its name is free with the pass unrolled
        start = Stmt(f"mut {carry}", f"{init}.clone()", source=groups[0][0].source)
    else:
        carry = init
        value = f"{init}.clone()" if init in args else init
        start = Stmt(f"mut {carry}", value, source=groups[0][0].source)
        made = next((j for j in range(starts[0]) if init in defs(stmts[j])), None)
        if made is not None and stmts[made].pattern == init:  # `let mut x = ...` where it is made
            stmts = [*stmts[:made], replace(stmts[made], pattern=f"mut {init}"),
                     *stmts[made + 1:]]
            start = None
    if any(s.body for g in groups for s in g):  # loops in loops stay as they are
        return None
    loop_var = fresh(next((s.loop_var[1] for s in groups[0] if s.loop_var
                           and s.loop_var[0] == field), None)
                     or (field[:-1] if field.endswith("s") and len(field) > 3 else "layer"))
    # the body is written from the second group, whose input is a local like the state
    names: dict[str, str] = {state_of[0]: carry, state_of[1]: carry}
    for name in canon[1][1]:
        if name != state_of[1]:
            stem = re.sub(rf"^{field}_1(?=_|$)", loop_var, name)
            names[name] = fresh(f"{stem}_out" if stem == loop_var else stem)
    body = []
    for s in groups[1]:
        expr = rename(s.expr.replace(f"self.{field}[1]", "@element"), names)
        expr = expr.replace("@element", loop_var)
        if state_of[1] in defs(s):
            body.append(replace(s, pattern="", expr=f"{carry} = {expr}", loop_var=None))
        else:
            body.append(replace(s, pattern=rename(s.pattern, names), expr=expr, loop_var=None))
    loop = Stmt("", "", source=groups[0][0].source, header=f"{loop_var} in &self.{field}",
                body=tuple(body))
    rest = [reads_renamed(s, {state_of[-1]: carry}) for s in stmts[end:]]
    head = stmts[:starts[0]] if start is None else [*stmts[:starts[0]], start]
    return [*head, loop, *rest], {state_of[-1]: carry}


def compact_names(stmts: list[Stmt], keep: set[str], reserved: frozenset[str],
                  bases: dict[str, str]) -> tuple[list[Stmt], dict[str, str]]:
    """Renumber the locals `stmts` define from the names they were made from, in order, now
    that folding and method extraction have dropped many (`x_6` -> `x_1` when `x_1`..`x_5`
    are gone). `keep` holds names that stay (forward()'s arguments)."""
    used = set(keep)
    renames: dict[str, str] = {}

    def visit(s: Stmt) -> None:
        for d in defs(s):
            plain = d.lstrip("_")
            if plain in renames or plain in keep:  # `let mut x = x;` before a loop
                continue
            base = bases.get(plain, plain)
            name, k = base, 1
            while name in used or name in reserved:
                name, k = f"{base}_{k}", k + 1
            used.add(name)
            renames[plain] = name
            if d != plain:
                renames[d] = "_" + name
        for b in s.body:
            visit(b)

    for s in stmts:
        visit(s)

    def apply(s: Stmt) -> Stmt:
        return replace(s, pattern=rename(s.pattern, renames), expr=rename(s.expr, renames),
                       header=s.header and rename(s.header, renames),
                       body=tuple(apply(b) for b in s.body))

    return [apply(s) for s in stmts], renames
