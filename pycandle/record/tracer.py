"""Eager graph capture.

The model runs on real inputs under a `TorchFunctionMode` that records every torch-level call
(functions, Tensor methods, operators, indexing) made outside supported layers; forward pre/post
hooks make each PyTorch layer an opaque leaf whose inputs and outputs are kept as golden tensors.
Data-dependent Python simply runs: branches resolve by the actual values, and a warning names the
line where a tensor became a Python bool or number.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.nn.utils.rnn import PackedSequence
from torch.overrides import TorchFunctionMode

import pycandle
from pycandle import registry
from pycandle.names import RESERVED_LOCALS, rust_ident
from pycandle.manifest import (
    PACK, PAD, DType, Param, Ref, TensorMeta, golden_node_key, leaves, path_key,
)
from pycandle import shapes
from pycandle.record.assignments import (
    argument_names, assignment_target, if_testing, ifs_around, loop_over, range_loop,
    time_loop,
)
from pycandle.shapes import (
    BUILTINS, ShapeFloat, ShapeInt, TracedNumber, TracedSize, traced_range, traced_size,
)

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_SHAPES_FILE = shapes.__file__
_PYCANDLE_DIR = os.path.dirname(pycandle.__file__) + os.sep

# Calls that turn tensor data into Python values: the trace bakes the value seen.
_DATA_ESCAPES = {
    "Tensor.__bool__", "Tensor.item", "Tensor.__float__", "Tensor.__int__", "Tensor.__index__",
    "Tensor.tolist", "Tensor.numpy", "Tensor.__complex__",
}

# Calls that read a tensor's sizes: the trace hands back ShapeInts that remember the source.
_SIZE_READS = {"Tensor.shape", "Tensor.size", "Tensor.__len__", "Tensor.numel"}

_DTYPE_NAMES = {
    torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
    torch.bfloat16: "bfloat16", torch.int64: "int64", torch.int32: "int32", torch.int16: "int16",
    torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool",
}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def _unparametrized(cls: type) -> type:
    """The class a module had before a parametrization was registered on it (torch then swaps
    in a subclass, `ParametrizedConv1d`); any other class as it is."""
    if cls.__module__ == "torch.nn.utils.parametrize" and cls.__name__.startswith("Parametrized"):
        return cls.__bases__[0]
    return cls


def torch_type_name(cls: type) -> str:
    """`torch.nn.LSTM` for PyTorch's layers, `module.Class` for anything else. A layer with a
    parametrization is named as the layer it was: record describes its parametrizations in the
    config."""
    cls = _unparametrized(cls)
    if cls.__module__.startswith("torch.nn.") and getattr(torch.nn, cls.__name__, None) is cls:
        return f"torch.nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def is_torch_layer(cls: type) -> bool:
    return _unparametrized(cls).__module__.startswith("torch.nn.")


_SPELLINGS: dict[int, str] | None = None


def _spelling_table() -> dict[int, str]:
    """id(callable) -> public spelling, e.g. "torch.linalg.norm", "Tensor.div"."""
    global _SPELLINGS
    if _SPELLINGS is None:
        table: dict[int, str] = {}
        namespaces = [
            ("torch.nn.functional", torch.nn.functional), ("torch.linalg", torch.linalg),
            ("torch.special", torch.special), ("torch.fft", torch.fft), ("torch", torch),
        ]
        for prefix, ns in namespaces:
            for attr in dir(ns):
                obj = getattr(ns, attr, None)
                if callable(obj):
                    table.setdefault(id(obj), f"{prefix}.{attr}")
        for attr in dir(torch.Tensor):
            obj = getattr(torch.Tensor, attr, None)
            if callable(obj):
                # Tensor methods take precedence: `Tensor.relu` is not `torch.relu`
                table[id(obj)] = f"Tensor.{attr}"
        _SPELLINGS = table
    return _SPELLINGS


def spelling(func: Any) -> str:
    name = _spelling_table().get(id(func))
    if name:
        return name
    owner = getattr(func, "__self__", None)
    if type(owner).__name__ == "getset_descriptor":  # a Tensor attribute such as `.shape`
        return f"Tensor.{owner.__name__}"
    qual = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
    qual = re.sub(r"^(_TensorBase|TensorBase|_C\._TensorBase)\.", "Tensor.", qual)
    module = getattr(func, "__module__", None)
    return f"{module}.{qual}" if module and not qual.startswith("Tensor.") else qual


def _user_frames() -> Iterator[types.FrameType]:
    """The frames in the user's code (not torch, not pycandle), innermost first, up to
    record's call of the model."""
    frame = sys._getframe(1)
    past_tracer = False  # the innermost frames are the tracer's own
    while frame is not None:
        filename = frame.f_code.co_filename
        in_pycandle = filename.startswith(_PYCANDLE_DIR)
        if in_pycandle and past_tracer:
            return  # back at record's call of the model
        past_tracer |= not in_pycandle
        if not (filename.startswith(_TORCH_DIR) or in_pycandle or filename.startswith("<")):
            yield frame
        frame = frame.f_back


