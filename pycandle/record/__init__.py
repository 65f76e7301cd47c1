"""record: run each model in PyTorch; write its manifest, weights and golden tensors.

The only stage that imports torch and the user's code. Every selected model is traced and
checked against the registry before anything is written; then each model's files (the three
below and its dependency list, `pycandle.depfile`) switch together in one atomic step
(`fsutil.write_dir_atomic`: `artifacts/<model>` is a symlink to the current set), so a failure
or a kill leaves the previous good recording intact.

Whether a model is up to date is decided by `pycandle.depfile`, which imports no torch: the CLI
asks it first and imports this module only when something must be recorded.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

import pycandle
from pycandle.config import Config, ConfigError, ModelConfig, TensorSpec
from pycandle.errors import Problem, PyCandleError, UnsupportedError, grouped
from pycandle import depfile
from pycandle.fsutil import tidy_dir_versions, write_dir_atomic
from pycandle.manifest import (
    Block, Manifest, ModuleInfo, Node, Ref, TensorMeta, at_path, golden_input_key,
    golden_output_key, leaves, refs_in,
)
from pycandle.symbolic import dim_candidates, evaluate, settle, symbolize
from pycandle.record.tracer import (
    _DTYPE_NAMES, CaseTrace, GraphTracer, _Opaque, dtype_name, leaf_modules, torch_type_name,
)
from pycandle import registry, support
from pycandle.record import branches, steps

_TORCH_DTYPES = {name: dtype for dtype, name in _DTYPE_NAMES.items()}
_PYCANDLE_DIR = depfile.PYCANDLE_DIR


class RecordError(PyCandleError):
    pass


@dataclass
class Recording:
    manifest: Manifest
    weights: dict[str, torch.Tensor]
    golden: dict[str, torch.Tensor]
    # what it was recorded from: `depfile.inputs(...)`, completed when it is written
    depends: dict[str, Any] = field(default_factory=dict)


def _err(mc: ModelConfig, field: str, msg: str) -> RecordError:
    return RecordError(f"{mc.where(field)} {msg}")


def import_factory(cfg: Config, mc: ModelConfig) -> Any:
    """The factory callable named by `mc.factory`, imported with the config's directory on the
    path."""
    root = str(cfg.root)
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    module_name, attr = mc.factory.split(":")
    _forget_foreign(module_name.split(".")[0], cfg.root)
    _forget_user_modules(cfg.root)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # the user's module may raise anything on import
        where = _user_frame(e, cfg.root)
        hint = ""
        if isinstance(e, ModuleNotFoundError) and e.name == module_name.split(".")[0]:
            hint = f"; put {e.name}.py (or the package {e.name}/) next to {mc.location.file.name}"
        raise _err(mc, "factory", f"cannot import '{module_name}': {type(e).__name__}: "
                   f"{_one_line(e)}" + (f" (at {where})" if where else "") + hint) from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise _err(mc, "factory", f"'{module_name}' has no attribute '{attr}'")
        target = getattr(target, part)
    if not callable(target):
        raise _err(mc, "factory", f"'{mc.factory}' is not callable")
    return target


def _forget_foreign(package: str, root: Path) -> None:
    """Drop an already-imported module of that name that lives outside the config's directory
    (another models.yaml's module of the same name), so the import finds this one."""
    module = sys.modules.get(package)
    src = getattr(module, "__file__", None)
    if module is None or (src and Path(src).resolve().is_relative_to(root.resolve())):
        return
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]


def _forget_user_modules(root: Path) -> None:
    """Drop the user's modules imported for an earlier model, so that importing this model's
    factory runs them afresh and the modules found after recording are exactly this model's
    (its dependency list is then the same whatever else the run records)."""
    for name in depfile.user_modules(root):
        del sys.modules[name]


def build_model(cfg: Config, mc: ModelConfig) -> torch.nn.Module:
    target = import_factory(cfg, mc)
    try:
        inspect.signature(target).bind(**mc.kwargs)
    except TypeError as e:  # the kwargs do not fit the factory's parameters
        raise _err(mc, "kwargs", f"calling {mc.factory}(**kwargs) failed: TypeError: {e}") \
            from None
    except ValueError:  # no signature to check (a builtin): calling it will tell
        pass
    torch.manual_seed(mc.seed)
    try:
        model = target(**mc.kwargs)
    except Exception as e:
        where = _user_frame(e, cfg.root)
        call = ", ".join(f"{k}={v!r}" for k, v in mc.kwargs.items())
        raise _err(mc, "factory", f"{mc.factory}({call}) raised {type(e).__name__}: "
                   f"{_one_line(e)}" + (f" (at {where})" if where else "")) from None
    if not isinstance(model, torch.nn.Module):
        raise _err(mc, "factory", f"returned {type(model).__name__}, not a torch.nn.Module")
    if mc.weights is not None:
        _load_weights(mc, model)
    if mc.dtype is not None:
        model = model.to(_TORCH_DTYPES[mc.dtype])
    return model.eval()


