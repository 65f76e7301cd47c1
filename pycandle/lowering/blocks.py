"""User modules and containers get a `forward` of their own, which their parent calls.

Lowering writes the model's forward pass flat, statement by statement. Each recorded call of a
user module or container (`manifest.blocks`) ran a contiguous run of those statements; when the
run reads only the call's arguments and the module's own sublayers, it becomes the body of a
method on the module's struct, and the run in the parent becomes one call:
`let x = self.convolutions[0].forward(&x)?;`. A struct gets its method only when every call of
every one of its instances gives the same body, so the method is right for each of them; a block
whose run reaches anything else (another module's layer, a value computed outside it, the
recurrent state) stays inline. Innermost blocks go first, so a block's body calls the methods of
the blocks inside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Callable

from pycandle import names
from pycandle.lowering.loops import (
    LOCAL_NAME, Stmt, defs, fold_loops, reads_renamed, rename, text_of,
)
from pycandle.manifest import Block, leaves

# a method's locals: generated code's own locals in a forward are the model's, not the tests'
_RESERVED = names.RUST_KEYWORDS | names.MODEL_LOCALS | names.RUNTIME_FUNCTIONS

@dataclass(frozen=True)
class Method:
    """A struct's `forward`: `impl Module` when it takes one tensor and gives one."""

    struct: str
    params: tuple[str, ...]
    return_type: str
    stmts: tuple[Stmt, ...]
    return_expr: str

    @property
    def is_module(self) -> bool:
        return len(self.params) == 1 and self.return_type == "Tensor"


@dataclass(frozen=True)
class _Extracted:
    block: Block
    method: Method
    first: int  # the block's statements are stmts[first:end]
    end: int
    call: Stmt  # what the parent runs instead


def extract_methods(stmts: list[Stmt], blocks: tuple[Block, ...], struct_of: dict[str, str],
                    access: dict[str, str], local_of: Callable[[Any], Any],
                    fresh: Callable[[str], str], bases: dict[str, str],
                    ) -> tuple[list[Stmt], dict[str, Method], dict[str, str], list[Block]]:
    """`stmts` with each block that can be a method replaced by its call, the methods by
    struct name, the parent's locals renamed (a call's value takes the name it is assigned
    to, else the module's) and the calls that run a method. `struct_of` maps a module to its struct, `access` to its Rust path
    from the model, `local_of` a reference to the parent's operand for it (a `T`), `fresh`
    makes a new local of the parent, `bases` the name each local was made from."""
    methods: dict[str, Method] = {}
    renamed: dict[str, str] = {}
    called: list[Block] = []  # the calls that run a method
    failed: set[str] = set()
    pending = sorted(blocks, key=lambda b: (b.end - b.start, b.start))
    while pending:
        inner = [b for b in pending
                 if not any(o is not b and b.start <= o.start and o.end <= b.end
                            and (o.start, o.end) != (b.start, b.end) for o in pending)]
        by_struct: dict[str, list[Block]] = {}
        for b in inner:
            by_struct.setdefault(struct_of.get(b.module, ""), []).append(b)
        for struct, calls in by_struct.items():
            every = [b for b in pending if struct_of.get(b.module, "") == struct]
            if len(every) != len(calls):
                continue  # some calls of this struct still hold inner blocks: later
            def current(ref: Any) -> Any:  # the parent's operand, as renamed so far
                t = local_of(ref)
                return t if t is None else replace(t, name=renamed.get(t.name, t.name))

            done = None if not struct or struct in failed else [
                _extract(stmts, b, struct, access, current, bases) for b in calls]
            if done and all(done) and len({_canonical(d.method) for d in done}) == 1:
                alike = len({_canonical(d.method, comments=True) for d in done}) == 1
                methods[struct] = done[0].method if alike else _plain(done[0].method)
                called += [d.block for d in done]
                for d in sorted(done, key=lambda d: -d.first):  # from the end: indices hold
                    call, new = d.call, _call_names(d, fresh)
                    call = replace(call, pattern=rename(call.pattern, new))
                    rest = [reads_renamed(s, new) for s in stmts[d.end:]]
                    stmts = [*stmts[:d.first], call, *rest]
                    renamed = {k: new.get(v, v) for k, v in renamed.items()} | new
            else:
                failed.add(struct)
            pending = [b for b in pending if b not in every]
        if not any(struct_of.get(b.module, "") in by_struct for b in inner):
            break
    return stmts, methods, renamed, sorted(called, key=lambda b: (b.start, -b.end))


def _call_names(d: _Extracted, fresh: Callable[[str], str]) -> dict[str, str]:
    """New names for what a call gives: the Python names it is assigned to (`x = block(x)`,
    `a, b = self.gate(x, y)`), else the module's for a single value."""
    outs = defs(d.call)
    assign = d.block.assign
    if len(outs) == 1:
        return {outs[0]: fresh(assign if isinstance(assign, str) else d.block.name)}
    if isinstance(assign, list) and len(assign) == len(outs):
        return {o: fresh(a) for o, a in zip(outs, assign) if isinstance(a, str)}
    return {}


def _canonical(m: Method, comments: bool = False) -> str:
    """The method with its locals numbered (calls name them apart: `h`, `h_1`), and its shape
    comments if asked: the methods of two calls are the same when these are."""
    own: dict[str, str] = {}
    lines = []
    for s in m.stmts:
        expr = rename(s.expr, own)
        for d in defs(s):
            own[d] = f"v{len(own)}_"
        lines.append(f"{rename(s.pattern, own)} = {expr} // {s.source}"
                     + (f" // {s.comment}" if comments else ""))
    return "\n".join([*m.params, m.return_type, *lines, rename(m.return_expr, own)])


