"""Lowering: a manifest -> a model IR in which every decision about the Rust is made.

Neutral ground between the stages: `record` lowers each manifest as its support check (through
`pycandle.support`) and `codegen` lays the IR out with its templates. No torch here.
"""

from pycandle.lowering.lower import ModelIR, live_nodes, lower  # noqa: F401