def _user_frame(e: BaseException, root: Path) -> str | None:
    """`file:line` in the user's code where `e` was raised (relative to the config's directory
    when inside it): the innermost frame in that directory, else the innermost frame that is
    neither PyCandle, nor an installed package, nor Python's own."""
    if isinstance(e, SyntaxError) and e.filename:  # raised by the compiler, not in a frame
        return _shown(Path(e.filename), e.lineno, root)
    root = root.resolve()
    library = [Path(p).resolve() for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}]
    outside: str | None = None
    for f in reversed(traceback.extract_tb(e.__traceback__)):
        if f.filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
            continue
        path = Path(f.filename).resolve()
        if path.is_relative_to(root):
            return _shown(path, f.lineno, root)
        if outside is None and not path.is_relative_to(_PYCANDLE_DIR) \
                and not any(path.is_relative_to(p) for p in library):
            outside = _shown(path, f.lineno, root)
    return outside


def _shown(path: Path, line: int | None, root: Path) -> str:
    path = path.resolve()
    shown = path.relative_to(root.resolve()).as_posix() if path.is_relative_to(root.resolve()) \
        else str(path)
    return f"{shown}:{line}" if line else shown


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (a SyntaxError's without its file and line, which
    `_user_frame` gives)."""
    text = e.msg if isinstance(e, SyntaxError) and e.msg else str(e)
    return " ".join(text.split())


def _unpickling_reason(text: str) -> str:
    """Why torch.load(weights_only=True) refused a file, without its long generic advice."""
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (f"it holds a pickled Python object ({found.group(1)}), which is never loaded "
                "because unpickling it could run code")
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    return f"not a PyTorch state dict ({found.group(1).strip() if found else text.splitlines()[0]})"


def _load_weights(mc: ModelConfig, model: torch.nn.Module) -> None:
    path = mc.weights
    assert path is not None
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            # weights_only: tensors and plain containers only, never arbitrary pickled objects
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
    except pickle.UnpicklingError as e:
        raise _err(mc, "weights", f"{path} does not load with torch.load(weights_only=True): "
                   f"{_unpickling_reason(str(e))}; save the state dict instead "
                   "(torch.save(model.state_dict(), path)) or a .safetensors file") from None
    except Exception as e:
        raise _err(mc, "weights", f"cannot read {path}: {type(e).__name__}: {_one_line(e)}") \
            from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _err(mc, "weights", f"{path} does not hold a state dict of tensors")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append("shape mismatches " + ", ".join(
                f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                for k in wrong[:5]))
        raise _err(mc, "weights", f"{path} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(state)


def make_inputs(specs: dict[str, TensorSpec], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, spec in specs.items():
        dtype = _TORCH_DTYPES[spec.dtype]
        if dtype == torch.bool:  # True and False equally likely
            out[name] = torch.rand(spec.shape, generator=gen, dtype=torch.float64) < 0.5
        elif dtype.is_floating_point:
            x = torch.rand(spec.shape, generator=gen, dtype=torch.float64)
            out[name] = (spec.low + (spec.high - spec.low) * x).to(dtype)
        else:
            out[name] = torch.randint(int(spec.low), int(spec.high), spec.shape, generator=gen,
                                      dtype=dtype)
    return out


def up_to_date(cfg: Config, mc: ModelConfig) -> bool:
    """Whether artifacts/<model>/ was recorded from exactly these inputs (`depfile.why_stale`
    says why not)."""
    return depfile.why_stale(cfg, mc) is None


def _module_infos(model: torch.nn.Module, root: Path) -> dict[str, ModuleInfo]:
    infos = {}
    # every name a module has: one registered twice (`self.act` and `self.seq[2]`) is called
    # under either
    for qual, m in model.named_modules(remove_duplicate=False):
        type_name = torch_type_name(type(m))
        config: dict[str, Any] = {}
        layer = registry.layer_for(type_name)
        if layer is not None:
            for attr in layer.config_attrs:
                config[attr] = _plain(getattr(m, attr))
            config.update(_reparametrized(m))
        try:
            src_file = inspect.getsourcefile(type(m))
            src_line = inspect.getsourcelines(type(m))[1]
            path = Path(src_file).resolve()
            shown = path.relative_to(root).as_posix() if path.is_relative_to(root) else None
            source = f"{shown}:{src_line}" if shown else None
        except (TypeError, OSError):
            source = None
        infos[qual] = ModuleInfo(
            type=type_name, config=config,
            parameters={n: {"shape": list(p.shape), "dtype": dtype_name(p.dtype)}
                        for n, p in m.named_parameters(recurse=False)},
            buffers={n: {"shape": list(b.shape), "dtype": dtype_name(b.dtype)}
                     for n, b in m.named_buffers(recurse=False)},
            source=source,
        )
    return infos


def _non_finite(model: torch.nn.Module, traces: list[CaseTrace]) -> list[str]:
    """Notes on NaN or infinite values PyTorch itself produced: parity cannot compare them, so
    say where they come from (a parameter left uninitialised, say) rather than let the port
    look wrong."""
    notes = []
    bad = [n for n, p in model.named_parameters()
           if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        notes.append(f"parameters holding NaN or infinity: {', '.join(bad[:3])}{more} (left "
                     "uninitialised, as torch.empty does, for a checkpoint to fill?); PyTorch's "
                     "results are then not numbers parity can compare")
    for case, trace in enumerate(traces):
        for path, value in leaves(trace.result):
            if isinstance(value, torch.Tensor) and value.is_floating_point() \
                    and not bool(torch.isfinite(value).all()):
                where = f"output {'.'.join(map(str, path))}" if path else "the output"
                notes.append(f"trace case {case}: {where} of PyTorch's own forward() holds NaN "
                             "or infinity")
    return notes


def _reparametrized(m: torch.nn.Module) -> dict[str, Any]:
    """How a layer's parameters are reparametrized: `weight_norm` (its `dim`, None for the whole
    tensor) for either spelling of weight normalisation on `weight`; `reparametrized` naming
    anything else (another parametrization, or one on another tensor), which lowering reports."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.weight_norm import WeightNorm

    out: dict[str, Any] = {}
    other: list[str] = []
    for hook in m._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm):
            if hook.name == "weight":
                out["weight_norm"] = None if hook.dim == -1 else hook.dim
            else:
                other.append(f"weight_norm on {hook.name}")
    if parametrize.is_parametrized(m):
        for name, chain in m.parametrizations.items():
            kinds = [type(p).__name__ for p in chain]
            if name == "weight" and kinds == ["_WeightNorm"]:
                dim = chain[0].dim
                out["weight_norm"] = None if dim in (None, -1) else dim
            else:
                other.append(f"{' + '.join(kinds)} on {name}")
    if other:
        out["reparametrized"] = ", ".join(other)
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, torch.dtype):
        return dtype_name(v)
    if isinstance(v, torch.Tensor):  # an optional parameter such as Linear.bias: present
        return True
    return repr(v)


