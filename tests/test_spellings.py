"""Every public spelling of every registry entry, driven through the real torch function.

The snapshot cases (`tests/snapshots/*.txt`, see `test_registry_snapshots`) build manifests by
hand: they say what lowering makes of a call, not what the tracer receives when PyTorch runs it.
PyTorch's own Python wrappers pass arguments the user never wrote (under torch 2.x
`torch.norm(x, dim=1)` reaches `__torch_function__` with `out=None` and `dtype=None`), so a
signature can match every snapshot and still refuse the real call.

Here each call of each case line runs as real Python inside a one-line module's `forward`, on
tensors of the operands' metas (the first trace case's sizes), under `GraphTracer` as
`pycandle record` runs it. Every node the tracer records must bind to the signature registered
for its spelling (PyTorch may deliver a call under another spelling: `x + y` arrives as
`Tensor.add`, `torch.conv1d` as `F.conv1d`), and the traced graph must lower as the snapshot
says: a case whose snapshot expects `unsupported:` may be refused, never for its arguments; any
other must lower. A call PyTorch itself refuses to run is a failure, unless its snapshot
expects `unsupported:` or `TORCH_REFUSES` explains why the case keeps it.

Every registered spelling and layer must be driven by at least one case (`NOT_DRIVEN` lists the
few that cannot be, each with its reason), so a new entry cannot skip this test.
"""

from __future__ import annotations

import ast
import math
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pycandle import registry  # noqa: E402
from pycandle.errors import UnsupportedError  # noqa: E402
from pycandle.lowering import lower  # noqa: E402
from pycandle.manifest import Manifest, TensorMeta  # noqa: E402
from pycandle.record import _merge, _module_infos  # noqa: E402
from pycandle.record.tracer import GraphTracer, leaf_modules  # noqa: E402
from test_registry_snapshots import (  # noqa: E402
    CASE_DIMS, CASES, Case, CaseError, _CaseBuilder, split_case,
)

ROOT = Path(__file__).resolve().parent

# Registered spellings no case line can drive through the tracer, and why. Keep it short: an
# entry here is a spelling whose signature nothing checks against PyTorch.
NOT_DRIVEN: dict[str, str] = {}

# Case calls PyTorch itself refuses to run, kept in the snapshots for the emitter paths they
# show (a real trace never reaches them). A call with a `given` is named with it, as on its line.
TORCH_REFUSES: dict[str, str] = {
    "torch.gt(0.5, x)": "a number first is refused (`0.5 > x` calls x.lt); shows the mirroring",
    "x.clamp(y, 1.0)": "the bounds are both tensors or both numbers",
    "x.clip_(v, 1.0)": "the bounds are both tensors or both numbers",
    "torch.logical_or(x, False)": "`other` must be a tensor",
    "nn.Embedding(10, 4)(j)  given j = u32(B, T)": "embedding indices are int64 or int32",
    "F.layer_norm(x, 4)": "F.layer_norm's normalized_shape is a tuple (nn.LayerNorm's may be "
                          "an int)",
}

# What `registry.bind` says when a signature does not fit the call (see registry/core.py).
_BINDING = re.compile(r"unknown keyword argument|missing argument|too many positional "
                      r"arguments|given twice")

# The trace case whose sizes the operands take (one is enough: sizes read from shapes are
# traced symbolically whatever their values).
DIMS = CASE_DIMS[0]


# --- operands -------------------------------------------------------------------------------------


