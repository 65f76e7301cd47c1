"""Functional ops and Tensor methods: parity through the real pipeline, and the arguments that
are reported instead of silently ignored.

Each model returns many results, so every op is compared with PyTorch on its own; all models
share one generated crate (one cargo build) and run at two trace shapes.
"""

from __future__ import annotations

import textwrap

import pytest

pytest.importorskip("torch")

from conftest import assert_clippy_clean, pin_lockfile  # noqa: E402
from pycandle.cli import main  # noqa: E402
from pycandle.config import load_config  # noqa: E402
from pycandle.record import RecordError, record  # noqa: E402

OPS = """\
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Layout(nn.Module):
        def forward(self, x):  # x: (batch, 4, length)
            b = x.shape[0]
            pieces = (x.chunk(2, 1) + torch.chunk(x, 3, dim=1) + x.chunk(3, -1)
                      + x.split(3, dim=1) + torch.split(x, [1, 3], 1) + x.split(5, -1)
                      + x.unbind(1))
            return (x.view(-1), x.reshape(-1, 4), x.view(b, -1), x.reshape(x.size(0), 2, 2, -1),
                    torch.reshape(x, (b, 2, -1)), x.flatten(1), torch.flatten(x),
                    x.flatten(0, 1), x.unflatten(1, (2, 2)), x.permute(0, 2, 1),
                    torch.permute(x, (2, 0, 1)), x.transpose(0, 2), x[0].t(),
                    x.unsqueeze(1), torch.unsqueeze(x, -1), x[:, :1].squeeze(),
                    x.unsqueeze(0).squeeze(0), x[:, :1, None].squeeze((1, 2)),
                    x[:, :1].expand(-1, 3, -1), x.mean(-1, keepdim=True).expand_as(x),
                    x[0].expand(2, 4, -1), x.repeat(1, 2, 1), x[0].repeat(2, 1, 1),
                    torch.cat([x, 2 * x], dim=1), torch.cat((x, x), -1),
                    torch.stack([x, x], dim=1), torch.stack((x, x), -1),
                    F.pad(x, (1, 2)), F.pad(x, (1, 1, 2, 0)), F.pad(x, (0, 2), mode="replicate"),
                    F.pad(x.unsqueeze(1), [1, 1, 2, 0], "replicate"), x.contiguous(),
                    F.pad(x, (2, 1), mode="reflect"), F.pad(x, (1, 3), mode="circular"),
                    F.pad(x.unsqueeze(1), (1, 2, 0, 1), mode="reflect"),
                    F.pad(x, (1, 2, 1, 0), value=-2.5), F.pad(x, (0, b), "circular")) + pieces


    class Reductions(nn.Module):
        def forward(self, x):  # x: (batch, 4, length)
            values, indices = x.max(dim=1)
            low = torch.min(x, -1, keepdim=True)
            return (x.sum(), x.sum(-1), x.sum(dim=(0, 2), keepdim=True),
                    torch.sum(x, 1, dtype=torch.float64), x.mean(), x.mean(1, keepdim=True),
                    torch.mean(x, dim=[1, 2]), torch.max(x), values, indices, low.values,
                    low.indices, torch.max(x, 0.5 * x), torch.min(x, x[:, :1]), x.amax(-1),
                    torch.amin(x, dim=(1, 2), keepdim=True), x.amax(), x.argmax(),
                    x.argmax(dim=1), torch.argmin(x, -1, keepdim=True), x.min(),
                    F.normalize(x), F.normalize(x, p=1, dim=-1),
                    F.normalize(x, p=3, dim=1), F.softmax(x, dim=-1), torch.softmax(x, 1),
                    x.softmax(0), F.log_softmax(x, dim=1, dtype=torch.float64), x.log_softmax(-1),
                    torch.log_softmax(x, 0))


    class Activations(nn.Module):
        def forward(self, x):
            x = 8 * x - 4
            y = x.clone()
            F.elu_(y, 0.5)
            return (torch.relu(x), F.relu(x), x.relu(), torch.tanh(x), x.sigmoid(),
                    F.gelu(x), F.gelu(x, approximate="tanh"), F.silu(x), F.leaky_relu(x, 0.1),
                    F.elu(x), F.elu(x, alpha=0.3), F.softplus(x),
                    F.softplus(x, beta=2, threshold=1),
                    F.mish(x), F.hardtanh(x), F.hardtanh(x, -0.5, 0.5), F.relu6(x), y,
                    F.leaky_relu_(x.clone(), 0.3), F.dropout(x, 0.5, training=False),
                    x.detach())


    class Math(nn.Module):
        def forward(self, x, y):  # x: (batch, 4, length), y: (batch, length, 4)
            w = y[0]  # (length, 4)
            pos = x.abs() + 0.5
            return (x @ y, torch.matmul(x, y), torch.bmm(x, y), torch.mm(x[0], w), x.matmul(w),
                    y.transpose(1, 2) @ y, torch.matmul(x[0, 0], w), torch.matmul(x[0], w[:, 0]),
                    torch.matmul(x[0, 0], x[0, 0]), y @ x[0],
                    x.clamp(-0.2, 0.3), x.clamp(min=0.1), torch.clamp(x, max=0.2),
                    x.clamp_min(0), x.clamp_max(0.5), torch.clip(x, x[:, :1], x[:1] + 0.5),
                    torch.exp(x), torch.expm1(x), pos.log(), pos.sqrt(), torch.rsqrt(pos), x.abs(), -x,
                    torch.neg(x), x ** 2, x.pow(3), torch.pow(pos, 0.5), 2 ** x, pos ** -1,
                    pos ** 1.7, x.square(), pos.reciprocal(), (x > 0).float(),
                    (x <= y.transpose(1, 2)).float(), torch.ge(x, 0.1).float(), (x != x).float(),
                    torch.where(x > 0, x, 0.1 * x), torch.where(x > 0, x, 0.0),
                    torch.where(x[:, :1] > 0, x, -1.0), x.masked_fill(x < 0, 0.5),
                    x.masked_fill(x[:, :1] > 0, -2.0), x + 0, 1 * x, x / 1, x - 0, 0 - x,
                    (x > 0).long() + 0.5, (x > 0).long() * 2, 3 - (x > 0).int(),
                    (x > 0).long() / 2)


    class Indexing(nn.Module):
        def forward(self, x):  # x: (batch, 4, length)
            n = x.shape[-1]
            cols = x.argmax(1)[0]  # (length,) integers in 0..3
            return (x[-1], x[1:], x[:, 1:3], x[..., ::2], x[:, ::3, 1:], x[:, -3:], x[:, :-1],
                    x[..., 1::2], x[None, 0], x[:, 1:100], x[:, :, 2:n - 1:2], x[:, :, n // 2:],
                    x[x.shape[0] - 1], x[:, 0, n - 2], x[x > 0], x[x[:, 0, 0] > 0],
                    x[x[:, :, 0] > 0, ...], x[:, [0, 2, -1]], x[[1]], x[0][cols],
                    x[0][:, cols - 4], x[0][cols[:2].view(1, 2)], x[:, 1, cols[:3]])


    class Creation(nn.Module):
        def forward(self, x):  # x: (batch, 4, length)
            z64 = x.double()
            return (torch.zeros(2, 3), torch.zeros(x.shape[0], 4), torch.ones((2, 2)),
                    torch.ones(3, dtype=torch.int64), torch.full((3,), 2.5), torch.arange(5),
                    torch.arange(1, 7, 2, dtype=torch.float32), torch.arange(x.shape[-1]),
                    torch.zeros_like(x), torch.ones_like(x, dtype=torch.float64),
                    torch.full_like(x, 3.0), x.new_zeros(2, 3), x.new_ones((x.shape[0], 2)),
                    x.new_full((2,), 7.0), z64, x.to(torch.float64), x.to(dtype=torch.float16),
                    x.half(), (x > 0.5).long(), x.float() + 1, x.type_as(z64),
                    x.to(x) * 2, x.to("cpu") * 3, (10 * x).int(), z64.float(),
                    x.data * 2, x.cpu() + 1, (x > 0).byte().float(), x.bool().long(),
                    (10 * x).short().float(), (x > 0).bool().float())


    class Elementwise(nn.Module):
        def forward(self, x):  # x: (batch, 4, length)
            halves = (x * 8).floor() / 2  # many exact ties: PyTorch rounds them to even
            m, n = x > 0, x < 0.5
            d = x[:, :1] + 1.5  # (batch, 1, length), in [0.5, 2.5]
            return (torch.ceil(3 * x), x.floor(), torch.trunc(3 * x), torch.fix(3 * x), x.sign(),
                    torch.sin(x), x.cos(), torch.tan(x), torch.erf(x), torch.special.erf(x),
                    torch.round(halves), halves.round(), torch.round(3 * x),
                    torch.round(torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 3.0])),
                    torch.fmod(3 * x, d), torch.fmod(3 * x, -d), (3 * x).fmod(0.7),
                    torch.remainder(3 * x, d), torch.remainder(3 * x, -d), (3 * x) % 0.7,
                    (3 * x) % -0.7, 2.0 % d, torch.remainder(-2.0, d),
                    torch.remainder(torch.arange(12.0) * 0.1, 0.1),  # exact: 1.0 % 0.1 is ~0.1
                    torch.fmod(torch.arange(12.0), 0.3),
                    (10 * x).long() % 3, torch.fmod((10 * x).long(), -3),
                    torch.remainder((10 * x).long(), (3 * d).long()),
                    (3 * x) // d, (3 * x) // -0.7, 2.0 // d, torch.floor_divide(3 * x, -d),
                    torch.div(3 * x, d, rounding_mode='floor'),
                    torch.arange(12.0) // 0.1,  # PyTorch's 7.0 // 0.1 is 69, not 70
                    (10 * x).long() // 3, (10 * x).long() // -(3 * d).long(),
                    (10 * x).int() % 3, (10 * x).int() // -4,
                    torch.maximum(x, x.flip(0)), x.minimum(x[:, :1]), x.round(decimals=2),
                    torch.round(30 * x, decimals=-1)) + tuple(
                # bool results as floats: a bool golden does not load in Candle (safetensors)
                b.float() for b in (
                    torch.isnan(x.log()), x.isinf(), torch.isinf(x / 0.0), x.log().isfinite(),
                    ~m, m & n, m | n, m ^ n, torch.logical_and(m, n), torch.logical_or(x, n),
                    torch.logical_xor(m, n), m.logical_not(), torch.bitwise_not(m), m & True,
                    m | True, m ^ True, True & m, m ^ False))


    class Structure(nn.Module):
        def forward(self, x):  # x: (batch, 4, length)
            sq = x[:, :, :4]
            values, indices = x.topk(2)
            low = torch.topk(x, 3, dim=1, largest=False)
            idx = x.argmax(1, keepdim=True)  # (batch, 1, length)
            return (torch.tril(x), x.triu(1), torch.tril(sq, -1), x.tril(diagonal=2),
                    torch.triu(x.transpose(1, 2)), torch.tril(torch.ones(x.shape[-1], x.shape[-1])),
                    torch.prod(x), x.prod(1), torch.prod(x + 1, -1, keepdim=True),
                    (3 * x).long().prod(1), torch.cumsum(x, -1),
                    x.cumsum(dim=1, dtype=torch.float64),
                    torch.flip(x, [0, 2]), x.flip(1), torch.gather(x, 1, idx),
                    x.gather(-1, idx[:, :, :3]), x.gather(1, idx.expand(-1, 3, -1)),
                    values, indices, low.values, low.indices, x.topk(x.shape[0] - 1, 0)[0],
                    F.one_hot(x.argmax(1), 4), F.one_hot(idx, num_classes=x.shape[1]),
                    x.repeat_interleave(2, dim=1), torch.repeat_interleave(x, 3, -1),
                    x.repeat_interleave(2), x.repeat_interleave(x.shape[0], dim=0),
                    torch.std(x), x.var(1, unbiased=False), torch.std(x, False),
                    torch.var(x, dim=-1, correction=0, keepdim=True), x.std((0, 2)),
                    torch.tensor([1.0, 2.5, -3.0]) + x.sum(), torch.tensor([[1, 2], [3, 4]]),
                    torch.tensor([x.shape[0], x.shape[-1]]), torch.tensor(0.5) * x,
                    torch.zeros_like(torch.empty_like(x)),
                    torch.zeros_like(torch.empty(2, x.shape[0])),
                    torch.zeros_like(x.new_empty(3)), x.sum(axis=1),
                    x.mean(axis=-1, keepdims=True))
    """