def _opaque_problems(trace: CaseTrace) -> list[Problem]:
    problems = []
    for node in trace.nodes:
        for _, v in leaves((node.args, tuple(node.kwargs.values()))):
            if isinstance(v, _Opaque):
                problems.append(Problem(f"argument of type {v.type_name} ({v.text}) to "
                                        f"{node.target} cannot be expressed", node.source,
                                        node.target if node.op == "call_module" else None))
    for _, v in leaves(trace.output):
        if isinstance(v, _Opaque):
            problems.append(Problem(f"forward() returns a {v.type_name}; only tensors and tuples "
                                    "or lists of tensors are supported"))
    return problems


def _same_graph(traces: list[CaseTrace]) -> bool:
    first = [(n.op, n.target) for n in traces[0].nodes]
    return all([(n.op, n.target) for n in t.nodes] == first for t in traces[1:])


def _fold_loops(traces: list[CaseTrace]) -> tuple[list[CaseTrace], list[Problem]]:
    """The traces with their loops over sizes or tensors folded (`steps`) where the cases
    run different numbers of passes; else as they are, with what kept each such loop
    unrolled."""
    if _same_graph(traces):
        return traces, []
    folded = [steps.fold(t) for t in traces]
    if _same_graph([f.trace for f in folded]):
        return steps.align([f.trace for f in folded]), []
    joined, why = branches.join([f.trace for f in folded])
    if joined is not None and _same_graph(joined):
        return joined, []
    problems = [] if why is None else [Problem(
        why, hint="an `if` on a size is ported when its test is one comparison of sizes and "
                  "each side runs the same operations in every trace case that takes it")]
    for loop, count in folded[0].counts.items():
        counts = [f.counts.get(loop, 0) for f in folded]
        if len(set(counts)) == 1:
            continue
        reason = next((f.reasons[loop] for f in folded if loop in f.reasons), None)
        ran = " and ".join(f"{c} times in case {i}" for i, c in enumerate(counts))
        by_values = any(loop in f.trace.escapes for f in folded)
        problems.append(Problem(
            f"the loop at {loop} ran {ran}" + (f", and cannot be written as a Rust loop: "
                                              f"{reason}" if reason else ""),
            hint="a loop that stops on tensor values is not ported: run it for a number of "
                 "steps that an input's size gives (teacher forcing, a fixed maximum) and stop "
                 "outside the model" if by_values else
                 "a loop whose trip count follows an input size is ported when its passes run "
                 "the same operations and carry their state in tensors"))
    return traces, problems