def _shown_line(frame: types.FrameType, root: Path) -> str:
    return f"{_shown(Path(frame.f_code.co_filename), root)}:{frame.f_lineno}"


def user_source(root: Path) -> str | None:
    """file:line of the innermost frame in the user's code (not torch, not pycandle)."""
    frame = next(_user_frames(), None)
    return None if frame is None else _shown_line(frame, root)


def _forward_params(module: torch.nn.Module, count: int) -> tuple[str, ...] | None:
    """The names of the first `count` arguments of `module.forward` (`nn.Sequential`: `input`),
    or None when they have no names (`*args`)."""
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if len(params) < count or any(p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                                  for p in params[:count]):
        return None
    names_ = tuple(p.name for p in params[:count])
    return names_ if all(n.isascii() and n.isidentifier() for n in names_) else None


def _shown(path: Path, root: Path) -> str:
    """A source file as the manifest and the generated comments name it: inside an installed
    package from the package down (`julius/resample.py`, the same on every machine), else
    relative to the project, else as it is."""
    resolved = path.resolve()
    for entry in _package_dirs(tuple(sys.path)):
        if resolved.is_relative_to(entry):
            return resolved.relative_to(entry).as_posix()
    try:
        return resolved.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


@functools.lru_cache(maxsize=4)
def _package_dirs(entries: tuple[str, ...]) -> list[Path]:
    return [Path(e).resolve() for e in entries
            if Path(e).name in ("site-packages", "dist-packages")]


# Node names avoid the names generated code uses for its own locals (lowering would rename them).
_RESERVED = RESERVED_LOCALS


@dataclass
class DraftNode:
    name: str
    op: str
    target: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    out: Any  # structure of TensorMeta with one shape (this case)
    source: str | None
    assign: Any = None  # the Python assignment target of its value (`assignments.Target`)
    loop: list[str] | None = None  # `[attribute, variable]` of `for variable in self.attribute`
    step: Step | None = None  # the pass of a loop over sizes or tensors it ran in
    in_loop: str | None = None  # once the loop is folded (`steps`): the LOOP node it runs in
    arg_names: tuple[str | None, ...] | None = None  # Python names of its positional arguments
    branch: tuple[int, bool] | None = None  # (decision, side) of the `if` on a size it ran in
    in_branch: list[Any] | None = None  # once the branch is folded: [its BRANCH node, side]


@dataclass
class Decision:
    """An `if` on a size: its test compares a traced size (`if t % 4 != 0:`)."""

    where: str  # file:line of the `if`
    op: str  # "eq", "ne", "lt", "le", "gt", "ge" (`shapes.COMPARISONS`)
    left: Any  # SymInt, or a number
    right: Any
    value: bool
    after: str | None  # the last node recorded before the test
    warning: str
    simple: bool = True  # False when the test made more than this one comparison


@dataclass(frozen=True)
class Step:
    """A pass of a Python `for` loop that is not over a module attribute (`tracer._step`)."""

    loop: str  # file:line of the `for`
    k: int  # the pass, from 0
    index: str | None  # the loop's variable that counts (`t`, `i` of `enumerate`), if any
    element: str | None  # its variable that holds something else (`x_t` of `x.unbind(0)`)
    # its number of passes as a size and its value, when it iterates a `range` of sizes
    length: tuple[Any, int] | None = None
    at: int | None = None  # the value of `index` in this pass


