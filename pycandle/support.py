"""The support check that `record`, `coverage` and `codegen` share: can a manifest be ported?

`check` lowers the manifest (the same lowering codegen renders, so what passes here generates)
and raises `UnsupportedError` listing every problem with its source line. `used` names the
layers and functions a manifest's forward pass uses. No torch and no templates here.
"""

from __future__ import annotations

from pycandle.enums import NodeOp
from pycandle.lowering import live_nodes, lower
from pycandle.manifest import Manifest


def check(manifest: Manifest) -> None:
    """Raise UnsupportedError listing everything codegen could not translate."""
    lower(manifest)


def used(manifest: Manifest) -> tuple[list[str], list[str]]:
    """The layer types and the function spellings the forward pass uses, sorted."""
    live = live_nodes(manifest)
    layers = sorted({manifest.modules[n.target].type for n in live
                     if n.op == NodeOp.CALL_MODULE and n.target in manifest.modules})
    ops = sorted({n.target for n in live if n.op == NodeOp.CALL_FUNCTION})
    return layers, ops
