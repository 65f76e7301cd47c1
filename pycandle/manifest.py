"""The manifest: what `record` learned about a model, and all that `codegen` reads.

A versioned JSON document with sorted keys. Graph arguments are typed JSON (`{"int": 3}`,
`{"ref": {"node": "lstm", "path": [1, 0]}}`, ...), never `str()`, so they round-trip exactly.
This module does not import torch.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from pycandle import names
from pycandle.enums import DType as DTypeName
from pycandle.enums import NodeOp, SymKind, UnknownValue, parse
from pycandle.errors import PyCandleError

SCHEMA_VERSION = 1

# Recorded as single nodes (see record/tracer.py); codegen runs the layer between them on the
# padded batch.
PACK = "torch.nn.utils.rnn.pack_padded_sequence"
PAD = "torch.nn.utils.rnn.pad_packed_sequence"


class ManifestError(PyCandleError):
    pass


# --- typed values ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A tensor produced by graph node `node`; `path` indexes into a tuple output."""

    node: str
    path: tuple[int, ...] = ()


@dataclass(frozen=True)
class Param:
    """A parameter or buffer of the model used directly in forward(), by state-dict name."""

    name: str


@dataclass(frozen=True)
class DType:
    name: str

    def __repr__(self) -> str:  # as messages show it
        return f"torch.{self.name}"


# What strings in a manifest may hold. They reach generated Rust as identifiers, inside string
# literals or comments, and as options an emitter compares with known values: a hand-edited
# manifest is held to what record writes, so no field can carry code.
_MODULE_NAME = re.compile(r"([A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*)?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.(<locals>|[A-Za-z_][A-Za-z0-9_]*))*")
_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_WORD = re.compile(r"[A-Za-z0-9_.,:+\-> ]*")  # option values: 'zeros', 'tanh', 'ij,jk->ik'
_SOURCE = re.compile(r"[^\x00-\x1f\x7f\u2028\u2029]*")  # file:line, shown in comments


@dataclass(frozen=True)
class SymInt:
    """An integer derived from tensor shapes, e.g. `x.shape[0] * x.shape[1]`.

    kind DIM: `a` is a Ref, `b` the dimension; ADD, SUB, MUL and FLOORDIV: `a` and `b` are
    SymInts or ints (at least one a SymInt).
    """

    kind: SymKind
    a: Any
    b: Any

    def __repr__(self) -> str:  # as messages show it: `min(4, x.shape[2] - 4)`
        return _python_text(self, top=True)


_PYTHON_FUNCTIONS = {"ceil": "math.ceil", "floor": "math.floor", "trunc": "int", "round": "round"}
_PYTHON_OPERATORS = {"add": "+", "sub": "-", "mul": "*", "floordiv": "//", "mod": "%",
                     "truediv": "/"}


def _python_text(v: Any, top: bool = False) -> str:
    """A size expression as the Python that computes it (the pass number of a loop: `step`)."""
    if not isinstance(v, SymInt):
        return repr(v)
    kind = str(v.kind)
    if kind == "dim":
        path = "".join(f"[{i}]" for i in v.a.path)
        return f"{v.a.node}{path}.shape[{v.b}]"
    if kind == "step":
        return "step"
    if kind == "neg":
        return f"-{_python_text(v.a)}"
    if kind in ("max", "min"):
        return f"{kind}({_python_text(v.a, True)}, {_python_text(v.b, True)})"
    if kind in _PYTHON_FUNCTIONS:
        return f"{_PYTHON_FUNCTIONS[kind]}({_python_text(v.a, True)})"
    op, b = _PYTHON_OPERATORS[kind], v.b
    if kind == "add" and isinstance(b, (int, float)) and b < 0:
        op, b = "-", -b
    text = f"{_python_text(v.a)} {op} {_python_text(b)}"
    return text if top else f"({text})"


@dataclass(frozen=True)
class TensorMeta:
    """A tensor value's dtype, and its shape in each trace case."""

    dtype: str
    shapes: tuple[tuple[int, ...], ...]

    @property
    def rank(self) -> int:
        return len(self.shapes[0])


