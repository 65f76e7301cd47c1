"""The Python names a traced value is assigned to, so that generated locals read like the source.

A node is named after an assignment target when the instruction that produced it computes the
whole right-hand side of the assignment: `x = self.conv(x)`, `outputs, _ = self.lstm(x)`. The
match is by source position (the instruction's `co_positions` against the statement's AST), so a
value computed inside the expression (`self.conv(x)` in `x = F.relu(self.conv(x))`) keeps its
own name, and each pass of a loop names its own value.
"""

from __future__ import annotations

import ast
import functools
import types
from typing import Any

# A target: a name, or a list of targets for tuple unpacking; None where nothing is named
# (`_`, an attribute, a subscript, a starred target).
Target = Any

_Position = tuple[int | None, int | None, int | None, int | None]


def assignment_target(frame: types.FrameType) -> Target:
    """The target the value being computed at `frame`'s current instruction is assigned to."""
    position = _position(frame)
    return None if position is None else _targets(frame.f_code.co_filename).get(position)


def argument_names(frame: types.FrameType) -> tuple[str | None, ...] | None:
    """The names passed as the positional arguments of the call `frame` is making, where the
    call is written as `f(a, b)` and an argument is a plain name (`outputs` in
    `torch.stack(outputs, dim=1)`), else None for that argument."""
    position = _position(frame)
    return None if position is None else _calls(frame.f_code.co_filename).get(position)


def _position(frame: types.FrameType) -> _Position | None:
    """The source position of the frame's current instruction; None in comprehensions,
    lambdas and module-level code."""
    code = frame.f_code
    if code.co_name.startswith("<"):
        return None
    positions = _positions(code)
    index = frame.f_lasti // 2
    return positions[index] if 0 <= index < len(positions) else None


@functools.lru_cache(maxsize=64)
def _calls(filename: str) -> dict[_Position, tuple[str | None, ...]]:
    found: dict[_Position, tuple[str | None, ...]] = {}
    for call in ast.walk(_parsed(filename)):
        if isinstance(call, ast.Call) and call.args:
            names = tuple(a.id if isinstance(a, ast.Name) and a.id.isascii() else None
                          for a in call.args)
            if any(names):
                found[(call.lineno, call.end_lineno, call.col_offset, call.end_col_offset)] = \
                    names
    return found


def loop_over(frame: types.FrameType) -> list[str] | None:
    """`[attribute, variable]` of the innermost loop `for variable in self.attribute:` (or over
    `enumerate(self.attribute)`) running the frame's current line, if any."""
    if frame.f_code.co_name.startswith("<"):
        return None
    line = frame.f_lineno
    inside = [(start, loop) for (start, end), loop in _loops(frame.f_code.co_filename).items()
              if start <= line <= end]
    return list(max(inside)[1]) if inside else None


def time_loop(frame: types.FrameType) -> tuple[int, tuple[str, ...]] | None:
    """`(line, variables)` of the innermost `for` running the frame's current line that is not a
    loop over a module attribute: a loop over sizes or tensors, whose passes the trace unrolls.
    `variables` are the loop's target names (`t` in `for t in range(x.size(1))`)."""
    if frame.f_code.co_name.startswith("<"):
        return None
    line = frame.f_lineno
    inside = [(start, loop) for (start, end), loop in _time_loops(frame.f_code.co_filename).items()
              if start <= line <= end]
    return max(inside)[1] if inside else None


# An `if` statement's lines: (its line, its test's lines, its body's, its `else` part's or None)
IfLines = tuple[int, tuple[int, int], tuple[int, int], tuple[int, int] | None]


def if_testing(frame: types.FrameType) -> IfLines | None:
    """The innermost `if` whose test the frame's current line is in."""
    if frame.f_code.co_name.startswith("<"):
        return None
    line = frame.f_lineno
    inside = [i for i in _ifs(frame.f_code.co_filename) if i[1][0] <= line <= i[1][1]]
    return max(inside) if inside else None


def ifs_around(frame: types.FrameType) -> list[tuple[IfLines, bool]]:
    """The `if` statements whose body (True) or `else` part (False) runs the frame's current
    line, innermost first."""
    if frame.f_code.co_name.startswith("<"):
        return []
    line = frame.f_lineno
    found = []
    for i in _ifs(frame.f_code.co_filename):
        if i[2][0] <= line <= i[2][1]:
            found.append((i, True))
        elif i[3] is not None and i[3][0] <= line <= i[3][1]:
            found.append((i, False))
    return sorted(found, reverse=True)


