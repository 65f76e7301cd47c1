"""models.yaml: the user's interface, parsed into frozen, located dataclasses.

Every value keeps the line it came from, each known key is popped and whatever is left is an
error, so a typo never passes silently. Errors read `file:line: model 'x': field 'y': ...`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pycandle.errors import PyCandleError
from pycandle.names import MODEL_NAME_MAX, arg_name_problem, model_name_problem

FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")
INT_DTYPES = ("int64", "int32")
DTYPES = FLOAT_DTYPES + INT_DTYPES + ("bool",)
_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4,
             "bool": 1}
# Bounds of what models.yaml may ask for, each checked with a message before anything runs.
SEED_MAX = 2**32 - 1  # torch seeds the trace inputs with seed * 1_000_003 + case (< 2**64)
INT_BOUNDS = {"int32": (-(2**31), 2**31), "int64": (-(2**53), 2**53)}  # exact as floats
YAML_MAX_NODES = 100_000  # the document's size with every alias expanded
MAX_DIMS = 16


def memory_bytes() -> int | None:
    """This machine's physical memory, or None when it cannot be told."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


class ConfigError(PyCandleError):
    pass


@dataclass(frozen=True)
class Location:
    file: Path
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float = 0.0
    high: float = 1.0


@dataclass(frozen=True)
class Tolerance:
    atol: float = 1e-5
    rtol: float = 1e-4


@dataclass(frozen=True)
class ModelConfig:
    name: str
    factory: str
    kwargs: dict[str, Any]
    weights: Path | None
    seed: int
    dtype: str | None  # convert the model's floating-point parameters to this dtype
    inputs: tuple[dict[str, TensorSpec], ...]
    tolerance: Tolerance
    location: Location
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    # line of each key of the entry, and of each trace case as "inputs[i]"
    lines: dict[str, int] = field(repr=False, compare=False, default_factory=dict)

    @property
    def module_name(self) -> str:
        return self.factory.split(":")[0]

    def where(self, field_name: str) -> str:
        """`file:line: model 'x': field 'y':`, the prefix of every error about this model."""
        key = field_name if field_name in self.lines else re.split(r"[.\[]", field_name)[0]
        line = self.lines.get(key, self.location.line)
        return f"{self.location.file}:{line}: model '{self.name}': field '{field_name}':"


@dataclass(frozen=True)
class Config:
    path: Path
    crate: Path
    artifacts: Path
    models: tuple[ModelConfig, ...]
    lines: dict[str, int] = field(repr=False, compare=False, default_factory=dict)  # top-level keys

    def where(self, field_name: str) -> str:
        """`file:line: field 'y':` for a top-level field such as `crate` or `artifacts`."""
        return f"{self.path}:{self.lines.get(field_name, 1)}: field '{field_name}':"

    @property
    def root(self) -> Path:
        """The YAML file's directory: paths are relative to it and it is importable."""
        return self.path.parent

    def select(self, names: list[str] | None) -> list[ModelConfig]:
        if not names:
            return list(self.models)
        known = {m.name: m for m in self.models}
        missing = [n for n in names if n not in known]
        if missing:
            raise ConfigError(
                f"{self.path}: no model named {', '.join(map(repr, missing))}; "
                f"models are: {', '.join(known) or '(none)'}"
            )
        return [known[n] for n in names]


# --- YAML with line numbers -------------------------------------------------------------------


class _Map(dict):
    line: int = 0
    key_lines: dict[str, int]


class _Seq(list):
    line: int = 0


class _Loader(yaml.SafeLoader):
    def get_single_data(self):
        # Aliases share one node in the composed graph but become copies once turned into
        # plain data: bound the expanded size before anything is constructed.
        node = self.get_single_node()
        if node is None:
            return None
        _check_expanded_size(self.name, node)
        return self.construct_document(node)