MODELS = {"layout": "Layout", "reductions": "Reductions", "activations": "Activations",
          "math": "Math", "indexing": "Indexing", "creation": "Creation",
          "elementwise": "Elementwise", "structure": "Structure"}


def _inputs(name: str) -> str:
    cases = []
    for b, n in ((2, 6), (3, 9)):
        x = f"{{shape: [{b}, 4, {n}], low: -1, high: 1}}"
        case = f"      - x: {x}\n"
        if name == "math":
            case += f"        y: {{shape: [{b}, {n}, 4], low: -1, high: 1}}\n"
        cases.append(case)
    return "".join(cases)


@pytest.mark.cargo
def test_ops_match_pytorch(tmp_path, cargo_env, capsys):
    (tmp_path / "opmodels.py").write_text(textwrap.dedent(OPS))
    entries = "".join(f"  - name: {name}\n    factory: opmodels:{cls}\n    inputs:\n"
                      + _inputs(name) for name, cls in MODELS.items())
    (tmp_path / "models.yaml").write_text("crate: crate\nmodels:\n" + entries)
    pin_lockfile(tmp_path / "crate")
    code = main(["all", "--config", str(tmp_path / "models.yaml")])
    captured = capsys.readouterr()
    assert code == 0, captured.out[-6000:] + captured.err[-6000:]
    assert f"parity: {2 * len(MODELS)} passed, 0 failed" in captured.out
    # identities (dropout, detach, clone, same-dtype casts) are aliases, not statements
    code = (tmp_path / "crate" / "src" / "activations.rs").read_text()
    assert "dropout" not in code and "detach" not in code and "clone()?" not in code
    indexing = (tmp_path / "crate" / "src" / "indexing.rs").read_text()
    assert "x.get_on_dim(0, x.dim(0)? - 1)?" in indexing  # x[x.shape[0] - 1], by provenance
    assert_clippy_clean(tmp_path / "crate")