def encode(value: Any) -> Any:
    """Python value -> typed JSON."""
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    if isinstance(value, float):
        if math.isfinite(value):
            return {"float": value}
        return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, str):
        return {"str": value}
    if value is None:
        return {"none": None}
    if value is Ellipsis:
        return {"ellipsis": None}
    if isinstance(value, slice):
        return {"slice": [encode(value.start), encode(value.stop), encode(value.step)]}
    if isinstance(value, tuple):
        return {"tuple": [encode(v) for v in value]}
    if isinstance(value, list):
        return {"list": [encode(v) for v in value]}
    if isinstance(value, Ref):
        return {"ref": {"node": value.node, "path": list(value.path)}}
    if isinstance(value, Param):
        return {"param": value.name}
    if isinstance(value, DType):
        return {"dtype": value.name}
    if isinstance(value, SymInt):
        return {"sym": [value.kind, encode(value.a), encode(value.b)]}
    if isinstance(value, TensorMeta):
        return {"tensor": {"dtype": value.dtype, "shapes": [list(s) for s in value.shapes]}}
    raise ManifestError(f"cannot encode {type(value).__name__} {value!r} in a manifest")


def decode(obj: Any) -> Any:
    """Typed JSON -> Python value."""
    if not isinstance(obj, dict) or len(obj) != 1:
        raise ManifestError(f"malformed typed value: {obj!r}")
    ((kind, v),) = obj.items()
    if kind == "float" and v in ("inf", "-inf", "nan"):
        return float(v)
    if kind in ("bool", "int", "float", "str"):
        expected = {"bool": bool, "int": int, "float": (int, float), "str": str}[kind]
        if not isinstance(v, expected) or (kind == "int" and isinstance(v, bool)):
            raise ManifestError(f"malformed {kind} value: {v!r}")
        if kind == "str" and not _WORD.fullmatch(v):
            raise ManifestError(f"string {v!r} holds characters no option value has")
        return float(v) if kind == "float" else v
    if kind == "none":
        return None
    if kind == "ellipsis":
        return Ellipsis
    if kind == "slice":
        return slice(*(decode(x) for x in v))
    if kind == "tuple":
        return tuple(decode(x) for x in v)
    if kind == "list":
        return [decode(x) for x in v]
    if kind == "ref":
        if not isinstance(v["node"], str) or not _IDENT.fullmatch(v["node"]):
            raise ManifestError(f"reference to {v['node']!r}, not a node name")
        return Ref(v["node"], tuple(_ints(v["path"], "path")))
    if kind == "param":
        if not isinstance(v, str) or not _MODULE_NAME.fullmatch(v):
            raise ManifestError(f"parameter name {v!r} is not a dotted path of plain words")
        return Param(v)
    if kind == "dtype":
        return DType(_parse(DTypeName, v, "dtype").value)
    if kind == "sym":
        return SymInt(_parse(SymKind, v[0], "symbolic integer kind"), decode(v[1]), decode(v[2]))
    if kind == "tensor":
        return TensorMeta(_parse(DTypeName, v["dtype"], "dtype").value,
                          tuple(tuple(_ints(s, "shape")) for s in v["shapes"]))
    raise ManifestError(f"unknown typed value kind '{kind}'")


def _decode_in(where: str, value: Any) -> Any:
    try:
        return decode(value)
    except ManifestError as e:
        raise ManifestError(f"{where}: {e}") from None


def _parse(kind: Any, value: Any, what: str) -> Any:
    try:
        return parse(kind, value, what)
    except UnknownValue as e:
        raise ManifestError(str(e)) from None