def _merge(mc: ModelConfig, traces: list[CaseTrace],
           unfolded: list[Problem] = ()) -> tuple[list[Node], list[Problem]]:
    """One graph from all trace cases: same structure, shapes per case, constants must agree."""
    first = traces[0]
    problems: list[Problem] = []
    for i, t in enumerate(traces[1:], start=1):
        if [(n.op, n.target) for n in t.nodes] != [(n.op, n.target) for n in first.nodes]:
            if unfolded:
                return [], list(unfolded)
            a = [f"{n.target}" for n in first.nodes]
            b = [f"{n.target}" for n in t.nodes]
            k = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            where = (first.nodes[k].source if k < len(first.nodes) else None) or "?"
            problems.append(Problem(
                f"trace case {i} runs a different graph than case 0 (from node {k}, near "
                f"{where}): forward() takes shape- or data-dependent paths",
                hint="give trace cases that follow the same code path"))
            return [], problems
    nodes: list[Node] = []
    metas: dict[str, Any] = {}  # node name -> merged output meta, for shape candidates
    inputs = [Ref(n.name) for n in first.nodes if n.op == "input"]
    failed: dict[str, int] = {}  # node -> the problem it reads the result of
    uses: list[int] = []  # per problem: how many later nodes read a result it left out

    def add(problem: Problem, node: str) -> None:
        failed.setdefault(node, len(problems))
        problems.append(problem)
        uses.append(0)

    for k, base in enumerate(first.nodes):
        variants = [t.nodes[k] for t in traces]
        root = next((failed[r.node] for r in refs_in((base.args, base.kwargs))
                     if r.node in failed), None)
        if root is not None:  # counted against the root cause, not reported again
            failed[base.name] = root
            uses[root] += 1
            continue
        if any(v.args != base.args or v.kwargs != base.kwargs for v in variants[1:]):
            # integers that change with the input shapes become expressions of dimensions
            own = [r for r in refs_in((base.args, base.kwargs)) if r.node in metas]
            earlier = [Ref(n.name, p) for n in reversed(nodes)
                       for p, _ in leaves(n.out) if n.op != "input"]
            candidates = dim_candidates([own + inputs, earlier],
                                        lambda r: at_path(metas.get(r.node), r.path))
            (args, kwargs), issues = symbolize(
                [(v.args, v.kwargs) for v in variants], candidates, [])
            for issue in issues:
                if base.op == "loop":
                    counts = " and ".join(f"{v.args[0]} passes in case {c}"
                                          for c, v in enumerate(variants))
                    add(Problem(
                        f"this loop ran {counts}, a number no input size explains",
                        base.source,
                        hint="give trace cases whose lengths differ, with the loop's trip "
                             "count one of them (`range(x.size(1))`)"), base.name)
                    continue
                add(Problem(
                    f"{base.target}: {issue}", base.source,
                    base.target if base.op == "call_module" else None,
                    "give trace cases whose sizes differ, or compute the value from a "
                    "tensor's shape"), base.name)
        else:
            args, kwargs = base.args, base.kwargs
        args, kwargs = settle((args, kwargs), lambda sym: tuple(
            evaluate(sym, lambda r, d, c=case: at_path(metas[r.node], r.path).shapes[c][d])
            for case in range(len(traces))))
        out = _merge_meta([v.out for v in variants])
        if out is None:
            add(Problem(f"{base.target}: outputs differ in structure or dtype between trace "
                        "cases", base.source), base.name)
            continue
        metas[base.name] = out
        nodes.append(Node(base.name, base.op, base.target, tuple(args), dict(kwargs), out,
                          base.source, base.assign, base.loop, base.in_loop, base.in_branch))
    return nodes, grouped(problems, uses)