@dataclass
class DraftBlock:
    """One call of a user module or container (not a supported layer): the nodes it ran are
    `nodes[start:end]`; its tensor arguments and results as references into the graph."""

    name: str
    module: str
    params: tuple[str, ...]  # the Python names of its forward()'s arguments, in order
    args: tuple[Any, ...]
    start: int
    end: int = -1
    out: Any = None
    source: str | None = None  # where it was called
    assign: Any = None
    loop: list[str] | None = None
    step: Step | None = None
    branch: tuple[int, bool] | None = None


@dataclass
class CaseTrace:
    nodes: list[DraftNode]
    output: Any
    golden: dict[str, torch.Tensor]
    warnings: list[str]
    result: Any = None  # forward()'s return value, detached copies
    blocks: list[DraftBlock] = field(default_factory=list)
    escapes: dict[str, str] = field(default_factory=dict)  # loop -> where it read a value
    decisions: list[Decision] = field(default_factory=list)


@dataclass
class _Frame:
    node: DraftNode


class GraphTracer(TorchFunctionMode):
    """Records one forward() call of `model` as a list of graph nodes."""

    def __init__(self, model: torch.nn.Module, root: Path, case: int):
        super().__init__()
        self.model = model
        self.root = root
        self.case = case
        self.nodes: list[DraftNode] = []
        self.golden: dict[str, torch.Tensor] = {}
        self.warnings: list[str] = []
        self._values: dict[int, Ref] = {}
        self._alive: list[torch.Tensor] = []  # keeps traced tensors alive so ids stay unique
        self._names: set[str] = set()
        self._leaf_depth = 0
        self._paused = False
        self._stack: list[_Frame] = []
        self._blocks: list[DraftBlock] = []  # every block call, in the order they started
        self._open: list[DraftBlock] = []  # the block calls running now
        self._packed_layout: dict[int, bool] = {}  # id(PackedSequence) -> batch_first
        self._params = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self._params.update({id(b): n for n, b in model.named_buffers(remove_duplicate=False)})
        self._module_names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        # loop -> [id(frame), its variables, pass, its number of passes as a size or None]
        self._passes: dict[str, list[Any]] = {}
        self._ranges: dict[tuple[int, int], tuple[Any, int]] = {}  # (id(frame), line) -> length
        self.escapes: dict[str, str] = {}  # loop -> where a pass first read a tensor's value
        self.decisions: list[Decision] = []
        self._deciding: dict[tuple[int, int], int] = {}  # (id(frame), if line) -> decision

    # --- naming and values ---------------------------------------------------------------------

    def _fresh(self, base: str) -> str:
        base = rust_ident(base, _RESERVED)
        name, k = base, 1
        base = base.rstrip("_")  # `where_` (a keyword escaped) numbers on as `where_1`
        while name in self._names:
            name = f"{base}_{k}"
            k += 1
        self._names.add(name)
        return name

    def _meta(self, value: Any) -> Any:
        if isinstance(value, PackedSequence):
            return self._meta(self._padded(value)[0])
        if isinstance(value, torch.Tensor):
            return TensorMeta(dtype_name(value.dtype), (tuple(value.shape),))
        if isinstance(value, tuple):
            return tuple(self._meta(v) for v in value)
        if isinstance(value, list):
            return [self._meta(v) for v in value]
        return value

    def _bind_outputs(self, node: DraftNode, value: Any) -> None:
        for path, leaf in _leaves(value):
            if isinstance(leaf, (torch.Tensor, PackedSequence)):
                self._values[id(leaf)] = Ref(node.name, path)
                self._alive.append(leaf)

    def _padded(self, packed: PackedSequence) -> tuple[torch.Tensor, torch.Tensor]:
        """(padded batch, lengths) of a packed sequence, in the layout it was packed from."""
        batch_first = self._packed_layout.get(id(packed), False)
        return _ORIGINALS["pad_packed_sequence"](packed, batch_first=batch_first)

    def _arg(self, value: Any) -> Any:
        """A runtime argument -> manifest value (tensors become references)."""
        if isinstance(value, PackedSequence):
            ref = self._values.get(id(value))
            if ref is None:
                return _Opaque("PackedSequence", "not made by pack_padded_sequence in forward()")
            return ref
        if isinstance(value, torch.Tensor):
            ref = self._values.get(id(value))
            if ref is not None:
                return ref
            pname = self._params.get(id(value))
            if pname is not None:
                return Param(pname)
            # A tensor from outside the graph: recorded as a constant node the codegen reports.
            node = DraftNode(self._fresh("constant"), "constant", "tensor", (), {},
                             self._meta(value), user_source(self.root))
            self.nodes.append(node)
            self._bind_outputs(node, value)
            return self._values[id(value)]
        if isinstance(value, tuple):
            return tuple(self._arg(v) for v in value)
        if isinstance(value, list):
            return [self._arg(v) for v in value]
        if isinstance(value, torch.dtype):
            return DType(dtype_name(value))
        if isinstance(value, (ShapeInt, ShapeFloat)):
            return value.sym
        if isinstance(value, (torch.Size, TracedSize)):
            return tuple(self._arg(v) for v in value)
        if isinstance(value, (bool, int, float, str)) or value is None or value is Ellipsis:
            return value
        if isinstance(value, slice):
            return slice(self._arg(value.start), self._arg(value.stop), self._arg(value.step))
        if isinstance(value, torch.device):
            return None  # Candle code runs on the device its tensors live on
        return _Opaque(type(value).__name__, repr(value)[:80])

    # --- torch function mode -------------------------------------------------------------------

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self._paused or self._leaf_depth:
            return result
        self._paused = True
        try:
            name = spelling(func)
            if name in _SIZE_READS:
                return self._traced_size(name, args, kwargs, result)
            self._record_call(func, args, kwargs, result)
        finally:
            self._paused = False
        return result

    def _traced_size(self, name: str, args: tuple, kwargs: dict, result: Any) -> Any:
        """`x.shape` and friends of a traced tensor, as ints that know their origin."""
        ref = self._values.get(id(args[0])) if args and isinstance(args[0], torch.Tensor) else None
        if ref is None:
            return result  # a parameter's or a constant's size: a constant
        size = traced_size(ref, tuple(args[0].shape))
        if name == "Tensor.__len__":
            return size[0]
        if name == "Tensor.numel":
            return size.numel()
        if isinstance(result, int):  # x.size(d), x.size(dim=d)
            return size[args[1] if len(args) > 1 else kwargs["dim"]]
        return size

    def _shape_compared(self, value: ShapeInt, op: str, other: Any, result: Any) -> None:
        """A size steered Python control flow (e.g. `if x.shape[1] > 4`): worth a warning when
        the user's code did it, as the trace follows the traced sizes. The test of an `if` is
        also kept as a decision, so that trace cases taking either side can be joined
        (`branches`)."""
        where = user_source(self.root)
        frame = sys._getframe(2)  # the comparison's caller
        while frame is not None and frame.f_code.co_filename == _SHAPES_FILE:
            frame = frame.f_back
        filename = frame.f_code.co_filename if frame is not None else ""
        if where is None or filename.startswith((_TORCH_DIR, _PYCANDLE_DIR)):
            return
        warning = (f"{where}: a tensor size was compared in Python; the generated code follows "
                   f"the path this trace took")
        if warning not in self.warnings:
            self.warnings.append(warning)
        tested = if_testing(frame) if frame is not None else None
        if tested is None or not isinstance(result, bool):
            return
        after = self.nodes[-1].name if self.nodes else None
        key = (id(frame), tested[0])
        last = self._deciding.get(key)
        if last is not None and self.decisions[last].after == after:
            self.decisions[last].simple = False  # `if a > 1 and b < 3:`
            return
        self._deciding[key] = len(self.decisions)
        self.decisions.append(Decision(
            f"{_shown(Path(frame.f_code.co_filename), self.root)}:{tested[0]}", op,
            shapes.sym_of(value), shapes.sym_of(other), result, after, warning))

    def _branch(self, frames: list[types.FrameType]) -> tuple[int, bool] | None:
        """(decision, side) of the innermost `if` on a size whose body or `else` part is
        running in the user's code."""
        for frame in frames:
            for lines, side in ifs_around(frame):
                index = self._deciding.get((id(frame), lines[0]))
                if index is not None:
                    return index, side
        return None

    def _record_call(self, func: Any, args: tuple, kwargs: dict, result: Any) -> None:
        name = spelling(func)
        produces = any(isinstance(v, torch.Tensor) for _, v in leaves(result)) \
            if isinstance(result, (torch.Tensor, tuple, list)) else False
        reads_graph = any(
            isinstance(v, torch.Tensor) and id(v) in self._values
            for _, v in leaves((tuple(args), tuple(kwargs.values())))
        )
        if not produces:
            if name in _DATA_ESCAPES and reads_graph:
                where = user_source(self.root) or "<unknown>"
                self.warnings.append(
                    f"{where}: a tensor became a Python value ({name}); the generated code "
                    f"follows the path this trace took"
                )
                step = self._step(list(_user_frames()))
                if step is not None:  # the loop may go on or stop by tensor values
                    self.escapes.setdefault(step.loop, where)
            return
        node = DraftNode(
            name=self._fresh(registry.op_for(name).name if registry.op_for(name)
                             else name.rsplit(".", 1)[-1]),
            op="call_function", target=name,
            args=tuple(self._arg(a) for a in args),
            kwargs={k: self._arg(v) for k, v in kwargs.items()},
            out=self._meta(result), **self._call_site(arguments=True),
        )
        self.nodes.append(node)
        self._bind_outputs(node, result)

    def _call_site(self, arguments: bool = False) -> dict[str, Any]:
        """Where the user's code made the call being recorded: its line, the name it assigns
        to, the loops and the `if` on a size it runs in (and, if asked, the names of its
        arguments); one walk of the stack for all of them."""
        frames = list(_user_frames())
        if not frames:
            return {"source": None}
        inner = frames[0]
        site = {"source": _shown_line(inner, self.root), "assign": assignment_target(inner),
                "loop": loop_over(inner), "step": self._step(frames),
                "branch": self._branch(frames)}
        if arguments:
            site["arg_names"] = argument_names(inner)
        return site

    def _step(self, frames: list[types.FrameType]) -> Step | None:
        """The pass of the innermost loop over sizes or tensors running in the user's code: a
        new pass begins where the loop's variables hold new values."""
        for frame in frames:
            found = time_loop(frame)
            if found is None:
                continue
            line, variables = found
            key = f"{_shown(Path(frame.f_code.co_filename), self.root)}:{line}"
            values = tuple(frame.f_locals.get(v) for v in variables)
            marker = tuple(v if isinstance(v, (int, float, str)) else id(v) for v in values)
            seen = self._passes.get(key)
            if seen is None or seen[0] != id(frame):
                length = self._ranges.pop((id(frame), line), None)
                seen = self._passes[key] = [id(frame), marker, 0, length]
            elif seen[1] != marker:
                seen[1], seen[2] = marker, seen[2] + 1
            counts = [(n, v) for n, v in zip(variables, values) if type(v) is int]
            others = [n for n, v in zip(variables, values) if type(v) is not int]
            index, at = counts[0] if counts else (None, None)
            return Step(key, seen[2], index, others[-1] if others else None, seen[3], at)
        return None

    def _range_made(self, length: SymInt, value: int) -> None:
        """A `range` with sizes for bounds: when it is what a loop header iterates (made on the
        `for` line), that loop's number of passes as a size (`traced_range`)."""
        frame = next(_user_frames(), None)
        if frame is None:
            return
        line = range_loop(frame)
        if line is not None:
            self._ranges[(id(frame), line)] = (length, value)

    # --- leaf modules --------------------------------------------------------------------------

    def _pre_hook(self, module, args, kwargs):
        if self._leaf_depth == 0 and not self._paused:
            self._paused = True
            try:
                qual = self._module_names[id(module)]
                node = DraftNode(
                    name=self._fresh(qual or "root"), op="call_module", target=qual,
                    args=tuple(self._arg(a) for a in args),
                    kwargs={k: self._arg(v) for k, v in kwargs.items()},
                    out=None, **self._call_site(),
                )
                self.nodes.append(node)
                flat = [v for _, v in _leaves((tuple(args),
                                               tuple(v for _, v in sorted(kwargs.items()))))]
                tensors = []
                for v in flat:
                    if isinstance(v, PackedSequence):
                        # in the layer's own layout, as the generated code feeds it
                        self._packed_layout[id(v)] = bool(getattr(module, "batch_first", False))
                        tensors += list(self._padded(v))
                    elif isinstance(v, torch.Tensor):
                        tensors.append(v)
                for i, t in enumerate(tensors):
                    self.golden[golden_node_key(self.case, node.name, "in", str(i))] = _snapshot(t)
                self._stack.append(_Frame(node))
            finally:
                self._paused = False
        self._leaf_depth += 1

    # --- user modules and containers: calls recorded as blocks of nodes ------------------------

    def _known(self, value: Any) -> Any:
        """A block's argument or result as a reference into the graph; None when it is not
        one (a tensor from outside the graph, a Python value)."""
        if isinstance(value, torch.Tensor):
            return self._values.get(id(value))
        if isinstance(value, (tuple, list)) and value:
            items = [self._known(v) for v in value]
            return None if any(i is None for i in items) else tuple(items)
        return None

    def _block_pre(self, module, args, kwargs):
        if self._leaf_depth or self._paused:
            return
        self._paused = True
        try:
            qual = self._module_names[id(module)]
            params = _forward_params(module, len(args))
            known = tuple(self._known(a) for a in args)
            block = DraftBlock(self._fresh(qual), qual, params or (), known, len(self.nodes),
                               **self._call_site())
            if params is None or kwargs or any(k is None for k in known):
                block.start = -1  # called in a way a Rust method does not express
            for i, a in enumerate(args):
                if isinstance(a, torch.Tensor):
                    self.golden[golden_node_key(self.case, block.name, "in", str(i))] = \
                        _snapshot(a)
            self._blocks.append(block)
            self._open.append(block)
        finally:
            self._paused = False

    def _block_post(self, module, args, kwargs, output):
        if self._leaf_depth or self._paused or not self._open:
            return
        self._paused = True
        try:
            block = self._open.pop()
            block.end = len(self.nodes)
            block.out = self._known(output)
            if block.out is None:
                block.start = -1
            for path, leaf in _leaves(output):
                if isinstance(leaf, torch.Tensor):
                    key = golden_node_key(self.case, block.name, "out", path_key(path))
                    self.golden[key] = _snapshot(leaf)
        finally:
            self._paused = False

    def _post_hook(self, module, args, kwargs, output):
        self._leaf_depth -= 1
        if self._leaf_depth == 0 and self._stack:
            self._paused = True
            try:
                frame = self._stack.pop()
                layout = bool(getattr(module, "batch_first", False))
                for _, leaf in _leaves(output):
                    if isinstance(leaf, PackedSequence):
                        self._packed_layout[id(leaf)] = layout
                frame.node.out = self._meta(output)
                self._bind_outputs(frame.node, output)
                for path, leaf in _leaves(output):
                    if isinstance(leaf, PackedSequence):
                        leaf = self._padded(leaf)[0]
                    if isinstance(leaf, torch.Tensor):
                        key = golden_node_key(self.case, frame.node.name, "out", path_key(path))
                        self.golden[key] = _snapshot(leaf)
            finally:
                self._paused = False

    # --- running ---------------------------------------------------------------------------------

    def run(self, inputs: dict[str, torch.Tensor], leaf_modules: list[torch.nn.Module]) -> CaseTrace:
        for arg, tensor in inputs.items():
            # models.yaml validation guarantees argument names are Rust identifiers
            self._names.add(arg)
            node = DraftNode(arg, "input", arg, (), {}, self._meta(tensor), None)
            self.nodes.append(node)
            self._bind_outputs(node, tensor)
        handles = []
        restore = _patch_packing(self, self.root)
        for m in leaf_modules:
            handles.append(m.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
            handles.append(m.register_forward_hook(self._post_hook, with_kwargs=True))
        leaves_ = {id(m) for m in leaf_modules}
        for qual, m in self.model.named_modules():
            if qual and id(m) not in leaves_:
                handles.append(m.register_forward_pre_hook(self._block_pre, with_kwargs=True))
                handles.append(m.register_forward_hook(self._block_post, with_kwargs=True))
        TracedNumber.on_compare = self._shape_compared
        traced_range.on_range = self._range_made
        unpatch = _patch_builtins(self.model)
        try:
            with torch.no_grad(), self:
                result = self.model(**inputs)
        finally:
            TracedNumber.on_compare = None
            traced_range.on_range = None
            unpatch()
            restore()
            for h in handles:
                h.remove()
        output = self._output(result)
        blocks = [b for b in self._blocks if b.start >= 0 and b.end > b.start]
        return CaseTrace(self.nodes, output, self.golden, self.warnings, _snapshot_all(result),
                         blocks, self.escapes, self.decisions)

    def _output(self, result: Any) -> Any:
        if isinstance(result, torch.Tensor):
            ref = self._values.get(id(result))
            return ref if ref is not None else self._arg(result)
        if isinstance(result, (tuple, list)):
            items = [self._output(v) for v in result]
            return tuple(items) if isinstance(result, tuple) else items
        return _Opaque(type(result).__name__, repr(result)[:80])


@dataclass(frozen=True)
class _Opaque:
    """A value the manifest cannot express; codegen reports it."""

    type_name: str
    text: str


def _snapshot(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.bool:  # as Candle holds a mask (u8); it cannot read BOOL safetensors
        return t.detach().to(torch.uint8).contiguous()
    return t.detach().clone().contiguous()


def _snapshot_all(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _snapshot(value)
    if isinstance(value, (tuple, list)):
        return tuple(_snapshot_all(v) for v in value)
    return value


def leaf_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """PyTorch's own layers (not containers), outermost first; their children are not visited."""
    out: list[tuple[str, torch.nn.Module]] = []

    def visit(prefix: str, m: torch.nn.Module) -> None:
        name = torch_type_name(type(m))
        # a parametrization (`_WeightNorm` in its ParametrizationList) is traced through: what
        # it computes from the original tensors is recorded as ops
        parametrization = _unparametrized(type(m)) is type(m) and type(m).__module__ in (
            "torch.nn.utils.parametrize", "torch.nn.utils.parametrizations")
        if is_torch_layer(type(m)) and name not in registry.CONTAINERS and not parametrization:
            out.append((prefix, m))
            return
        for child_name, child in m.named_children():
            visit(f"{prefix}.{child_name}" if prefix else child_name, child)

    visit("", model)
    return out


@dataclass
class ModuleRecord:
    type: str
    config: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    buffers: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str | None = None


# --- packed sequences -----------------------------------------------------------------------------
#
# pack_padded_sequence and pad_packed_sequence are Python functions whose internals (sorting,
# index_select, ...) mean nothing to the port: while tracing they are replaced by wrappers that
# record each as one node. The recurrent layer between them then runs on the padded batch and
# the lengths (`forward_padded` in the runtime).

_ORIGINALS = {
    "pack_padded_sequence": torch.nn.utils.rnn.pack_padded_sequence,
    "pad_packed_sequence": torch.nn.utils.rnn.pad_packed_sequence,
}


def _leaves(value: Any, path: tuple[int, ...] = ()):
    """Like manifest.leaves, but a PackedSequence (a tuple) is one leaf."""
    if isinstance(value, PackedSequence):
        yield path, value
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            yield from _leaves(v, path + (i,))
    else:
        yield path, value


def _patch_builtins(model: torch.nn.Module):
    """Give the model's own packages (those its modules' classes come from, never torch's) the
    builtins that keep a size's provenance (pycandle.shapes.BUILTINS), and their
    `@torch.jit.script` functions back as the Python they were compiled from (TorchScript runs
    its ops where the tracer cannot see them; the Python runs the same ops through torch);
    returns the function that undoes both. A module that defines such a builtin's name itself
    keeps its own."""
    packages = {type(m).__module__.split(".")[0] for m in model.modules()}
    packages -= {"torch", "pycandle", "builtins"}
    added: list[Any] = []
    scripted: list[tuple[dict[str, Any], str, Any]] = []
    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in packages:
            continue
        namespace = vars(module)
        for builtin, replacement in BUILTINS.items():
            if builtin not in namespace:
                namespace[builtin] = replacement
                added.append((namespace, builtin))
        for key, value in list(namespace.items()):
            # torch.jit.script keeps the function it compiled for torch.compile to inline
            original = getattr(value, "_torchdynamo_inline", None)
            if isinstance(value, torch.jit.ScriptFunction) and inspect.isfunction(original):
                namespace[key] = original
                scripted.append((namespace, key, value))

    def unpatch() -> None:
        for namespace, builtin in added:
            namespace.pop(builtin, None)
        for namespace, key, value in scripted:
            namespace[key] = value

    return unpatch


@functools.lru_cache(maxsize=None)
def _is_under(filename: str, root: Path) -> bool:
    """Whether a module's file (symlinks resolved) lies under `root`; remembered, as every
    trace case looks at every loaded module and resolving a path costs a system call per
    component."""
    return Path(filename).resolve().is_relative_to(root)


def _patch_packing(tracer: GraphTracer, root: Path):
    """Swap in the recording wrappers (in torch.nn.utils.rnn and in the user's modules that
    imported the functions by name); returns the function that puts everything back."""

    def pack(input, lengths, batch_first=False, enforce_sorted=True):
        paused, tracer._paused = tracer._paused, True
        try:
            result = _ORIGINALS["pack_padded_sequence"](
                input, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
        finally:
            tracer._paused = paused
        if tracer._leaf_depth or tracer._paused:
            return result
        tracer._paused = True
        try:
            tracer._packed_layout[id(result)] = bool(batch_first)
            node = DraftNode(tracer._fresh("packed"), "call_function", PACK,
                             (tracer._arg(input), tracer._arg(lengths)),
                             {"batch_first": bool(batch_first),
                              "enforce_sorted": bool(enforce_sorted)},
                             tracer._meta(input), **tracer._call_site())
            tracer.nodes.append(node)
            tracer._bind_outputs(node, result)
        finally:
            tracer._paused = paused
        return result

    def pad(sequence, batch_first=False, padding_value=0.0, total_length=None):
        paused, tracer._paused = tracer._paused, True
        try:
            result = _ORIGINALS["pad_packed_sequence"](
                sequence, batch_first=batch_first, padding_value=padding_value,
                total_length=total_length)
        finally:
            tracer._paused = paused
        if tracer._leaf_depth or tracer._paused:
            return result
        tracer._paused = True
        try:
            node = DraftNode(tracer._fresh("padded"), "call_function", PAD,
                             (tracer._arg(sequence),),
                             {"batch_first": bool(batch_first),
                              "padding_value": float(padding_value),
                              "total_length": tracer._arg(total_length)},
                             tracer._meta(result), **tracer._call_site())
            tracer.nodes.append(node)
            tracer._bind_outputs(node, result)
        finally:
            tracer._paused = paused
        return result

    wrappers = {"pack_padded_sequence": pack, "pad_packed_sequence": pad}
    swapped: list[tuple[Any, str, Any]] = []
    for name, wrapper in wrappers.items():
        swapped.append((torch.nn.utils.rnn, name, _ORIGINALS[name]))
        setattr(torch.nn.utils.rnn, name, wrapper)
    for module in list(sys.modules.values()):
        src = getattr(module, "__file__", None)
        if not src or not _is_under(src, root):
            continue
        for attr, value in list(vars(module).items()):
            for name, original in _ORIGINALS.items():
                if value is original:
                    swapped.append((module, attr, original))
                    setattr(module, attr, wrappers[name])

    def restore() -> None:
        for owner, attr, original in reversed(swapped):
            setattr(owner, attr, original)

    return restore