def _check_expanded_size(name: str, root: yaml.Node) -> None:
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if depth > 200:
            raise ConfigError(f"{name}:{node.start_mark.line + 1}: the YAML is nested more "
                              "than 200 levels deep; models.yaml holds plain, shallow data")
        total = 1
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        for child in children:
            total += size(child, depth + 1)
            if total > YAML_MAX_NODES:
                break
        sizes[id(node)] = total
        if total > YAML_MAX_NODES:
            raise ConfigError(
                f"{name}:{node.start_mark.line + 1}: the YAML expands to more than "
                f"{YAML_MAX_NODES} values (aliases such as *a copy what their anchor &a holds, "
                "and aliases of aliases multiply); write the values out or use fewer aliases")
        return total

    size(root, 0)


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    out = _Map()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if key_node.tag == "tag:yaml.org,2002:merge":
            raise ConfigError(f"{loader.name}:{line}: YAML merge keys (`<<:`) are not "
                              "supported in models.yaml; write the keys out in the mapping")
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise ConfigError(f"{loader.name}:{line}: keys must be strings, got {key!r}")
        if key in out:
            raise ConfigError(f"{loader.name}:{line}: duplicate key '{key}'")
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = line
    return out


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    out = _Seq(loader.construct_object(n, deep=True) for n in node.value)
    out.line = node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


# --- validation ---------------------------------------------------------------------------------


class _Ctx:
    """Where we are in the file, for error messages."""

    def __init__(self, path: Path, model: str | None = None):
        self.path = path
        self.model = model

    def error(self, line: int, field_name: str | None, msg: str) -> ConfigError:
        where = f"{self.path}:{line}:"
        if self.model is not None:
            where += f" model '{self.model}':"
        if field_name:
            where += f" field '{field_name}':"
        return ConfigError(f"{where} {msg}")


def _line(container: Any, key: str | None = None) -> int:
    if key is not None and isinstance(container, _Map):
        return container.key_lines.get(key, container.line)
    return getattr(container, "line", 0)


def _take(ctx: _Ctx, m: _Map, key: str, types: tuple[type, ...], required: bool, default: Any,
          field_name: str) -> Any:
    if key not in m:
        if required:
            raise ctx.error(m.line, field_name, "is required")
        return default
    value = m.pop(key)
    # bool is an int in Python; never accept it where a number is meant
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        names = " or ".join(t.__name__ for t in types)
        raise ctx.error(_line(m, key), field_name,
                        f"must be {names}, got {type(value).__name__} {value!r}")
    return value


def _no_leftovers(ctx: _Ctx, m: _Map, where: str, allowed: list[str]) -> None:
    for key in m:
        raise ctx.error(_line(m, key), f"{where}{key}",
                        f"unknown key; allowed keys here: {', '.join(allowed)}")