def _plain(m: Method) -> Method:
    """The method without its shape comments (instances run on different sizes)."""
    return replace(m, stmts=tuple(replace(s, comment=None) for s in m.stmts))


def _extract(stmts: list[Stmt], block: Block, struct: str, access: dict[str, str],
             local_of: Callable[[Any], Any], bases: dict[str, str]) -> _Extracted | None:
    idx = [i for i, s in enumerate(stmts) if s.at is not None and block.start <= s.at < block.end]
    if not idx or idx != list(range(idx[0], idx[-1] + 1)) or block.module not in access:
        return None
    first, end = idx[0], idx[-1] + 1
    run = stmts[first:end]
    if any(s.body or s.header or not s.pattern for s in run):  # loops, state updates
        return None
    path = f"self.{access[block.module]}"
    text = "\n".join(s.expr for s in run)
    if re.search(r"\bstate\.", text) or any(
            not m.group(0).startswith((f"{path}.", f"{path}[")) and m.group(0) != path
            for m in re.finditer(r"\bself\.[\w.\[\]]+", text)):
        return None
    inputs = [local_of(a) for a in block.args]
    outputs = [local_of(r) for _, r in leaves(block.out)]
    if any(t is None or "[" in t.name for t in (*inputs, *outputs)):
        return None
    own = {d for s in run for d in defs(s)}
    in_names = {t.name for t in inputs}
    if len(in_names) != len(inputs) or any(t.name not in own for t in outputs):
        return None
    # the run reads only its arguments; later statements read only its outputs
    known = in_names | {d for s in stmts for d in defs(s)}
    for s in run:
        for u in LOCAL_NAME.findall(s.expr):
            if u in known and u not in own and u not in in_names:
                return None
    out_names = {t.name for t in outputs}
    for s in stmts[end:]:
        for u in LOCAL_NAME.findall(text_of(s)):
            if u in own and u not in out_names:
                return None
    # locals of the method: the parent's, less the module's prefix (`convolutions_0_0` -> `0`
    # -> `layer_0`); arguments take forward()'s parameter names
    taken: set[str] = set()

    def local(base: str) -> str:
        stem = names.rust_ident(base, frozenset()).rstrip("_")
        name, k = stem, 1
        while name in taken or name in _RESERVED:
            name, k = f"{stem}_{k}", k + 1
        taken.add(name)
        return name

    params = tuple(local(p) for p in block.params)
    prefix = names.rust_ident(block.module, frozenset()) + "_"
    renames: dict[str, str] = {}
    for d in (d for s in run for d in defs(s)):
        stem = d.lstrip("_")
        stem = bases.get(stem, stem)  # numbered apart in the parent, not here: `x_5` -> `x`
        if stem.startswith(prefix) and len(stem) > len(prefix):
            stem = stem[len(prefix):]
        renames[d] = ("_" if d.startswith("_") else "") + local(stem)
    own_path = re.compile(re.escape(path) + r"(?![\w\[])")
    body = []
    for s in run:
        expr = own_path.sub("self", s.expr)
        mapping = dict(renames)
        for i, t in enumerate(inputs):  # `&Tensor` arguments: a parent's local is borrowed
            if not t.is_ref:
                expr = re.sub(rf"&{t.name}\b(?![.\[])", f"@{i}@", expr)
                if re.search(rf"(?<![\w.]){t.name}\b(?!\.)", expr):
                    return None  # moved, not borrowed
            mapping[t.name] = f"@{i}@"
        expr = rename(expr, mapping)
        for i, p in enumerate(params):
            expr = expr.replace(f"@{i}@", p)
        body.append(replace(s, pattern=rename(s.pattern, renames), expr=expr, at=None,
                            loop_var=None))
    if any(re.search(r"(?<![\w.])device\b", s.expr) for s in body):  # creation ops
        if not params or "device" in renames.values():
            return None
        body.insert(0, Stmt("device", f"{params[0]}.device()"))
    if all(s.source == block.source for s in body):  # a container: its lines are the call's
        body = [replace(s, source=None) for s in body]
    returned = [renames[t.name] for t in outputs]
    # a list of blocks run in turn inside the method is a loop there too
    body, looped = fold_loops(body, set(params), set(returned), local)
    returned = [looped.get(r, r) for r in returned]
    if isinstance(block.out, tuple):
        return_type = "(" + ", ".join("Tensor" for _ in returned) + ")"
        return_expr = "(" + ", ".join(returned) + ")"
    else:
        return_type, return_expr = "Tensor", returned[0]
    method = Method(struct, params, return_type, tuple(body), return_expr)
    call_args = ", ".join(t.name if t.is_ref else f"&{t.name}" for t in inputs)
    pattern = "(" + ", ".join(t.name for t in outputs) + ")" if isinstance(block.out, tuple) \
        else outputs[0].name
    loop_var = (names.rust_ident(block.loop[0]), names.rust_ident(block.loop[1])) \
        if block.loop else None
    call = Stmt(pattern, f"{path}.forward({call_args})?", run[-1].comment if
                len(outputs) == 1 else None, block.source, loop_var, at=block.start)
    return _Extracted(block, method, first, end, call)