@functools.lru_cache(maxsize=64)
def _ifs(filename: str) -> tuple[IfLines, ...]:
    found = []
    for stmt in ast.walk(_parsed(filename)):
        if isinstance(stmt, ast.If) and stmt.body:
            test = (stmt.test.lineno, stmt.test.end_lineno or stmt.test.lineno)
            body = (stmt.body[0].lineno, stmt.body[-1].end_lineno or stmt.body[-1].lineno)
            orelse = (stmt.orelse[0].lineno, stmt.orelse[-1].end_lineno
                      or stmt.orelse[-1].lineno) if stmt.orelse else None
            found.append((stmt.lineno, test, body, orelse))
    return tuple(found)


@functools.lru_cache(maxsize=64)
def _time_loops(filename: str) -> dict[tuple[int, int], tuple[int, tuple[str, ...]]]:
    """The body lines of each other `for` in a file -> (its line, its target names)."""
    over_modules = _loops(filename)
    found: dict[tuple[int, int], tuple[int, tuple[str, ...]]] = {}
    for loop in ast.walk(_parsed(filename)):
        if not isinstance(loop, ast.For) or not loop.body:
            continue
        body = (loop.body[0].lineno, loop.end_lineno or loop.lineno)
        if body in over_modules:
            continue
        variables = tuple(n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name))
        found[body] = (loop.lineno, variables)
    return found


def range_loop(frame: types.FrameType) -> int | None:
    """The line of the `for` whose header iterates the `range(...)` the frame's current line
    makes (`for start in range(0, t, hop):`), if it does."""
    if frame.f_code.co_name.startswith("<"):
        return None
    line = frame.f_lineno
    inside = [loop for (start, end), loop in _range_headers(frame.f_code.co_filename).items()
              if start <= line <= end]
    return max(inside) if inside else None


@functools.lru_cache(maxsize=64)
def _range_headers(filename: str) -> dict[tuple[int, int], int]:
    """The lines of each `for ... in range(...)` header's `range` call -> the `for`'s line."""
    found: dict[tuple[int, int], int] = {}
    for loop in ast.walk(_parsed(filename)):
        over = loop.iter if isinstance(loop, ast.For) else None
        if isinstance(over, ast.Call) and isinstance(over.func, ast.Name) \
                and over.func.id == "range":
            found[(over.lineno, over.end_lineno or over.lineno)] = loop.lineno
    return found


@functools.lru_cache(maxsize=64)
def _loops(filename: str) -> dict[tuple[int, int], tuple[str, str]]:
    """The body lines of each `for` over a module attribute in a file -> (attribute, variable)."""
    found: dict[tuple[int, int], tuple[str, str]] = {}
    for loop in ast.walk(_parsed(filename)):
        if not isinstance(loop, ast.For) or not loop.body:
            continue
        over, target = loop.iter, loop.target
        if isinstance(over, ast.Call) and isinstance(over.func, ast.Name) \
                and over.func.id == "enumerate" and len(over.args) == 1 \
                and isinstance(target, ast.Tuple) and len(target.elts) == 2:
            over, target = over.args[0], target.elts[1]
        if isinstance(over, ast.Attribute) and isinstance(over.value, ast.Name) \
                and over.value.id == "self" and isinstance(target, ast.Name) \
                and target.id.isascii() and over.attr.isascii():
            found[(loop.body[0].lineno, loop.end_lineno or loop.lineno)] = (over.attr, target.id)
    return found


@functools.lru_cache(maxsize=64)
def _parsed(filename: str) -> ast.Module:
    try:
        with open(filename, encoding="utf-8") as f:
            return ast.parse(f.read(), filename)
    except (OSError, SyntaxError, ValueError):
        return ast.Module(body=[], type_ignores=[])


@functools.lru_cache(maxsize=256)
def _positions(code: types.CodeType) -> tuple[_Position, ...]:
    return tuple(code.co_positions())


@functools.lru_cache(maxsize=64)
def _targets(filename: str) -> dict[_Position, Target]:
    """Source position of each assigned expression in a file -> its target."""
    found: dict[_Position, Target] = {}
    for stmt in ast.walk(_parsed(filename)):
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = _target(stmt.targets[0]), stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, value = _target(stmt.target), stmt.value
        else:
            continue
        if target is not None:
            found[(value.lineno, value.end_lineno, value.col_offset, value.end_col_offset)] = target
    return found


def _target(node: ast.expr) -> Target:
    if isinstance(node, ast.Name):  # ASCII names only: Rust locals are ASCII here
        return node.id if node.id != "_" and node.id.isascii() else None
    if isinstance(node, (ast.Tuple, ast.List)):
        parts = [_target(e) for e in node.elts]
        return parts if any(p is not None for p in parts) else None
    return None
