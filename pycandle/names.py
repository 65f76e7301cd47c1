"""One home for the names generated code uses for itself, and for turning a user's names into
Rust ones that cannot collide with them.

Config validation, the tracer (node names become Rust locals), lowering (struct and local
names) and the templates all read this module; a name the generated code reserves is listed
here and nowhere else. No torch here.
"""

from __future__ import annotations

import keyword
import re

# Rust keywords, strict and reserved (2021 edition, and `gen` of 2024): never an identifier.
RUST_KEYWORDS = frozenset(
    "as break const continue crate else enum extern false fn for if impl in let loop match mod "
    "move mut pub ref return self static struct super trait true type unsafe use where while "
    "async await dyn abstract become box do final macro override priv typeof unsized virtual "
    "yield try gen Self".split()
)

# Files of the generated crate that are not model modules: a model named like one of them
# would write `pub mod lib;` into src/lib.rs or `mod main;` into tests/parity/main.rs.
CRATE_FILES = frozenset({"lib", "main", "mod", "build", "tests", "benches", "examples"})

# Crates in scope in generated code: a module of that name shadows the crate in paths.
CRATES = frozenset({"std", "core", "alloc", "proc_macro", "test", "candle", "candle_core",
                    "candle_nn", "pycandle_runtime", "safetensors"})

# Locals and parameters the model code declares besides the user's: `forward_stream`'s
# carried state, the device that creation ops use, the VarBuilder of `load`.
MODEL_LOCALS = frozenset({"state", "device", "vb"})

# Locals of the generated parity tests that a layer's check block reads after binding the
# layer's outputs (a node named `report` would shadow the report it is checked into).
TEST_LOCALS = frozenset({"parity", "model", "report", "g", "case", "golden", "weights"})

# Locals of the generated examples (`examples/<model>.rs`) besides the model's inputs, which
# are bound next to them and renamed when they collide.
EXAMPLE_LOCALS = frozenset({"run", "model", "elapsed"})

# Every name a node's output must not take as a Rust local.
# The functions of pycandle-runtime that generated code calls unqualified (`atan2(y, x)?`): a
# local of that name would shadow the function (tests/test_names.py checks the runtime's list).
RUNTIME_FUNCTIONS = frozenset({
    "atan2", "avg_pool_dim", "conv_transpose2d_grouped", "dilate", "div_floor", "from_end",
    "masked_select", "max_pool_dim", "pad_circular", "pad_constant", "pad_reflect", "rem_floor",
    "rem_trunc", "resize_bicubic", "resize_linear", "resize_nearest", "resize_nearest_exact",
    "sequence_lengths", "slice_bound", "sliding_windows", "take", "take_every", "weight_norm"})

RESERVED_LOCALS = RUST_KEYWORDS | MODEL_LOCALS | TEST_LOCALS | RUNTIME_FUNCTIONS
# ... and a forward() argument (the parity tests pass arguments without binding them).
RESERVED_ARGS = RUST_KEYWORDS | MODEL_LOCALS

# Model names: the Rust module name of the model, and its file names.
MODEL_NAME_MAX = 64
_MODEL_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def model_name_problem(name: str) -> str | None:
    """Why `name` cannot name a model (a Rust module and its files), or None."""
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        return ("must be a lowercase identifier (letters a-z, digits, underscores), "
                "e.g. voice_encoder")
    if len(name) > MODEL_NAME_MAX:
        return f"is {len(name)} characters long; at most {MODEL_NAME_MAX}"
    if name in RUST_KEYWORDS or keyword.iskeyword(name):
        return "is a keyword"
    if name in CRATE_FILES:
        return "names a file of the generated crate itself (lib, main, tests, ...)"
    if name in CRATES or name.startswith("pycandle"):
        return "names a crate the generated code uses"
    if name.strip("_") == "":
        return "must contain a letter or digit"
    return None


def arg_name_problem(name: str) -> str | None:
    """Why `name` cannot name a forward() argument in the generated code, or None."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return "is not an identifier"
    if len(name) > MODEL_NAME_MAX:
        return f"is {len(name)} characters long; at most {MODEL_NAME_MAX}"
    if name in RUST_KEYWORDS or keyword.iskeyword(name):
        return "is a Rust or Python keyword"
    return None


def rust_ident(text: str, reserved: frozenset[str] = RUST_KEYWORDS) -> str:
    """A lowercase Rust identifier for a PyTorch name (`encoder.0` -> `encoder_0`, `0` ->
    `layer_0`, `type` -> `type_`); `reserved` names get a trailing underscore."""
    ident = re.sub(r"[^0-9a-zA-Z_]", "_", text).strip("_").lower() or "value"
    if ident[0].isdigit():
        ident = f"layer_{ident}"  # nn.Sequential's children are named 0, 1, ...
    if keyword.iskeyword(ident) or ident in reserved or ident in RUST_KEYWORDS:
        ident += "_"
    return ident


def camel(name: str) -> str:
    """`voice_encoder` -> `VoiceEncoder`, `encoder.0` -> `Encoder0`."""
    return "".join(p[:1].upper() + p[1:] for p in re.split(r"[^0-9a-zA-Z]+", name) if p)


# Type names in scope in every generated model file: the prelude's, and the ones it may import.
PRELUDE_TYPES = frozenset({"Box", "Option", "Result", "Some", "None", "Ok", "Err", "String",
                           "Vec", "Self", "Default", "Clone", "Debug"})


def model_struct(model: str, taken: frozenset[str] | set[str]) -> str:
    """The Rust type of model `model`: its name in CamelCase, unless that is a type the file
    imports or the prelude has (`linear` would declare `pub struct Linear` next to
    `use candle_nn::Linear`), then with a `Model` suffix."""
    base = camel(model) or "Model"
    if base in taken or base in PRELUDE_TYPES:
        base += "Model"
    return base