def _number(ctx: _Ctx, m: _Map, key: str, default: float, field_name: str,
            minimum: float | None = None) -> float:
    line = _line(m, key)
    raw = _take(ctx, m, key, (int, float, str), False, default, field_name)
    try:
        # YAML 1.1 reads `1e-5` (no dot) as a string: accept it as the number it means
        value = float(raw)
    except OverflowError:
        raise ctx.error(line, field_name, f"is too large, got {str(raw)[:40]}...") from None
    except ValueError:
        raise ctx.error(line, field_name, f"must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ctx.error(line, field_name, f"must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ctx.error(line, field_name, f"must be >= {minimum}, got {value}")
    return value


def _tensor_spec(ctx: _Ctx, raw: Any, line: int, field_name: str,
                 default_dtype: str = "float32") -> TensorSpec:
    if not isinstance(raw, _Map):
        raise ctx.error(line, field_name,
                        f"must be a mapping like {{shape: [2, 16], dtype: float32}}, got {raw!r}")
    m = _Map(raw)
    m.line, m.key_lines = raw.line, dict(raw.key_lines)
    shape_line = _line(m, "shape")
    shape = _take(ctx, m, "shape", (list,), True, None, f"{field_name}.shape")
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                            for d in shape):
        shown = repr(list(shape))
        raise ctx.error(shape_line, f"{field_name}.shape",
                        "must be a non-empty list of positive integers, got "
                        f"{shown if len(shown) < 80 else shown[:80] + '...'}")
    if len(shape) > MAX_DIMS:
        raise ctx.error(shape_line, f"{field_name}.shape",
                        f"has {len(shape)} dimensions; at most {MAX_DIMS}")
    dtype_line = _line(m, "dtype")
    dtype = _take(ctx, m, "dtype", (str,), False, default_dtype, f"{field_name}.dtype")
    if dtype not in DTYPES:
        raise ctx.error(dtype_line, f"{field_name}.dtype",
                        f"unknown dtype '{dtype}'; one of: {', '.join(DTYPES)}")
    nbytes = math.prod(shape) * _ITEMSIZE[dtype]
    memory = memory_bytes()
    limit = memory // 4 if memory else 2**40
    if nbytes > limit:
        raise ctx.error(shape_line, f"{field_name}.shape",
                        f"a {dtype} tensor of shape {list(shape)} takes {nbytes} bytes, more than "
                        f"a trace input may ({limit} bytes, a quarter of this machine's memory: "
                        "the trace keeps several copies); use a smaller shape")
    if dtype == "bool":  # True and False equally likely: no range to give
        for key in ("low", "high"):
            if key in m:
                raise ctx.error(_line(m, key), f"{field_name}.{key}",
                                "a bool input has no range (True and False are equally likely)")
        _no_leftovers(ctx, m, f"{field_name}.", ["shape", "dtype"])
        return TensorSpec(shape=tuple(shape), dtype=dtype, low=0.0, high=1.0)
    is_int = dtype in INT_DTYPES
    if is_int and "high" not in m:
        raise ctx.error(m.line, f"{field_name}.high",
                        f"is required for {dtype} inputs (exclusive upper bound, e.g. the vocabulary size)")
    low = _number(ctx, m, "low", 0.0, f"{field_name}.low")
    high_line = _line(m, "high")
    high = _number(ctx, m, "high", 1.0, f"{field_name}.high")
    if high <= low if is_int else high < low:
        raise ctx.error(high_line, f"{field_name}.high", f"must be above low ({low}), got {high}")
    if is_int and (low != int(low) or high != int(high)):
        raise ctx.error(high_line, f"{field_name}", f"low and high must be integers for {dtype}")
    if is_int:
        lo, hi = INT_BOUNDS[dtype]
        for key, value in (("low", low), ("high", high)):
            if not lo <= value <= hi:
                raise ctx.error(_line(raw, key), f"{field_name}.{key}",
                                f"must be between {lo} and {hi} for {dtype}, got "
                                f"{str(raw.get(key))[:40]}")
    _no_leftovers(ctx, m, f"{field_name}.", ["shape", "dtype", "low", "high"])
    return TensorSpec(shape=tuple(shape), dtype=dtype, low=low, high=high)


_MODEL_KEYS = ["name", "factory", "kwargs", "weights", "seed", "dtype", "inputs", "tolerance"]