# --- arguments that are reported ------------------------------------------------------------------

UNSUPPORTED = """\
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Call(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x):
            return self.fn(x)


    def cropping_pad():
        return Call(lambda x: F.pad(x, (-1, 1)))

    def promoted_exp():
        return Call(lambda x: torch.exp((x > 0).long()))

    def training_dropout():
        return Call(lambda x: F.dropout(x, 0.5, training=True))

    def tensor_exponent():
        return Call(lambda x: x ** x)

    def implicit_softmax():
        return Call(lambda x: F.softmax(x))

    def nonzero_where():
        return Call(lambda x: torch.where(x > 0)[0].float())

    def view_as_dtype():
        return Call(lambda x: x.view(torch.int32).float())

    def apart_indices():
        return Call(lambda x: x[0, :, [1, 2]])

    def two_lists():
        return Call(lambda x: x[[0, 1], [1, 2]])

    def mask_and_int():
        return Call(lambda x: x[x[:, 0, 0] > 0, 0])

    def one_hot_of_values():
        return Call(lambda x: F.one_hot(x.argmax(-1)).float())

    def repeats_tensor():
        return Call(lambda x: x.repeat_interleave(x.argmax(-1)[0, 0:1] + 1, dim=0))

    def unsorted_topk():
        return Call(lambda x: x.topk(2, sorted=False)[0])
    """

