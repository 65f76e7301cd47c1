"""models.yaml validation: every error names the file, the line and the field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pycandle.config import ConfigError, load_config

GOOD_MODEL = """\
  - name: enc
    factory: pkg.mod:Model
    inputs:
      - x: {shape: [2, 3]}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_good_config_is_typed_and_relative_to_the_file(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"")
    path = write(tmp_path, """\
        crate: out/crate
        models:
          - name: enc
            factory: pkg.mod:Model
            kwargs: {hidden: 8}
            weights: w.safetensors
            seed: 3
            inputs:
              - x: {shape: [2, 3], dtype: float64, low: -1, high: 1}
              - x: {shape: [1, 5, 3]}
            tolerance: {atol: 1.0e-6, rtol: 0}
        """)
    cfg = load_config(path)
    assert cfg.crate == (tmp_path / "out" / "crate").resolve()
    assert cfg.artifacts == (tmp_path / "artifacts").resolve()
    (m,) = cfg.models
    assert m.name == "enc" and m.kwargs == {"hidden": 8} and m.seed == 3
    assert m.weights == (tmp_path / "w.safetensors").resolve()
    assert m.inputs[0]["x"].shape == (2, 3) and m.inputs[0]["x"].dtype == "float64"
    assert m.inputs[0]["x"].low == -1.0 and m.inputs[1]["x"].dtype == "float32"
    assert m.tolerance.atol == 1e-6 and m.tolerance.rtol == 0.0
    assert m.location.line == 3


@pytest.mark.parametrize(
    "text, line, expected",
    [
        ("models: [\n", 2, "invalid YAML"),
        ("- just a list\n", 1, "top level must be a mapping"),
        ("crate: generated\n", 1, "field 'models': is required"),
        ("models:\n" + GOOD_MODEL + "extra: 1\n", 6, "field 'extra': unknown key"),
        ("models:\n" + GOOD_MODEL.replace("    inputs", "    inptus"), 4,
         "model 'enc': field 'inptus': unknown key"),
        ("models:\n" + GOOD_MODEL + "    seed: one\n", 6, "field 'seed': must be int"),
        ("models:\n" + GOOD_MODEL + "    seed: true\n", 6, "field 'seed': must be int"),
        ("models:\n" + GOOD_MODEL + "    seed: -1\n", 6, "field 'seed': must be >= 0"),
        ("models:\n" + GOOD_MODEL.replace("[2, 3]", "[2, 0]"), 5,
         "field 'inputs[0].x.shape': must be a non-empty list of positive integers"),
        ("models:\n" + GOOD_MODEL.replace("[2, 3]", "[]"), 5, "inputs[0].x.shape"),
        ("models:\n" + GOOD_MODEL.replace("[2, 3]}", "[2, 3], dtype: float8}"), 5,
         "field 'inputs[0].x.dtype': unknown dtype 'float8'"),
        ("models:\n" + GOOD_MODEL.replace("[2, 3]}", "[2, 3], colour: red}"), 5,
         "field 'inputs[0].x.colour': unknown key"),
        ("models:\n" + GOOD_MODEL.replace("[2, 3]}", "[2, 3], dtype: int64}"), 5,
         "field 'inputs[0].x.high': is required for int64"),
        ("models:\n" + GOOD_MODEL.replace("[2, 3]}", "[2, 3], low: 2, high: 1}"), 5,
         "field 'inputs[0].x.high': must be above low"),
        ("models:\n" + GOOD_MODEL.replace("name: enc", "name: My-Model"), 2,
         "field 'name': 'My-Model' must be a lowercase identifier"),
        ("models:\n" + GOOD_MODEL.replace("name: enc", "name: ../escape"), 2,
         "field 'name'"),
        ("models:\n" + GOOD_MODEL.replace("name: enc", "name: struct"), 2, "not a keyword"),
        ("models:\n" + GOOD_MODEL + GOOD_MODEL, 6, "model 'enc': field 'name': duplicate model name"),
        ("models:\n" + GOOD_MODEL.replace("pkg.mod:Model", "pkg.mod.Model"), 3,
         "field 'factory': must be 'package.module:callable'"),
        ("models:\n" + GOOD_MODEL + "    weights: missing.safetensors\n", 6,
         "field 'weights': file not found"),
        ("models:\n" + GOOD_MODEL + "    tolerance: {atol: -1}\n", 6,
         "field 'tolerance.atol': must be >= 0"),
        ("models:\n" + GOOD_MODEL + "    dtype: int64\n", 6,
         "field 'dtype': 'int64' is not a floating-point dtype"),
        ("models:\n" + GOOD_MODEL + "    tolerance: {atol: tiny}\n", 6,
         "field 'tolerance.atol': must be a number, got 'tiny'"),
        ("models:\n" + GOOD_MODEL + "    tolerance: {atl: 1}\n", 6,
         "field 'tolerance.atl': unknown key"),
        ("models:\n" + GOOD_MODEL + "    kwargs: [1, 2]\n", 6, "field 'kwargs': must be dict"),
        ("models:\n" + GOOD_MODEL.replace("      - x: {shape: [2, 3]}", "      - []"), 5,
         "field 'inputs[0]': must map forward() argument names"),
        ("models:\n" + GOOD_MODEL + "      - y: {shape: [2, 3]}\n", 6,
         "field 'inputs[1]': every trace case must name the same arguments"),
        ("models:\n" + GOOD_MODEL.replace("    inputs:\n      - x: {shape: [2, 3]}\n",
                                          "    inputs: []\n"), 4,
         "field 'inputs': needs at least one trace case"),
        ("models:\n" + GOOD_MODEL + "    name: again\n", 6, "duplicate key 'name'"),
        ("models:\n" + GOOD_MODEL.replace("- x:", "- fn:"), 5,
         "field 'inputs[0].fn': must be a forward() argument name that is not a Python or Rust"),
    ],
)
def test_bad_config_names_file_line_and_field(tmp_path, text, line, expected):
    message = error_of(tmp_path, text)
    assert f"models.yaml:{line}:" in message, message
    assert expected in message, message


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_select_unknown_model(tmp_path):
    cfg = load_config(write(tmp_path, "models:\n" + GOOD_MODEL))
    with pytest.raises(ConfigError, match="no model named 'other'; models are: enc"):
        cfg.select(["other"])
