"""record: graph capture on real PyTorch models (needs torch)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

from pycandle.cli import main  # noqa: E402
from pycandle.config import load_config  # noqa: E402
from pycandle.record import RecordError, record  # noqa: E402


def project(tmp_path: Path, module: str, models_yaml: str) -> Path:
    (tmp_path / "usermodels.py").write_text(textwrap.dedent(module))
    path = tmp_path / "models.yaml"
    path.write_text(textwrap.dedent(models_yaml))
    return path


ENCODER = """\
    import torch
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self, hidden=8):
            super().__init__()
            self.lstm = nn.LSTM(5, hidden, num_layers=2, batch_first=True)
            self.proj = nn.Linear(hidden, 3)

        def forward(self, x):
            if x.max() > 1:  # data-dependent Python
                raise ValueError("out of range")
            out, (h, c) = self.lstm(x)
            y = torch.relu(self.proj(h[-1]))
            return y / torch.linalg.norm(y, dim=1, keepdim=True)

    class Cumsum(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(5, 5)

        def forward(self, x):
            return torch.cumprod(self.proj(x), dim=1)

    class WithSoftsign(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.Softsign()

        def forward(self, x):
            return self.act(x)


    class Repeated(nn.Module):
        def __init__(self):
            super().__init__()
            self.acts = nn.ModuleList([nn.Softsign() for _ in range(3)])

        def forward(self, x):
            for act in self.acts:
                x = torch.cumprod(act(x), dim=1) + 1
            return x
    """

YAML = """\
    models:
      - name: enc
        factory: usermodels:Encoder
        kwargs: {hidden: 6}
        inputs:
          - x: {shape: [2, 7, 5]}
          - x: {shape: [3, 4, 5]}
    """


def test_record_writes_manifest_weights_and_all_leaf_outputs(tmp_path):
    cfg = load_config(project(tmp_path, ENCODER, YAML))
    (rec,), _ = record(cfg, list(cfg.models))
    out = tmp_path / "artifacts" / "enc"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema"] == 1
    assert manifest["modules"]["lstm"]["type"] == "torch.nn.LSTM"
    assert manifest["modules"]["lstm"]["config"]["num_layers"] == {"int": 2}
    targets = [n["target"] for n in manifest["graph"]["nodes"]]
    assert targets[:3] == ["x", "Tensor.max", "Tensor.gt"]  # the range check is traced too
    assert "lstm" in targets and "torch.linalg.norm" in targets
    node = next(n for n in manifest["graph"]["nodes"] if n["target"] == "torch.linalg.norm")
    assert node["source"] == "usermodels.py:15"
    assert node["kwargs"] == {"dim": {"int": 1}, "keepdim": {"bool": True}}
    # every output of the LSTM, for both trace cases; weights under state-dict names
    golden = load_file(out / "golden.safetensors")
    for case, batch in ((0, 2), (1, 3)):
        assert golden[f"c{case}.lstm.out.0"].shape == (batch, 7 if case == 0 else 4, 6)
        assert golden[f"c{case}.lstm.out.1.0"].shape == (2, batch, 6)
        assert golden[f"c{case}.lstm.out.1.1"].shape == (2, batch, 6)
        assert f"c{case}.input.x" in golden and f"c{case}.output.0" in golden
    weights = load_file(out / "weights.safetensors")
    assert set(weights) == set(rec.manifest.modules["lstm"].parameters and [
        f"lstm.{p}" for p in rec.manifest.modules["lstm"].parameters] + ["proj.weight", "proj.bias"])
    assert any("a tensor became a Python value" in w and "usermodels.py:11" in w
               for w in rec.manifest.warnings)


def test_record_is_deterministic(tmp_path):
    cfg = load_config(project(tmp_path, ENCODER, YAML))
    record(cfg, list(cfg.models))
    out = tmp_path / "artifacts" / "enc"
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    recordings, _ = record(cfg, list(cfg.models), force=True)
    assert len(recordings) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_record_skips_what_is_up_to_date_and_redoes_what_changed(tmp_path):
    path = project(tmp_path, ENCODER, YAML.rstrip(" ") + """\
      - name: other
        factory: usermodels:Cumsum
        inputs:
          - x: {shape: [2, 3, 5]}
    """.replace("Cumsum", "Encoder"))
    cfg = load_config(path)
    recordings, skipped = record(cfg, list(cfg.models))
    assert len(recordings) == 2 and skipped == []
    recordings, skipped = record(cfg, list(cfg.models))
    assert recordings == [] and skipped == ["enc", "other"]
    # a changed models.yaml entry redoes only that model
    path.write_text(path.read_text().replace("{hidden: 6}", "{hidden: 5}"))
    cfg = load_config(path)
    recordings, skipped = record(cfg, list(cfg.models))
    assert [r.manifest.name for r in recordings] == ["enc"] and skipped == ["other"]


def test_modules_of_a_virtualenv_under_the_project_do_not_count(tmp_path, monkeypatch):
    """A venv inside the project (nox's .nox/, a .venv/) holds torch's lazily imported modules:
    they must not make a model look changed on the next run."""
    site = tmp_path / ".venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    (site / "lazy_helper.py").write_text("SCALE = 2.0\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "lazy_helper", raising=False)
    path = project(tmp_path, """\
        import torch
        from torch import nn

        class Lazy(nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = nn.Linear(5, 3)

            def forward(self, x):
                import lazy_helper  # first imported while recording
                return self.proj(x) * lazy_helper.SCALE
        """, """\
        models:
          - name: lazy
            factory: usermodels:Lazy
            inputs:
              - x: {shape: [2, 5]}
        """)
    cfg = load_config(path)
    assert [r.manifest.name for r in record(cfg, list(cfg.models))[0]] == ["lazy"]
    del sys.modules["lazy_helper"]  # as in the next run's fresh process
    assert record(cfg, list(cfg.models)) == ([], ["lazy"])


@pytest.mark.parametrize("factory, expected", [
    ("usermodels:Cumsum", "usermodels.py:23: function torch.cumprod is not supported"),
    ("usermodels:WithSoftsign", "[act] layer type torch.nn.Softsign is not supported"),
    # a construct in a loop is reported once, with how often it occurs
    ("usermodels:Repeated", "usermodels.py:41: [acts.0 and 2 more] layer type "
     "torch.nn.Softsign is not supported (3 times)"),
    ("usermodels:Repeated", "usermodels.py:41: function torch.cumprod is not supported "
     "(3 times, and 3 uses of their results)"),
])
def test_unsupported_model_writes_nothing_and_exits_non_zero(tmp_path, capsys, factory, expected):
    path = project(tmp_path, ENCODER, YAML.rstrip(" ") + f"""\
      - name: bad
        factory: {factory}
        inputs:
          - x: {{shape: [2, 3, 5]}}
    """)
    # a previous good recording of `enc` must survive the failed run untouched
    cfg = load_config(path)
    record(cfg, [cfg.models[0]])
    before = (tmp_path / "artifacts" / "enc" / "manifest.json").read_bytes()
    code = main(["record", "--config", str(path)])
    assert code == 2
    err = capsys.readouterr().err
    assert expected in " ".join(err.split()), err
    assert "nothing was written" in err
    assert not (tmp_path / "artifacts" / "bad").exists()
    assert (tmp_path / "artifacts" / "enc" / "manifest.json").read_bytes() == before


def test_inputs_that_do_not_fit_forward_are_named(tmp_path):
    path = project(tmp_path, ENCODER, YAML.replace("- x: {shape: [2, 7, 5]}", "- y: {shape: [2, 7, 5]}")
                   .replace("- x: {shape: [3, 4, 5]}", "- y: {shape: [3, 4, 5]}"))
    cfg = load_config(path)
    with pytest.raises(RecordError, match=r"models.yaml:6: model 'enc': field 'inputs\[0\]': does not fit forward\(x\)"):
        record(cfg, list(cfg.models))


def test_factory_errors_are_named(tmp_path):
    path = project(tmp_path, ENCODER, YAML.replace("usermodels:Encoder", "usermodels:Nope"))
    cfg = load_config(path)
    with pytest.raises(RecordError, match="field 'factory': 'usermodels' has no attribute 'Nope'"):
        record(cfg, list(cfg.models))
    path = project(tmp_path, ENCODER, YAML.replace("{hidden: 6}", "{hidden: 6, colour: 1}"))
    cfg = load_config(path)
    with pytest.raises(RecordError, match="field 'kwargs': calling usermodels:Encoder"):
        record(cfg, list(cfg.models))


PACKED = """\
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    class Packed(nn.Module):
        def __init__(self, padding_value=0.0):
            super().__init__()
            self.rnn = nn.GRU(3, 4, batch_first=True)
            self.padding_value = padding_value

        def forward(self, x, lengths):
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, h = self.rnn(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, padding_value=self.padding_value)
            return out, h
    """

PACKED_YAML = """\
    models:
      - name: packed
        factory: usermodels:Packed
        kwargs: {padding_value: PAD}
        inputs:
          - x: {shape: [3, 5, 3]}
            lengths: {shape: [3], dtype: int64, low: 1, high: 6}
          - x: {shape: [2, 4, 3]}
            lengths: {shape: [2], dtype: int64, low: 4, high: 5}
    """


def test_packing_is_recorded_as_single_nodes(tmp_path):
    cfg = load_config(project(tmp_path, PACKED, PACKED_YAML.replace("PAD", "0.0")))
    (rec,), _ = record(cfg, list(cfg.models))
    targets = [n.target for n in rec.manifest.nodes]
    assert targets == ["x", "lengths", "torch.nn.utils.rnn.pack_padded_sequence", "rnn",
                       "torch.nn.utils.rnn.pad_packed_sequence"]
    pack = rec.manifest.nodes[2]
    assert pack.source == "usermodels.py:12" and pack.kwargs["enforce_sorted"] is False
    # the GRU's goldens are the padded batch (its own layout) and the lengths
    assert rec.golden["c0.rnn.in.0"].shape[0] == 3  # batch first, time cut to max(lengths)
    assert rec.golden["c0.rnn.in.1"].dtype == torch.int64


def test_an_unsupported_packing_option_is_reported(tmp_path, capsys):
    path = project(tmp_path, PACKED, PACKED_YAML.replace("PAD", "-1.0"))
    assert main(["record", "--config", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "usermodels.py:14: pad_packed_sequence with padding_value=-1.0" in err, err


def test_coverage_of_a_config_names_what_each_model_uses(tmp_path, capsys):
    path = project(tmp_path, ENCODER, YAML.rstrip(" ") + """\
      - name: bad
        factory: usermodels:Cumsum
        inputs:
          - x: {shape: [2, 3, 5]}
    """)
    assert main(["coverage", "--config", str(path)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "enc: supported; layers: torch.nn.LSTM, torch.nn.Linear;" in out
    assert "bad: 1 unsupported" in out and "function torch.cumprod is not supported" in out
    assert not (tmp_path / "artifacts").exists()  # coverage writes nothing
    # once recorded, the recording says it: nothing is traced again
    assert main(["record", "--config", str(path), "--model", "enc"]) == 0
    capsys.readouterr()
    assert main(["coverage", "--config", str(path), "--model", "enc"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "enc: supported (as recorded); layers: torch.nn.LSTM, torch.nn.Linear;" in out, out


def test_non_finite_values_from_pytorch_itself_are_noted(tmp_path):
    """A parameter left uninitialised (whisper's torch.empty positional embedding) makes
    PyTorch's own outputs NaN: record says so, naming the parameter, instead of leaving a
    parity failure that looks like the port's."""
    module = textwrap.dedent("""\
        import torch
        from torch import nn


        class Unset(nn.Module):
            def __init__(self):
                super().__init__()
                self.offset = nn.Parameter(torch.full((4,), float("nan")))

            def forward(self, x):
                return x + self.offset
        """)
    cfg = load_config(project(tmp_path, module, textwrap.dedent("""\
        models:
          - name: unset
            factory: usermodels:Unset
            inputs:
              - x: {shape: [2, 4]}
        """)))
    (rec,), _ = record(cfg, list(cfg.models))
    notes = " ".join(rec.manifest.warnings)
    assert "parameters holding NaN or infinity: offset" in notes
    assert "trace case 0: the output of PyTorch's own forward() holds NaN or infinity" in notes


def test_only_the_root_cause_of_differing_outputs_is_reported(tmp_path, capsys):
    """A value whose structure changes with the input length is reported once; what is computed
    from it is counted, not listed."""
    path = project(tmp_path, """\
        import torch
        from torch import nn


        class Splits(nn.Module):
            def forward(self, x):
                parts = torch.split(x, 2, dim=1)
                return torch.cat(parts, 1) + 1
        """, """\
        models:
          - name: splits
            factory: usermodels:Splits
            inputs:
              - x: {shape: [2, 6, 3]}
              - x: {shape: [2, 8, 3]}
        """)
    assert main(["record", "--config", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert ("1 unsupported construct(s): - usermodels.py:7: torch.split: outputs differ in "
            "structure or dtype between trace cases (and 2 uses of its result)") in err, err