REPORTED = {
    "cropping_pad": "negative padding -1 (cropping)",
    "promoted_exp": "torch.exp gives float32 from int64",
    "training_dropout": "torch.nn.functional.dropout with training=True",
    "tensor_exponent": "pow with a tensor exponent",
    "implicit_softmax": "softmax without dim",
    "nonzero_where": "torch.where(condition)",
    "view_as_dtype": "Tensor.view(torch.int32): a reinterpretation of the bits",
    "apart_indices": "an integer index apart from a tensor index",
    "two_lists": "more than one tensor or list index",
    "mask_and_int": "a boolean mask together with other indices",
    "one_hot_of_values": "one_hot without num_classes",
    "repeats_tensor": "repeat_interleave with a tensor of repeats",
    "unsorted_topk": "topk with sorted=False",
}


@pytest.mark.filterwarnings("ignore:Implicit dimension choice")
def test_unsupported_arguments_are_reported(tmp_path):
    (tmp_path / "badops.py").write_text(textwrap.dedent(UNSUPPORTED))
    entries = "".join(f"  - name: {name}\n    factory: badops:{name}\n    inputs:\n"
                      "      - x: {shape: [2, 3, 4]}\n" for name in REPORTED)
    (tmp_path / "models.yaml").write_text("models:\n" + entries)
    cfg = load_config(tmp_path / "models.yaml")
    with pytest.raises(RecordError) as info:
        record(cfg, list(cfg.models))
    report = " ".join(str(info.value).split())
    for name, expected in REPORTED.items():
        assert expected in report, (name, report)