def _tensor(name: str, meta: TensorMeta, gen: torch.Generator) -> torch.Tensor:
    """Values of `meta`'s dtype and shape in every op's domain that matters here: random floats
    in (0.1, 0.9) (log, sqrt, acos, atanh, ...), random booleans, integers all 1 (an index into
    any dimension of two or more, a divisor), sequence lengths descending from T
    (pack_padded_sequence)."""
    shape = meta.shapes[0]
    dtype = getattr(torch, meta.dtype)
    if name == "lens":
        return torch.tensor([max(DIMS["T"] - k, 1) for k in range(shape[0])], dtype=dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dtype.is_floating_point:
        return (torch.rand(shape, generator=gen) * 0.8 + 0.1).to(dtype)
    return torch.ones(shape, dtype=dtype)


# --- the module that makes the call ---------------------------------------------------------------


def _pack(*args: Any, **kwargs: Any) -> Any:
    # looked up at call time: the tracer swaps in its recording wrapper while it runs
    return torch.nn.utils.rnn.pack_padded_sequence(*args, **kwargs)


_NAMESPACE = {"torch": torch, "F": torch.nn.functional, "nn": torch.nn, "inf": math.inf,
              "nan": math.nan, "pack": _pack}


class Call(torch.nn.Module):
    """forward(**operands) evaluates one case call; a layer the call builds (`nn.LSTM(4, 8)(x)`)
    is built here once, as the submodule `layer`, and the call applies it."""

    def __init__(self, call: str, operands: dict[str, torch.Tensor]):
        super().__init__()
        tree = ast.parse(call, mode="eval")
        if isinstance(tree.body, ast.Call) and isinstance(tree.body.func, ast.Call):
            ctor = ast.Expression(tree.body.func)
            self.layer = eval(compile(ctor, "<case>", "eval"),  # noqa: S307 (test data)
                              _NAMESPACE | operands)
            self.layer.eval()
            tree.body.func = ast.Name("layer", ast.Load())
            ast.fix_missing_locations(tree)
        self.code = compile(tree, "<case>", "eval")

    def forward(self, **operands: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scope = _NAMESPACE | operands
        if hasattr(self, "layer"):
            scope["layer"] = self.layer
        result = eval(self.code, scope)  # noqa: S307 (test data)
        return tuple(self._tensors(result))

    def _tensors(self, value: Any):
        """The result's tensors, in order: a PackedSequence padded back (as a model returns
        it), None leaves dropped (MultiheadAttention's weights with need_weights=False)."""
        if isinstance(value, torch.nn.utils.rnn.PackedSequence):
            yield torch.nn.utils.rnn.pad_packed_sequence(value, batch_first=getattr(
                getattr(self, "layer", None), "batch_first", False))[0]
        elif isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (tuple, list)):
            for v in value:
                yield from self._tensors(v)


# --- driving one call -----------------------------------------------------------------------------


@dataclass
class Drive:
    case: Case
    call: str
    target: str  # the registry spelling or layer type the call exercises
    recorded: set[str] = field(default_factory=set)  # the spellings of the nodes recorded
    given: str | None = None  # the case's `given`, as written
    problems: list[str] = field(default_factory=list)  # binding problems and failures

    @property
    def key(self) -> str:
        """The call as TORCH_REFUSES names it."""
        return f"{self.call}  given {self.given}" if self.given else self.call

    @property
    def expects_unsupported(self) -> bool:
        return any(line.startswith("unsupported:") for line in self.case.expected)


def drive(case: Case, call: str, given: str | None, builder: _CaseBuilder,
          target: str) -> Drive:
    """Run `call` under the tracer as `record` does, then bind and lower what it recorded."""
    d = Drive(case, call, target, given=given)
    gen = torch.Generator().manual_seed(case.line)
    metas = {n: builder.metas[n] for n in builder.inputs}
    operands = {n: _tensor(n, m, gen) for n, m in metas.items()}
    try:
        model = Call(call, operands).eval()
        trace = GraphTracer(model, ROOT, 0).run(operands, [m for _, m in leaf_modules(model)])
    except Exception as e:  # noqa: BLE001 (what PyTorch says is the finding)
        if not d.expects_unsupported and d.key not in TORCH_REFUSES:
            d.problems.append(f"PyTorch cannot run it: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}")
        return d
    if d.key in TORCH_REFUSES:
        d.problems.append("PyTorch runs it: take it off TORCH_REFUSES")
    layer = registry.layer_for(target)
    for node in trace.nodes:
        if layer is not None:
            if node.op == "call_module" and node.target == "layer":
                d.recorded.add(target)
            continue
        if node.op != "call_function":
            continue
        d.recorded.add(node.target)
        op = registry.op_for(node.target)
        if op is None:  # a function the registry lacks: lowering reports it
            continue
        try:
            registry.bind(op.spellings[node.target], node.args, node.kwargs)
        except registry.Unsupported as e:
            d.problems.append(f"{node.target} records args {node.args!r} kwargs "
                              f"{node.kwargs!r}: {e.what}")
    if not d.recorded:
        d.problems.append("the tracer recorded no call")
        return d
    nodes, problems = _merge(None, [trace])  # record's merge of trace cases, here of one
    assert not problems, problems
    manifest = Manifest(
        name="case", factory="test_spellings:Call", seed=0, atol=1e-5, rtol=1e-4,
        versions={"pycandle": "0.1.0", "torch": torch.__version__.split("+")[0]},
        content_hash="0" * 64, inputs=tuple(operands),
        cases=({"inputs": {n: {"shape": list(m.shapes[0]), "dtype": m.dtype}
                           for n, m in metas.items()}},),
        modules=_module_infos(model, ROOT), nodes=tuple(nodes), output=trace.output)
    try:  # as record checks it: after the JSON round trip codegen reads
        lower(Manifest.loads(manifest.dumps(), "case"))
    except UnsupportedError as e:
        if d.expects_unsupported:  # refused as its snapshot says, but not for its arguments
            d.problems += [f"lowering: {p.what}" for p in e.problems if _BINDING.search(p.what)]
        else:
            d.problems += [f"lowering the traced call: {p.what}" for p in e.problems]
    return d


def drive_case(case: Case) -> list[Drive]:
    calls, out, given = split_case(case.text)
    drives = []
    for call in calls:
        try:
            builder = _CaseBuilder(call, out, given)
            target = builder.build().target
        except CaseError as e:  # test_registry_snapshots reports unreadable lines
            drives.append(Drive(case, call, "?", given=given, problems=[f"unreadable: {e}"]))
            continue
        drives.append(drive(case, call, given, builder, target))
    return drives


@pytest.fixture(scope="module")
def drives() -> list[Drive]:
    torch.manual_seed(0)  # layer weights
    with warnings.catch_warnings():  # deprecations some cases spell on purpose
        warnings.simplefilter("ignore")
        return [d for case in CASES for d in drive_case(case)]


# --- the tests ------------------------------------------------------------------------------------


def test_every_spelling_binds_what_torch_passes(drives: list[Drive]) -> None:
    failures: dict[str, list[str]] = defaultdict(list)
    for d in drives:
        for p in d.problems:
            failures[d.target].append(f"{d.case.where}: `{d.call}`: {p}")
    lines = [f"{len(failures)} spelling(s) fail under the tracer:"]
    for target in sorted(failures):
        lines += [f"  {target}"] + [f"    {f}" for f in failures[target]]
    assert not failures, "\n".join(lines)


def test_every_registered_spelling_is_driven(drives: list[Drive]) -> None:
    registered = set(registry.OPS) | set(registry.LAYERS)
    driven = {d.target for d in drives if d.recorded and not d.problems}
    stale = sorted(set(NOT_DRIVEN) - registered)
    assert not stale, f"NOT_DRIVEN names spellings that are not registered: {stale}"
    missing = sorted(registered - driven - set(NOT_DRIVEN))
    # `x + y` reaches the tracer as Tensor.add, `torch.conv1d` as F.conv1d (the same function):
    # such a spelling is driven, and what the tracer records instead is what bound
    renamed = {d.target for d in drives if d.recorded and d.target not in d.recorded}
    print(f"\n{len(registered & driven)} of {len(registered)} registered spellings and layers "
          f"driven through torch ({len(renamed & driven)} recorded under another spelling); "
          f"{len(NOT_DRIVEN)} allowed not to be")
    assert not missing, (
        f"{len(missing)} of {len(registered)} registered spellings are not driven through the "
        f"tracer by a passing case (add a case line to tests/snapshots/, or a reason to "
        f"NOT_DRIVEN): {', '.join(missing)}")


def test_the_allowances_name_real_calls(drives: list[Drive]) -> None:
    calls = {d.key for d in drives}
    unknown = sorted(set(TORCH_REFUSES) - calls)
    assert not unknown, f"TORCH_REFUSES names calls no case line makes: {unknown}"


def _resolve(spelling: str) -> Any:
    head, *rest = spelling.split(".")
    obj = {"torch": torch, "Tensor": torch.Tensor}[head]
    for part in rest:
        obj = getattr(obj, part)
    return obj


def test_every_registered_spelling_exists_in_torch() -> None:
    missing = []
    for spelling in sorted(set(registry.OPS) | set(registry.LAYERS)):
        try:
            _resolve(spelling)
        except (AttributeError, KeyError):
            missing.append(spelling)
    assert not missing, f"registered spellings PyTorch does not have: {', '.join(missing)}"
