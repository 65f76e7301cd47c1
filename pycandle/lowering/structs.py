"""The module tree as Rust structs: containers nest, repeated identical blocks become a `Vec`.

Lowering registers each sublayer the forward pass uses (its PyTorch qualified name, Rust type
and constructor). This module arranges them as PyTorch does: a user module, `nn.Sequential`
or `nn.ModuleDict` becomes a struct of its own, and a container whose children are named
0..n-1 and build identically (same types, same constructor arguments) becomes a `Vec` loaded
in a loop. Identical subtrees share one struct. Every struct loads from the VarBuilder prefix
of its module, so weights still load by state-dict name.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable

from pycandle.names import camel, rust_ident
from pycandle.rust import rust_str


@dataclass(frozen=True)
class LeafField:
    """A sublayer the forward pass calls: Rust type, and its constructor as a function of the
    Rust expression of its own VarBuilder. A parameter or buffer that forward() uses directly
    is a `Tensor` leaf with a `shape` (and its dtype when it is not the model's float type),
    read with `vb.get` from its module's VarBuilder."""

    rust_type: str
    init: Callable[[str], str] | None
    torch_type: str
    shape: tuple[int, ...] | None = None
    dtype: str | None = None  # a Candle DType variant for a non-float tensor


def _get_tensor(leaf: LeafField, vb: str, name: str) -> str:
    shape = "(" + ", ".join(map(str, leaf.shape)) + ("," if len(leaf.shape) == 1 else "") + ")"
    if leaf.dtype is None:
        return f"{vb}.get({shape}, {rust_str(name)})?"
    return (f"{vb}.get_with_hints_dtype({shape}, {rust_str(name)}, Default::default(), "
            f"candle_core::DType::{leaf.dtype})?")


@dataclass(frozen=True)
class FieldDecl:
    name: str
    rust_type: str
    init: str  # the constructor, with `vb` the enclosing struct's VarBuilder
    doc: str


@dataclass
class StructDef:
    name: str
    doc: str  # lines
    fields: list[FieldDecl]
    modules: list[str] = field(default_factory=list)  # qualified names of its instances


@dataclass(frozen=True)
class _Member:
    rust_type: Callable[[], str]  # called once every struct is named
    # (the parent's VarBuilder expression, the member's name there) -> its constructor
    init: Callable[[str, str], str]
    signature: Any  # equal signatures build identical values
    doc: str


@dataclass
class Tree:
    fields: list[FieldDecl]  # the model struct's
    structs: list[StructDef]  # the nested ones, in order of first use
    access: dict[str, str]  # qualified module name -> Rust path from the model (`a[0].b`)


def _parent(qual: str) -> str:
    return qual.rsplit(".", 1)[0] if "." in qual else ""


def _last(qual: str) -> str:
    return qual.rsplit(".", 1)[-1]


_camel = camel


def _vec_init(elem: _Member, count: int) -> Callable[[str], str]:
    """A Vec of `count` identical members, element `i` loading from `vb.pp(i)`."""

    def init(vb: str, name: str) -> str:
        one = elem.init(f"{_pp(vb, name) if name else vb}.pp(i)", "")
        if one.endswith("?") and not one.startswith("{"):
            body = one[:-1]  # the constructor already returns a Result
        else:
            body = f"-> Result<{elem.rust_type()}> {{ Ok({one}) }}"
        return f"(0..{count}).map(|i| {body}).collect::<Result<Vec<_>>>()?"

    return init


def _pp(vb: str, name: str) -> str:
    return f"{vb}.pp({rust_str(name)})"


class _Builder:
    def __init__(self, leaves: dict[str, LeafField], module_types: dict[str, str]):
        self.leaves = leaves
        self.types = module_types
        # children on the way to a used sublayer, in the order the forward pass first uses them
        self.children: dict[str, list[str]] = {}
        for qual in leaves:
            while qual:
                parent = _parent(qual)
                kids = self.children.setdefault(parent, [])
                if qual in kids:
                    break
                kids.append(qual)
                qual = parent
        self.structs: dict[Any, _Struct] = {}  # by signature, named once all are known
        self.members: dict[str, _Member] = {}
        self.vec_elements: set[str] = set()  # qualified names of the blocks held in a Vec
        self.access: dict[str, str] = {}

    def member(self, qual: str) -> _Member:
        if qual not in self.members:
            self.members[qual] = self._member(qual)
        return self.members[qual]

    def _member(self, qual: str) -> _Member:
        torch_type = self.types.get(qual, "module")
        if qual in self.leaves:
            leaf = self.leaves[qual]
            if leaf.shape is not None:  # a parameter or buffer: read from the parent's prefix
                return _Member(lambda: "Tensor", lambda vb, name: _get_tensor(leaf, vb, name),
                               ("tensor", leaf.shape, leaf.dtype, _last(qual)),
                               f"`{_last(qual)}` ({leaf.torch_type})")
            return _Member(lambda: leaf.rust_type,
                           lambda vb, name: leaf.init(_pp(vb, name) if name else vb),
                           ("leaf", leaf.rust_type, leaf.init("vb")),
                           f"`{_last(qual)}` ({leaf.torch_type})")
        kids = self.children[qual]
        members = [self.member(k) for k in kids]
        names = [_last(k) for k in kids]
        if qual and len(kids) >= 2 and sorted(names) == sorted(map(str, range(len(kids)))) \
                and len({m.signature for m in members}) == 1 and members[0].signature[0] != "tensor":
            kids.sort(key=lambda k: int(_last(k)))
            self.vec_elements.update(kids)
            elem = members[0]
            return _Member(lambda: f"Vec<{elem.rust_type()}>", _vec_init(elem, len(kids)),
                           ("vec", len(kids), elem.signature),
                           f"`{_last(qual)}` ({torch_type} of {len(kids)})")
        signature = ("struct", torch_type, tuple((rust_ident(n), m.signature)
                                                 for n, m in zip(names, members)))
        struct = self.structs.get(signature)
        if struct is None:  # named once all are known (name_structs)
            struct = self.structs[signature] = _Struct(f"({torch_type})", names, members)
        struct.modules.append(qual)
        return _Member(lambda: struct.name,
                       lambda vb, name: f"{struct.name}::load({_pp(vb, name) if name else vb})?",
                       signature, f"`{_last(qual)}` ({torch_type})")

    def name_structs(self, model: str, reserved: set[str]) -> dict[str, str]:
        """Name every struct, in order of first use: the root is the model's."""
        taken = set(reserved)
        for struct in self.structs.values():
            if not struct.modules[0]:
                struct.name = model
                continue
            qual = struct.modules[0]
            torch_type = self.types.get(qual, "")
            if not torch_type.startswith("torch.nn."):
                base = _camel(torch_type.rsplit(".", 1)[-1])  # a user module: its class
            elif qual in self.vec_elements:  # `blocks.0` of a list of blocks: Block
                base = _camel(_singular(_last(_parent(qual)))) or "Block"
            elif _last(qual).isdigit():  # an element of a list of unlike blocks
                base = _camel(_last(_parent(qual)) or "block") + _last(qual)
            else:
                base = _camel(_last(qual))
            if not base or base[0].isdigit():
                base = "Block" + base
            if base in reserved:  # an imported type's name: `Lstm` -> `LstmBlock`
                base += "Block"
            name, n = base, 2
            while name in taken:  # another struct's: `ResBlock` -> `ResBlock2`
                name, n = f"{base}{n}", n + 1
            taken.add(name)
            struct.name = name

    def paths(self, qual: str, prefix: str) -> None:
        """Fill `access` for `qual`'s subtree; `prefix` is the Rust path to `qual`."""
        self.access[qual] = prefix
        is_vec = self.member(qual).signature[0] == "vec"
        for kid in self.children.get(qual, []):
            step = f"[{_last(kid)}]" if is_vec else f".{rust_ident(_last(kid))}"
            self.paths(kid, prefix + step)


@dataclass
class _Struct:
    """A struct under construction: its members are known, its name comes last."""

    doc: str
    child_names: list[str]
    members: list[_Member]
    name: str = ""
    modules: list[str] = field(default_factory=list)  # qualified names of its instances

    def finish(self) -> StructDef:
        fields = [FieldDecl(rust_ident(n), m.rust_type(), m.init("vb", n), m.doc)
                  for n, m in zip(self.child_names, self.members)]
        return StructDef(self.name, self.doc, fields, self.modules)


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") \
        else word


def build_tree(leaves: dict[str, LeafField], module_types: dict[str, str], model: str,
               reserved: set[str]) -> Tree:
    """Arrange the used sublayers into the model struct `model` and its nested structs.

    `leaves` is in the order the forward pass first uses them; `module_types` maps every
    qualified module name to its PyTorch type; `reserved` holds the Rust type names already in
    scope, which nested structs must not shadow.
    """
    if not leaves:
        return Tree([], [], {})
    b = _Builder(leaves, module_types)
    b.member("")
    b.name_structs(model, reserved | {model})
    for kid in b.children[""]:
        b.paths(kid, rust_ident(_last(kid)))
    order = {qual: i for i, qual in enumerate(b.access)}  # top-down, in order of use
    structs = []
    for struct in sorted(b.structs.values(), key=lambda s: order.get(s.modules[0], -1)):
        struct.doc = "\n".join(textwrap.wrap(
            ", ".join(f"`{q}`" for q in struct.modules) + f" {struct.doc}", 95))
        structs.append(struct.finish())
    top = structs.pop(0)  # the model's own
    return Tree(top.fields, structs, b.access)