def _ints(values: Any, what: str) -> list[int]:
    if not isinstance(values, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ManifestError(f"malformed {what} {values!r} (expected non-negative integers)")
    return values


def leaves(value: Any, path: tuple[int, ...] = ()) -> Iterator[tuple[tuple[int, ...], Any]]:
    """(path, leaf) pairs of a nested tuple/list structure, depth first."""
    if isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            yield from leaves(v, path + (i,))
    else:
        yield path, value


def found_in(value: Any, kind: type) -> Iterator[Any]:
    """Every value of type `kind` inside an argument, also within containers, slices and
    symbolic integers."""
    if isinstance(value, kind):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from found_in(v, kind)
    elif isinstance(value, dict):
        for v in value.values():
            yield from found_in(v, kind)
    elif isinstance(value, slice):
        yield from found_in((value.start, value.stop, value.step), kind)
    elif isinstance(value, SymInt):
        yield from found_in((value.a, value.b), kind)


def refs_in(value: Any) -> Iterator[Ref]:
    """Every tensor reference inside an argument."""
    return found_in(value, Ref)


def map_refs(value: Any, fn: Callable[[Ref], Any]) -> Any:
    """`value` with each Ref in it (in tuples, lists, dicts, slices and SymInts) replaced by
    `fn(ref)`."""
    if isinstance(value, Ref):
        return fn(value)
    if isinstance(value, SymInt):
        return SymInt(value.kind, map_refs(value.a, fn), map_refs(value.b, fn))
    if isinstance(value, (tuple, list)):
        return type(value)(map_refs(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_refs(v, fn) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(map_refs(value.start, fn), map_refs(value.stop, fn),
                     map_refs(value.step, fn))
    return value


def at_path(value: Any, path: tuple[int, ...]) -> Any:
    for i in path:
        value = value[i]
    return value


# --- golden tensor keys (shared by record and the generated tests) -------------------------------


def path_key(path: tuple[int, ...]) -> str:
    return ".".join(map(str, path)) if path else "0"


def golden_input_key(case: int, arg: str) -> str:
    return f"c{case}.input.{arg}"


def golden_output_key(case: int, path: tuple[int, ...]) -> str:
    return f"c{case}.output.{path_key(path)}"


def golden_node_key(case: int, node: str, direction: str, index: str) -> str:
    """direction 'in' (index: flat argument tensor number) or 'out' (index: output path)."""
    return f"c{case}.{node}.{direction}.{index}"


# --- the document ----------------------------------------------------------------------------------


def _call_site(d: dict[str, Any]) -> dict[str, Any]:
    """The fields a node and a block share, checked: where it was called (`source`), the
    Python name its value is assigned to (`assign`), the ModuleList loop it ran in (`loop`)."""
    site = {"source": d.get("source"), "assign": d.get("assign"), "loop": d.get("loop")}
    source = site["source"]
    if source is not None and (not isinstance(source, str) or not _SOURCE.fullmatch(source)):
        raise ManifestError(f"field 'source': {source!r} is not a file:line location")
    if not _is_target(site["assign"]):
        raise ManifestError(f"field 'assign': {site['assign']!r} is not a name or a list of "
                            "names and nulls")
    if not _is_loop(site["loop"]):
        raise ManifestError(f"field 'loop': {site['loop']!r} is not [attribute, variable]")
    return site


def _optional(**fields: Any) -> dict[str, Any]:
    """The optional fields that are set, as JSON writes them."""
    return {k: v for k, v in fields.items() if v is not None}


def _is_target(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return bool(_IDENT.fullmatch(value))
    return isinstance(value, list) and all(_is_target(v) for v in value)


def _is_loop(value: Any) -> bool:
    return value is None or (isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, str) and _IDENT.fullmatch(v) for v in value))


@dataclass(frozen=True)
class Node:
    name: str
    op: NodeOp
    target: str  # input name, module qualified name, or function spelling like "torch.relu"
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    out: Any = None  # TensorMeta, or nested tuples/lists of them
    source: str | None = None
    # the Python assignment target of its value: a name, or a list of targets (None where the
    # source names nothing) for tuple unpacking; generated locals take these names
    assign: Any = None
    # `[attribute, variable]` of the Python loop `for variable in self.attribute` it ran in
    loop: list[str] | None = None
    # the LOOP node whose passes it runs in (one pass is recorded; see NodeOp.LOOP)
    step: str | None = None
    # [the BRANCH node, True for its `if` body or False for its `else` part] it runs in
    branch: list[Any] | None = None

    def to_json(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "op": self.op,
            "target": self.target,
            "args": [encode(a) for a in self.args],
            "kwargs": {k: encode(v) for k, v in sorted(self.kwargs.items())},
            "out": encode(self.out),
            "source": self.source,
        }
        return d | _optional(assign=self.assign, loop=self.loop, step=self.step,
                             branch=self.branch)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Node:
        name = d["name"]
        if not isinstance(name, str) or not _IDENT.fullmatch(name):
            raise ManifestError(f"node name {name!r} is not an identifier")
        try:
            op = _parse(NodeOp, d["op"], "node kind")
            target = d["target"]
            if not isinstance(target, str) or not (_TYPE_NAME.fullmatch(target) or
                                                   _MODULE_NAME.fullmatch(target)):
                raise ManifestError(f"field 'target': {target!r} is not a function or module name")
            site = _call_site(d)
            for k in d["kwargs"]:
                if not _IDENT.fullmatch(k):
                    raise ManifestError(f"keyword argument {k!r} is not an identifier")
            step = d.get("step")
            if step is not None and not (isinstance(step, str) and _IDENT.fullmatch(step)):
                raise ManifestError(f"field 'step': {step!r} is not a node name")
            branch = d.get("branch")
            if branch is not None and not (
                    isinstance(branch, list) and len(branch) == 2 and isinstance(branch[0], str)
                    and _IDENT.fullmatch(branch[0]) and isinstance(branch[1], bool)):
                raise ManifestError(f"field 'branch': {branch!r} is not [node name, side]")
            return cls(
                name=name, op=op, target=target,
                args=tuple(decode(a) for a in d["args"]),
                kwargs={k: decode(v) for k, v in d["kwargs"].items()},
                out=decode(d["out"]), step=step, branch=branch, **site,
            )
        except ManifestError as e:
            raise ManifestError(f"node '{name}': {e}") from None


@dataclass(frozen=True)
class ModuleInfo:
    type: str  # "torch.nn.LSTM", or the user's class "examples.voice.VoiceEncoder"
    config: dict[str, Any]  # constructor arguments (plain JSON values) for registry layers
    parameters: dict[str, dict[str, Any]]  # local name -> {"shape": [...], "dtype": "float32"}
    buffers: dict[str, dict[str, Any]]
    source: str | None = None  # where the class is defined


@dataclass(frozen=True)
class Block:
    """One call of a user module or container: it ran `nodes[start:end]`, took `args` (its
    forward()'s `params`) and gave `out`, all references into the graph. Its inputs and outputs
    are golden tensors under its `name`, as a layer's are."""

    name: str
    module: str
    params: tuple[str, ...]
    args: tuple[Any, ...]
    start: int
    end: int
    out: Any
    source: str | None = None  # where it was called
    assign: Any = None  # as a node's
    loop: list[str] | None = None  # as a node's

    def to_json(self) -> dict[str, Any]:
        d = {"name": self.name, "module": self.module, "params": list(self.params),
             "args": [encode(a) for a in self.args], "start": self.start, "end": self.end,
             "out": encode(self.out), "source": self.source}
        return d | _optional(assign=self.assign, loop=self.loop)

    @classmethod
    def from_json(cls, d: dict[str, Any], count: int) -> Block:
        name = d["name"]
        if not isinstance(name, str) or not _IDENT.fullmatch(name):
            raise ManifestError(f"block name {name!r} is not an identifier")
        if not isinstance(d["module"], str) or not _MODULE_NAME.fullmatch(d["module"]):
            raise ManifestError(f"block '{name}': field 'module' {d['module']!r} is not a "
                                "module name")
        if not all(isinstance(p, str) and _IDENT.fullmatch(p) for p in d["params"]):
            raise ManifestError(f"block '{name}': field 'params' holds a non-identifier")
        start, end = d["start"], d["end"]
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= count):
            raise ManifestError(f"block '{name}': nodes {start!r}..{end!r} are not in the graph")
        try:
            site = _call_site(d)
        except ManifestError as e:
            raise ManifestError(f"block '{name}': {e}") from None
        return cls(name, d["module"], tuple(d["params"]), tuple(decode(a) for a in d["args"]),
                   start, end, decode(d["out"]), **site)


@dataclass(frozen=True)
class Manifest:
    name: str
    factory: str
    seed: int
    atol: float
    rtol: float
    versions: dict[str, str]
    content_hash: str
    inputs: tuple[str, ...]  # forward() argument names, in order
    cases: tuple[dict[str, Any], ...]  # per trace case: {"inputs": {arg: {"shape", "dtype"}}}
    modules: dict[str, ModuleInfo]  # qualified name -> info; "" is the root
    nodes: tuple[Node, ...]
    output: Any  # nested tuples/lists of Ref
    warnings: tuple[str, ...] = ()
    blocks: tuple[Block, ...] = ()  # calls of user modules and containers, in order of start

    def node(self, name: str) -> Node:
        return self._index()[name]

    def _index(self) -> dict[str, Node]:
        cache = self.__dict__.get("_node_index")
        if cache is None:
            cache = {n.name: n for n in self.nodes}
            object.__setattr__(self, "_node_index", cache)
        return cache

    def meta(self, ref: Ref) -> TensorMeta:
        return at_path(self.node(ref.node).out, ref.path)

    @property
    def num_cases(self) -> int:
        return len(self.cases)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "model": {
                "name": self.name, "factory": self.factory, "seed": self.seed,
                "tolerance": {"atol": self.atol, "rtol": self.rtol},
            },
            "versions": dict(sorted(self.versions.items())),
            "content_hash": self.content_hash,
            "inputs": list(self.inputs),
            "cases": list(self.cases),
            "modules": {
                k: {"type": m.type, "config": {c: encode(v) for c, v in m.config.items()},
                    "parameters": m.parameters, "buffers": m.buffers, "source": m.source}
                for k, m in sorted(self.modules.items())
            },
            "graph": {"nodes": [n.to_json() for n in self.nodes], "output": encode(self.output),
                      "blocks": [b.to_json() for b in self.blocks]},
            "warnings": list(self.warnings),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Manifest:
        schema = d.get("schema")
        if schema != SCHEMA_VERSION:
            raise ManifestError(
                f"manifest schema {schema!r} is not the supported version {SCHEMA_VERSION}; "
                "run `pycandle record` again")
        model = d["model"]
        # names reach generated Rust as identifiers, string literals and comments: record
        # writes only plain ones, and a hand-edited manifest must not smuggle in anything else
        problem = names.model_name_problem(model["name"])
        if problem:
            raise ManifestError(f"field 'model.name': {model['name']!r} {problem}")
        if not isinstance(model["factory"], str) or not _FACTORY.fullmatch(model["factory"]):
            raise ManifestError(f"field 'model.factory': {model['factory']!r} is not "
                                "'module:callable'")
        for arg in d["inputs"]:
            problem = names.arg_name_problem(arg)
            if problem:
                raise ManifestError(f"field 'inputs': {arg!r} {problem}")
        for name, m in d["modules"].items():
            if not _MODULE_NAME.fullmatch(name):
                raise ManifestError(f"module name {name!r} is not a dotted path of plain words")
            if not isinstance(m["type"], str) or not _TYPE_NAME.fullmatch(m["type"]):
                raise ManifestError(f"module '{name}': field 'type': {m['type']!r} is not a "
                                    "class name")
            for p in (*m["parameters"], *m["buffers"]):
                if not _MODULE_NAME.fullmatch(p):
                    raise ManifestError(f"module '{name}': parameter name {p!r} is not plain")
            for key in m["config"]:
                if not _IDENT.fullmatch(key):
                    raise ManifestError(f"module '{name}': config key {key!r} is not an "
                                        "identifier")
        for w in d.get("warnings", ()):
            if not isinstance(w, str) or not _SOURCE.fullmatch(w):
                raise ManifestError(f"field 'warnings': {w!r} is not one line of text")
        return cls(
            name=model["name"], factory=model["factory"], seed=model["seed"],
            atol=model["tolerance"]["atol"], rtol=model["tolerance"]["rtol"],
            versions=d["versions"], content_hash=d["content_hash"],
            inputs=tuple(d["inputs"]), cases=tuple(d["cases"]),
            modules={
                k: ModuleInfo(type=m["type"],
                              config={c: _decode_in(f"module '{k}': config '{c}'", v)
                                      for c, v in m["config"].items()},
                              parameters=m["parameters"], buffers=m["buffers"],
                              source=m.get("source"))
                for k, m in d["modules"].items()
            },
            nodes=tuple(Node.from_json(n) for n in d["graph"]["nodes"]),
            output=decode(d["graph"]["output"]),
            warnings=tuple(d.get("warnings", ())),
            blocks=tuple(Block.from_json(b, len(d["graph"]["nodes"]))
                         for b in d["graph"].get("blocks", ())),
        )

    @classmethod
    def loads(cls, text: str, where: str) -> Manifest:
        """Parse a manifest's JSON; errors name `where` (its file, or the model) and the field."""
        try:
            return cls.from_json(json.loads(text))
        except ManifestError as e:
            raise ManifestError(f"{where}: {e}; run `pycandle record --force` to write it "
                                "again") from None
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise ManifestError(f"{where}: malformed manifest ({type(e).__name__}: {e}); "
                                "run `pycandle record --force` to write it again") from None

    @classmethod
    def load(cls, path: Path) -> Manifest:
        path = Path(path)
        if not path.is_file():
            raise ManifestError(f"{path}: manifest not found; run `pycandle record` first")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ManifestError(f"{path}: cannot read the manifest ({e}); run "
                                "`pycandle record --force`") from None
        return cls.loads(text, str(path))