def _blocks(traces: list[CaseTrace]) -> tuple[Block, ...]:
    """The block calls every trace case made alike (the graphs already are)."""
    def key(b: Any) -> tuple:
        return (b.name, b.module, b.params, b.args, b.start, b.end, b.out, b.source,
                repr(b.assign), repr(b.loop))

    first = [key(b) for b in traces[0].blocks]
    if any([key(b) for b in t.blocks] != first for t in traces[1:]):
        return ()
    return tuple(Block(b.name, b.module, b.params, b.args, b.start, b.end, b.out, b.source,
                       b.assign, b.loop) for b in traces[0].blocks)


def _merge_meta(outs: list[Any]) -> Any:
    first = outs[0]
    if isinstance(first, TensorMeta):
        if not all(isinstance(o, TensorMeta) and o.dtype == first.dtype
                   and len(o.shapes[0]) == len(first.shapes[0]) for o in outs):
            return None
        return TensorMeta(first.dtype, tuple(o.shapes[0] for o in outs))
    if isinstance(first, (tuple, list)):
        if not all(type(o) is type(first) and len(o) == len(first) for o in outs):
            return None
        merged = [_merge_meta([o[i] for o in outs]) for i in range(len(first))]
        if any(m is None and not (first[i] is None) for i, m in enumerate(merged)):
            return None
        return tuple(merged) if isinstance(first, tuple) else merged
    return first if all(o == first for o in outs) else None


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def _odd_names(model: torch.nn.Module) -> list[Problem]:
    """Submodule, parameter and buffer names that are not plain words (PyTorch allows any text
    without a dot). They become Rust identifiers and string literals in the generated code, so
    they are refused rather than escaped, and the generated code stays readable."""
    problems = []
    for qual, module in model.named_modules():
        own = [(n, "submodule") for n, _ in module.named_children()]
        own += [(n, "parameter") for n, _ in module.named_parameters(recurse=False)]
        own += [(n, "buffer") for n, _ in module.named_buffers(recurse=False)]
        for name, kind in own:
            if not _PLAIN_NAME.match(name):
                problems.append(Problem(
                    f"{kind} name {name!r} is not made of letters, digits and underscores",
                    module=qual, hint="rename it (add_module / register_parameter / "
                    "register_buffer) to a plain name"))
    return problems


