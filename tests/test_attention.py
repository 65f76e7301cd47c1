"""Attention through the real pipeline: torch.einsum, F.scaled_dot_product_attention and
nn.MultiheadAttention checked against PyTorch at two trace shapes, and what is reported."""

from __future__ import annotations

import textwrap

import pytest

pytest.importorskip("torch")

from conftest import assert_clippy_clean, pin_lockfile  # noqa: E402
from pycandle.cli import main  # noqa: E402
from pycandle.config import load_config  # noqa: E402
from pycandle.record import RecordError, record  # noqa: E402

MODELS_PY = """\
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Einsums(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 6))

        def forward(self, x, y):  # x: (batch, time, 4), y: (batch, time2, 4)
            b, t, _ = x.shape
            q = x.view(b, t, 2, 2).transpose(1, 2)  # (b, 2, t, 2): a strided operand
            att = torch.einsum("bhtd,bhsd->bhts", q, q)
            return (torch.einsum("btf,bsf->bts", x, y), torch.einsum("btf,fk->btk", x, self.w),
                    torch.einsum("...f,fk->...k", [x, self.w]), torch.einsum("btf->bft", x),
                    torch.einsum("btf->b", x), torch.einsum("btf,btf->bt", x, x),
                    torch.einsum("btf,bsf", x, y), att,
                    torch.einsum("bhts,bhsd->bthd", att, q), torch.einsum("...ij->...ji", x),
                    torch.einsum("bt,bs->bts", x[:, :, 0], y[:, :, 1]),
                    torch.einsum("btf,fk,k->bt", x, self.w, self.w[0]),
                    torch.einsum("b...,b...->b...", x, x), torch.einsum("btf,f->bt", x, x[0, 0]))


    class Sdpa(nn.Module):
        def forward(self, x, y):  # x: (batch, time, 4), y: (batch, time2, 4)
            b, t, _ = x.shape
            q = x.view(b, t, 2, 2).transpose(1, 2)
            kv = y.view(b, y.shape[1], 2, 2).transpose(1, 2)
            i = torch.arange(t)
            j = torch.arange(y.shape[1])
            allowed = j[None, :] <= i[:, None] + 1  # (t, time2): True attends
            bias = (x @ y.transpose(1, 2)) * 0.5
            return (F.scaled_dot_product_attention(x, y, y),
                    F.scaled_dot_product_attention(q, kv, kv),
                    F.scaled_dot_product_attention(q, q, q, is_causal=True),
                    F.scaled_dot_product_attention(x, y, y, is_causal=True),
                    F.scaled_dot_product_attention(x, y, y, attn_mask=allowed),
                    F.scaled_dot_product_attention(q, kv, kv, bias[:, None], scale=0.3),
                    F.scaled_dot_product_attention(x, y, y, dropout_p=0.0, enable_gqa=True))
    """

MODELS = {"einsums": "Einsums", "sdpa": "Sdpa"}


def _inputs() -> str:
    cases = []
    for b, t, s in ((2, 5, 7), (3, 4, 3)):
        cases.append(f"      - x: {{shape: [{b}, {t}, 4], low: -1, high: 1}}\n"
                     f"        y: {{shape: [{b}, {s}, 4], low: -1, high: 1}}\n")
    return "".join(cases)


@pytest.mark.cargo
def test_attention_matches_pytorch(tmp_path, cargo_env, capsys):
    (tmp_path / "attnmodels.py").write_text(textwrap.dedent(MODELS_PY))
    entries = "".join(f"  - name: {name}\n    factory: attnmodels:{cls}\n    inputs:\n"
                      + _inputs() for name, cls in MODELS.items())
    (tmp_path / "models.yaml").write_text("crate: crate\nmodels:\n" + entries)
    pin_lockfile(tmp_path / "crate")
    code = main(["all", "--config", str(tmp_path / "models.yaml")])
    captured = capsys.readouterr()
    assert code == 0, captured.out[-6000:] + captured.err[-6000:]
    assert f"parity: {2 * len(MODELS)} passed, 0 failed" in captured.out
    assert_clippy_clean(tmp_path / "crate")


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


    def diagonal():
        return Call(lambda x: torch.einsum("bii->bi", x[:, :3, :3]))

    def sdpa_dropout():
        return Call(lambda x: F.scaled_dot_product_attention(x, x, x, dropout_p=0.1))

    def broadcast_index():
        return Call(lambda x: torch.einsum("btf,btf->bt", x, x[:1]))
    """

REPORTED = {
    "diagonal": "einsum 'bii->bi': a repeated index in one operand (a diagonal)",
    "sdpa_dropout": "scaled_dot_product_attention with dropout_p=0.1",
    "broadcast_index": "einsum 'btf,btf->bt': index 'b' has different sizes in the operands",
}


def test_unsupported_attention_is_reported(tmp_path):
    (tmp_path / "badattn.py").write_text(textwrap.dedent(UNSUPPORTED))
    entries = "".join(f"  - name: {name}\n    factory: badattn:{name}\n    inputs:\n"
                      "      - x: {shape: [2, 3, 4]}\n" for name in REPORTED)
    (tmp_path / "models.yaml").write_text("models:\n" + entries)
    cfg = load_config(tmp_path / "models.yaml")
    with pytest.raises(RecordError) as info:
        record(cfg, list(cfg.models))
    report = " ".join(str(info.value).split())
    for name, expected in REPORTED.items():
        assert expected in report, (name, report)