def _model(ctx_file: Path, root: Path, raw: Any, index: int, line: int) -> ModelConfig:
    ctx = _Ctx(ctx_file, None)
    if not isinstance(raw, _Map):
        raise ctx.error(line, f"models[{index}]", f"must be a mapping, got {type(raw).__name__}")
    m = _Map(raw)
    m.line, m.key_lines = raw.line, dict(raw.key_lines)
    lines = {**m.key_lines}
    name_line = _line(m, "name")
    name = _take(ctx, m, "name", (str,), True, None, f"models[{index}].name")
    problem = model_name_problem(name)
    if problem is not None:
        shown = repr(name) if len(name) <= 40 else repr(name[:40]) + "..."
        raise ctx.error(name_line, "name", f"{shown} {problem}; rename the model (its name "
                        "is a Rust module and file name: a lowercase identifier, not a keyword, "
                        f"at most {MODEL_NAME_MAX} characters)")
    ctx.model = name
    # Unknown keys first: a misspelt required key is reported as the typo it is.
    for key in m:
        if key not in _MODEL_KEYS:
            raise ctx.error(_line(m, key), key, f"unknown key; allowed keys here: "
                            f"{', '.join(_MODEL_KEYS)}")
    factory_line = _line(m, "factory")
    factory = _take(ctx, m, "factory", (str,), True, None, "factory")
    if not _FACTORY.fullmatch(factory):
        raise ctx.error(factory_line, "factory",
                        f"must be 'package.module:callable', got {factory!r}")
    kwargs = _take(ctx, m, "kwargs", (dict,), False, {}, "kwargs")
    kwargs = _plain(kwargs)
    weights_line = _line(m, "weights")
    weights = _take(ctx, m, "weights", (str, type(None)), False, None, "weights")
    weights_path = None
    if weights is not None:
        weights_path = (root / weights).resolve()
        if not weights_path.is_file():
            raise ctx.error(weights_line, "weights", f"file not found: {weights_path}")
    dtype_line = _line(m, "dtype")
    dtype = _take(ctx, m, "dtype", (str, type(None)), False, None, "dtype")
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise ctx.error(dtype_line, "dtype",
                        f"'{dtype}' is not a floating-point dtype; one of: {', '.join(FLOAT_DTYPES)}")
    seed_line = _line(m, "seed")
    seed = _take(ctx, m, "seed", (int,), False, 0, "seed")
    if seed < 0:
        raise ctx.error(seed_line, "seed", f"must be >= 0, got {seed}")
    if seed > SEED_MAX:
        shown = str(seed) if len(str(seed)) <= 40 else str(seed)[:40] + "..."
        raise ctx.error(seed_line, "seed", f"must be <= {SEED_MAX}, got {shown}")
    inputs_line = _line(m, "inputs")
    cases_raw = _take(ctx, m, "inputs", (list,), True, None, "inputs")
    if not cases_raw:
        raise ctx.error(inputs_line, "inputs", "needs at least one trace case")
    cases = []
    for i, case in enumerate(cases_raw):
        case_line = getattr(case, "line", inputs_line)
        lines[f"inputs[{i}]"] = case_line
        if not isinstance(case, _Map) or not case:
            raise ctx.error(case_line, f"inputs[{i}]",
                            "must map forward() argument names to tensor specs, "
                            "e.g. {mels: {shape: [2, 160, 40]}}")
        specs = {}
        for arg, spec in case.items():
            problem = arg_name_problem(arg)
            if problem is not None or not arg.isidentifier():
                raise ctx.error(case.key_lines[arg], f"inputs[{i}].{arg[:40]}",
                                f"must be a forward() argument name that is not a Python or "
                                f"Rust keyword ({problem or 'is not an identifier'})")
            specs[arg] = _tensor_spec(ctx, spec, case.key_lines[arg], f"inputs[{i}].{arg}",
                                      dtype or "float32")
        if i and list(specs) != list(cases[0]):
            raise ctx.error(case_line, f"inputs[{i}]",
                            f"every trace case must name the same arguments in the same order "
                            f"({', '.join(cases[0])}), got {', '.join(specs)}")
        cases.append(specs)
    tol_raw = _take(ctx, m, "tolerance", (dict,), False, None, "tolerance")
    tolerance = Tolerance()
    if tol_raw is not None:
        t = _Map(tol_raw)
        t.line, t.key_lines = tol_raw.line, dict(tol_raw.key_lines)
        tolerance = Tolerance(
            atol=_number(ctx, t, "atol", tolerance.atol, "tolerance.atol", minimum=0.0),
            rtol=_number(ctx, t, "rtol", tolerance.rtol, "tolerance.rtol", minimum=0.0),
        )
        _no_leftovers(ctx, t, "tolerance.", ["atol", "rtol"])
    _no_leftovers(ctx, m, "", _MODEL_KEYS)
    return ModelConfig(
        name=name, factory=factory, kwargs=kwargs, weights=weights_path, seed=seed, dtype=dtype,
        inputs=tuple(cases), tolerance=tolerance, location=Location(ctx_file, line),
        raw=_plain(raw), lines=lines,
    )