def record_model(cfg: Config, mc: ModelConfig) -> Recording:
    torch.use_deterministic_algorithms(True)
    model = build_model(cfg, mc)
    problems = _odd_names(model)
    if problems:
        raise UnsupportedError(mc.name, problems)
    leaves_ = [m for _, m in leaf_modules(model)]
    try:
        forward_sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        forward_sig = None
    traces: list[CaseTrace] = []
    golden: dict[str, torch.Tensor] = {}
    for case, specs in enumerate(mc.inputs):
        if forward_sig is not None:
            try:
                forward_sig.bind(**specs)
            except TypeError as e:
                params = ", ".join(forward_sig.parameters)
                raise _err(mc, f"inputs[{case}]",
                           f"does not fit forward({params}): {e}") from None
        inputs = make_inputs(specs, mc.seed * 1_000_003 + case)
        tracer = GraphTracer(model, cfg.root, case)
        try:
            trace = tracer.run(inputs, leaves_)
        except PyCandleError:
            raise
        except Exception as e:
            where = _user_frame(e, cfg.root)
            raise _err(mc, f"inputs[{case}]", f"forward() raised {type(e).__name__}: "
                       f"{_one_line(e)}" + (f" (at {where})" if where else "")) from None
        problems = _opaque_problems(trace)
        if problems:
            raise UnsupportedError(mc.name, problems)
        traces.append(trace)
        for arg, t in inputs.items():  # a bool input as Candle holds it, a u8 mask
            golden[golden_input_key(case, arg)] = (
                t.to(torch.uint8) if t.dtype == torch.bool else t).contiguous()
        for path, value in leaves(trace.result):
            golden[golden_output_key(case, path)] = value
    traces, unfolded = _fold_loops(traces)
    for t in traces:
        golden.update(t.golden)
    nodes, problems = _merge(mc, traces, unfolded)
    if problems:
        raise UnsupportedError(mc.name, problems)
    warnings = sorted({w for t in traces for w in t.warnings} | set(_non_finite(model, traces)))
    # every user module imported since the factory's import, lazily imported ones included
    depends = depfile.inputs(cfg, mc, depfile.user_modules(cfg.root).values())
    manifest = Manifest(
        name=mc.name, factory=mc.factory, seed=mc.seed, atol=mc.tolerance.atol,
        rtol=mc.tolerance.rtol,
        versions={"pycandle": pycandle.__version__, "torch": torch.__version__.split("+")[0]},
        content_hash=depfile.content_hash(depends), inputs=tuple(mc.inputs[0]),
        cases=tuple({"inputs": {a: {"shape": list(s.shape), "dtype": s.dtype,
                                    "low": s.low, "high": s.high}
                                for a, s in specs.items()}} for specs in mc.inputs),
        modules=_module_infos(model, cfg.root), nodes=tuple(nodes), output=traces[0].output,
        warnings=tuple(warnings), blocks=_blocks(traces),
    )
    # Round-trip through JSON so what codegen will read is exactly what is checked here.
    manifest = Manifest.loads(manifest.dumps(), f"model '{mc.name}'")
    support.check(manifest)  # raises UnsupportedError listing all codegen could not translate
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for k, v in model.named_buffers():  # non-persistent buffers that forward() may read
        if v.layout == torch.strided:  # a sparse one (whisper's alignment heads) no op reads
            weights.setdefault(k, v.detach().clone().contiguous())
    return Recording(manifest, weights, golden, depends)


def write_recording(artifacts: Path, rec: Recording) -> bool:
    """Switch `artifacts/<model>` to this recording and its dependency list in one atomic step;
    False when it already holds exactly these bytes."""
    files = {
        "manifest.json": rec.manifest.dumps().encode(),
        "weights.safetensors": save(dict(sorted(rec.weights.items()))),
        "golden.safetensors": save(dict(sorted(rec.golden.items()))),
    }
    files[depfile.FILE] = depfile.render(rec.depends, files)
    return write_dir_atomic(artifacts / rec.manifest.name, files)


def record(cfg: Config, models: list[ModelConfig], progress=None,
           force: bool = False) -> tuple[list[Recording], list[str]]:
    """Trace every model that is not up to date, then write them all; nothing is written if
    any model fails. Returns the recordings and the names of the models skipped."""
    recordings, skipped, errors = [], [], []
    for mc in models:
        try:
            if not force and depfile.why_stale(cfg, mc) is None:
                skipped.append(mc.name)
            else:
                recordings.append(record_model(cfg, mc))
        except UnsupportedError as e:  # its problems point into the user's code
            errors.append(f"{mc.location}: {e}")
        except (PyCandleError, ConfigError) as e:  # these start with the file and line
            errors.append(str(e))
        if progress is not None:
            progress(mc.name)
    if errors:
        raise RecordError("record stopped; nothing was written:\n" + "\n".join(errors))
    written: list[str] = []
    for rec in recordings:
        try:
            write_recording(cfg.artifacts, rec)
        except OSError as e:
            # an OSError of the system has a strerror; one of fsutil's says what to do itself
            reason = (f"{e.strerror} ({e.filename}); make {cfg.artifacts} a writable directory"
                      if e.strerror else str(e))
            kept = (f"{', '.join(written)} recorded, the previous recordings of the others kept"
                    if written else "the previous recordings are kept")
            raise RecordError(f"{cfg.where('artifacts')} model '{rec.manifest.name}': cannot "
                              f"write {cfg.artifacts / rec.manifest.name}: {reason} ({kept})") \
                from None
        written.append(rec.manifest.name)
    for name in skipped:  # leftovers of a killed run
        try:
            tidy_dir_versions(cfg.artifacts / name)
        except OSError:
            pass  # only housekeeping: the recording itself is complete
    return recordings, skipped