def _plain(value: Any) -> Any:
    """Located containers back to plain dicts and lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def load_config(path: str | Path = "models.yaml") -> Config:
    path = Path(path).absolute()
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (pass --config FILE)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") \
            from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from None
    # a SafeLoader: tags such as !!python/object never construct objects or run code
    loader = _Loader(text)
    loader.name = str(path)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        tag = re.search(r"constructor for the tag '([^']+)'", e.problem or "")
        if isinstance(e, yaml.constructor.ConstructorError) and tag:
            shown = tag.group(1).replace("tag:yaml.org,2002:", "!!")
            raise ConfigError(f"{path}:{line}: invalid YAML: the tag {shown} is not allowed; "
                              "models.yaml holds plain data (mappings, lists, strings, "
                              "numbers)") from None
        raise ConfigError(f"{path}:{line}: invalid YAML: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: the YAML is nested too deeply; models.yaml holds plain, "
                          "shallow data") from None
    finally:
        loader.dispose()
    ctx = _Ctx(path)
    if not isinstance(data, _Map):
        raise ctx.error(1, None, "the top level must be a mapping with keys 'crate' and 'models'")
    root = path.parent
    lines = dict(data.key_lines)
    crate = _take(ctx, data, "crate", (str,), False, "generated", "crate")
    artifacts = _take(ctx, data, "artifacts", (str,), False, "artifacts", "artifacts")
    models_line = _line(data, "models")
    models_raw = _take(ctx, data, "models", (list,), True, None, "models")
    _no_leftovers(ctx, data, "", ["crate", "artifacts", "models"])
    if not models_raw:
        raise ctx.error(models_line, "models", "lists no models; add at least one entry "
                        "(name, factory, inputs), see the README's models.yaml reference")
    crate_dir = _project_dir(ctx, root, crate, lines.get("crate", 1), "crate")
    artifacts_dir = _project_dir(ctx, root, artifacts, lines.get("artifacts", 1), "artifacts")
    if crate_dir == artifacts_dir or crate_dir in artifacts_dir.parents \
            or artifacts_dir in crate_dir.parents:
        # name the one inside the other (the artifacts when they are the same directory)
        inner = "crate" if artifacts_dir in crate_dir.parents else "artifacts"
        outer = "artifacts" if inner == "crate" else "crate"
        dirs = {"crate": crate_dir, "artifacts": artifacts_dir}
        raise ctx.error(lines.get(inner, lines.get(outer, 1)), inner,
                        f"{dirs[inner]} overlaps the {outer} directory {dirs[outer]}; the crate "
                        "and the artifacts need separate directories, e.g. `crate: generated` "
                        "and `artifacts: artifacts`")
    models: list[ModelConfig] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(models_raw):
        line = getattr(raw, "line", models_line)
        model = _model(path, root, raw, i, line)
        if model.name in seen:
            raise _Ctx(path, model.name).error(
                line, "name", f"duplicate model name (first defined at line {seen[model.name]})")
        seen[model.name] = line
        models.append(model)
    return Config(path=path, crate=crate_dir, artifacts=artifacts_dir, models=tuple(models),
                  lines=lines)


def _project_dir(ctx: _Ctx, root: Path, value: str, line: int, field_name: str) -> Path:
    """`crate` or `artifacts` resolved: never the config's directory, one above it, or `/`."""
    if "\0" in value or not value.strip():
        raise ctx.error(line, field_name, f"must name a directory, got {value!r}")
    try:
        path = (root / value).resolve()
    except (OSError, RuntimeError, ValueError) as e:
        raise ctx.error(line, field_name, f"cannot resolve {value!r}: {e}") from None
    root = root.resolve()
    if path == root or path in root.parents:
        what = "/" if path == Path(path.anchor) else path
        raise ctx.error(line, field_name,
                        f"{value!r} is {what}, {'the directory of models.yaml' if path == root else 'a directory above models.yaml'}; "
                        f"PyCandle writes and deletes files in the {field_name} directory, so it "
                        f"must be a directory of its own, e.g. `{field_name}: "
                        f"{'generated' if field_name == 'crate' else 'artifacts'}`")
    return path
