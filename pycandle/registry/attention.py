"""Attention: torch.einsum and F.scaled_dot_product_attention, lowered to Candle's matmul,
permute, sum and broadcasting ops; nn.MultiheadAttention, implemented by pycandle-runtime."""

from __future__ import annotations

import math
from typing import Any

from pycandle.manifest import TensorMeta
from pycandle.registry.core import (
    Field, Layer, Op, T, Unsupported, alias, bind, local_name, register_layer, register_op,
    require, runtime, rust_float, rust_scalar, shape_tuple, tensor,
)

# --- einsum ---------------------------------------------------------------------------------------

_LETTERS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _parse_einsum(eq: str, ops: list[T]) -> tuple[list[list[str]], list[str]]:
    """The labels of each operand and of the output; `...` becomes one label per broadcast
    dimension ("0", "1", ... counted from the right), as PyTorch aligns them."""
    text = eq.replace(" ", "")
    lhs, arrow, rhs = text.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ops):
        raise Unsupported(f"einsum '{eq}': {len(terms)} operand(s) in the equation, "
                          f"{len(ops)} given")
    n_ell = 0
    labels: list[list[str]] = []
    for term, x in zip(terms, ops):
        head, ell, tail = term.partition("...")
        if "." in head + tail or not set(head + tail) <= _LETTERS:
            raise Unsupported(f"einsum '{eq}': cannot read the term '{term}'")
        explicit = len(head) + len(tail)
        k = x.rank - explicit if ell else 0
        if k < 0 or (not ell and explicit != x.rank):
            raise Unsupported(f"einsum '{eq}': term '{term}' for a rank-{x.rank} operand")
        n_ell = max(n_ell, k)
        labels.append(list(head) + [str(j) for j in range(k - 1, -1, -1)] + list(tail))
        if len(set(labels[-1])) != len(labels[-1]):
            raise Unsupported(f"einsum '{eq}': a repeated index in one operand (a diagonal)")
    ell_labels = [str(j) for j in range(n_ell - 1, -1, -1)]
    if arrow:
        head, ell, tail = rhs.partition("...")
        if "." in head + tail or not set(head + tail) <= _LETTERS:
            raise Unsupported(f"einsum '{eq}': cannot read the output '{rhs}'")
        out = list(head) + (ell_labels if ell else []) + list(tail)
        seen = {c for lab in labels for c in lab}
        if len(set(out)) != len(out) or not set(out) <= seen:
            raise Unsupported(f"einsum '{eq}': bad output '{rhs}'")
        if not ell and n_ell:
            raise Unsupported(f"einsum '{eq}': '...' summed away (no '...' in the output)")
    else:  # implicit: the broadcast dimensions, then the labels seen once, alphabetically
        counts: dict[str, int] = {}
        for lab in labels:
            for c in lab:
                counts[c] = counts.get(c, 0) + 1
        out = ell_labels + sorted(c for c, n in counts.items() if n == 1 and c in _LETTERS)
    return labels, out


class _Einsum:
    """Emits the statements of an einsum block, one operand pair at a time."""

    def __init__(self, eq: str, ops: list[T]):
        self.eq = eq
        self.lines: list[str] = []
        self.taken = list(ops)
        self.size: dict[str, str] = {}  # label -> Rust usize expression
        self.shapes: dict[str, tuple[int, ...]] = {}  # label -> its size in each trace case
        self.n = 0

    def borrow(self, expr: str) -> str:
        """`expr` as a `&Tensor` argument."""
        for x in self.taken:
            if x.name == expr:
                return x.borrow
        return f"&{expr}"

    def local(self, base: str) -> str:
        self.n += 1
        return local_name(f"{base}{self.n}", *self.taken)

    def note_sizes(self, x: T, labels: list[str]) -> None:
        for d, c in enumerate(labels):
            sizes = tuple(s[d] for s in x.meta.shapes)
            if c in self.shapes and self.shapes[c] != sizes:
                what = f"index '{c}'" if c in _LETTERS else "a dimension under '...'"
                raise Unsupported(f"einsum '{self.eq}': {what} has different sizes in "
                                  "the operands (broadcasting a size-1 index)")
            self.shapes.setdefault(c, sizes)
            self.size.setdefault(c, x.dim(d))

    def sum_out(self, name: str, labels: list[str], keep: set[str]) -> tuple[str, list[str]]:
        gone = [d for d, c in enumerate(labels) if c not in keep]
        if not gone:
            return name, labels
        new = self.local("s")
        dims = str(gone[0]) if len(gone) == 1 else shape_tuple([str(d) for d in gone])
        self.lines.append(f"let {new} = {name}.sum({dims})?;")
        return new, [c for c in labels if c in keep]

    def permute(self, name: str, labels: list[str], order: list[str]) -> str:
        if labels == order:
            return name
        perm = [labels.index(c) for c in order]
        return f"{name}.permute({shape_tuple([str(p) for p in perm])})?"

    def product(self, group: list[str]) -> str:
        if not group:
            return "1"
        return " * ".join(self.size[c] for c in group)

    def pair(self, a: str, la: list[str], b: str, lb: list[str],
             keep: set[str]) -> tuple[str, list[str]]:
        """Contract two operands, keeping the labels in `keep`."""
        a, la = self.sum_out(a, la, keep | set(lb))
        b, lb = self.sum_out(b, lb, keep | set(la))
        batch = [c for c in la if c in lb and c in keep]
        contract = [c for c in la if c in lb and c not in keep]
        m = [c for c in la if c not in lb]
        n = [c for c in lb if c not in la]
        if not contract:  # an outer or elementwise product: broadcasting multiply
            order = batch + m + n
            xa = self.aligned(a, la, order)
            xb = self.aligned(b, lb, order)
            new = self.local("p")
            self.lines.append(f"let {new} = {xa}.broadcast_mul({self.borrow(xb)})?;")
            return new, order
        if not m and not n:  # dot products: multiply, then sum the contracted labels
            order = batch + contract
            xa = self.aligned(a, la, order)
            xb = self.aligned(b, lb, order)
            new = self.local("p")
            dims = [str(order.index(c)) for c in contract]
            dims_s = dims[0] if len(dims) == 1 else shape_tuple(dims)
            self.lines.append(f"let {new} = {xa}.broadcast_mul({self.borrow(xb)})?"
                              f".sum({dims_s})?;")
            return new, batch
        xa = self.permute(a, la, batch + m + contract)
        xb = self.permute(b, lb, batch + contract + n)
        bsizes = [self.size[c] for c in batch]
        # Candle's batched matmul wants contiguous operands: reshape makes them so, and
        # `contiguous` costs nothing when a tensor already is
        if len(m) != 1 or len(contract) != 1:
            xa = f"{xa}.reshape({shape_tuple(bsizes + [self.product(m), self.product(contract)])})?"
        else:
            xa = f"{xa}.contiguous()?"
        if len(n) != 1 or len(contract) != 1:
            xb = f"{xb}.reshape({shape_tuple(bsizes + [self.product(contract), self.product(n)])})?"
        else:
            xb = f"{xb}.contiguous()?"
        new = self.local("mm")
        mm = f"{xa}.matmul({self.borrow(xb)})?"
        out = batch + m + n
        if len(m) != 1 or len(n) != 1:
            mm += f".reshape({shape_tuple([self.size[c] for c in out])})?"
        self.lines.append(f"let {new} = {mm};")
        return new, out

    def aligned(self, name: str, labels: list[str], order: list[str]) -> str:
        """`name` permuted to the order of its labels in `order`, with size-1 dimensions
        where it lacks one, so that it broadcasts against the others."""
        mine = [c for c in order if c in labels]
        expr = self.permute(name, labels, mine)
        for d, c in enumerate(order):
            if c not in labels:
                expr = f"{expr}.unsqueeze({d})?"
        return expr


def _einsum(spelling: str, a: dict[str, Any], out: Any) -> Any:
    eq, operands = a["equation"], a["operands"]
    if not isinstance(eq, str):
        raise Unsupported(f"einsum with equation {eq!r} (expected a string)")
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    ops = [tensor(o, "operands") for o in operands]
    if not ops:
        raise Unsupported(f"einsum '{eq}' with no operands")
    labels, out_labels = _parse_einsum(eq, ops)
    e = _Einsum(eq, ops)
    for x, lab in zip(ops, labels):
        e.note_sizes(x, lab)
    name, lab = ops[0].name, labels[0]
    for k in range(1, len(ops)):
        later = {c for rest in labels[k + 1:] for c in rest}
        name, lab = e.pair(name, lab, ops[k].name, labels[k], set(out_labels) | later)
    name, lab = e.sum_out(name, lab, set(out_labels))
    if not e.lines and lab == out_labels:
        return alias(ops[0])
    result = e.permute(name, lab, out_labels)
    if not e.lines:
        return result
    last = e.lines.pop()  # `let {name} = expr;`: the block's value, with the final permute
    result = last[len(f"let {name} = "):-1] + result[len(name):]
    if not e.lines:
        return result
    return "{\n" + "\n".join(e.lines) + f"\n{result}\n}}"


register_op(Op("einsum", {"torch.einsum": "equation, *operands"}, _einsum,
               doc="operands as arguments or one list; `...`; implicit output; sums, "
                   "transposes and products (no repeated index within one operand)"))

# --- scaled_dot_product_attention -----------------------------------------------------------------


def _const(x: T, d: int) -> int | None:
    sizes = {s[d] for s in x.meta.shapes}
    return sizes.pop() if len(sizes) == 1 else None


def _sdpa(spelling: str, a: dict[str, Any], out: Any) -> str:
    q, k, v = tensor(a["query"], "query"), tensor(a["key"], "key"), tensor(a["value"], "value")
    mask, causal, scale = a["attn_mask"], a["is_causal"], a["scale"]
    if a["dropout_p"] != 0:
        raise Unsupported(f"scaled_dot_product_attention with dropout_p={a['dropout_p']!r} "
                          "(it drops out even in eval)", hint="pass dropout_p=0.0 in eval")
    if q.rank < 2 or k.rank != q.rank or v.rank != q.rank:
        raise Unsupported(f"scaled_dot_product_attention with ranks {q.rank}, {k.rank}, "
                          f"{v.rank} (2 or more, all equal)")
    lines: list[str] = []
    if a["enable_gqa"] and q.rank not in (2, 4) and any(
            not sq[-3] == sk[-3] == sv[-3]
            for sq, sk, sv in zip(q.meta.shapes, k.meta.shapes, v.meta.shapes)):
        raise Unsupported(f"scaled_dot_product_attention with enable_gqa on rank-{q.rank} "
                          "tensors with different head counts (rank 4 is supported)")
    if a["enable_gqa"] and q.rank == 4:
        # each key/value head serves a group of query heads (repeat_interleave over heads)
        heads = {(sq[1], sk[1], sv[1]) for sq, sk, sv in zip(q.meta.shapes, k.meta.shapes,
                                                              v.meta.shapes)}
        if len(heads) != 1:
            raise Unsupported("scaled_dot_product_attention with enable_gqa and head counts "
                              "that change between trace cases")
        hq, hk, hv = heads.pop()
        if hk != hv or hq % hk:
            raise Unsupported(f"scaled_dot_product_attention with enable_gqa and {hq} query, "
                              f"{hk} key and {hv} value heads")
        if hq != hk:
            k2, v2 = local_name("key", q, k, v), local_name("value", q, k, v)
            for new, t in ((k2, k), (v2, v)):
                lines.append(f"let {new} = {t.name}.unsqueeze(2)?.expand(({t.dim(0)}, {hk}, "
                             f"{hq // hk}, {t.dim(2)}, {t.dim(3)}))?.reshape(({t.dim(0)}, {hq}, "
                             f"{t.dim(2)}, {t.dim(3)}))?;")
            k, v = (T(n, TensorMeta(t.meta.dtype, tuple((sh[0], hq, *sh[2:])
                                                        for sh in t.meta.shapes)))
                    for n, t in ((k2, k), (v2, v)))
    if mask is not None and causal:
        raise Unsupported("scaled_dot_product_attention with both attn_mask and is_causal")
    if not q.meta.dtype.startswith("float"):
        raise Unsupported(f"scaled_dot_product_attention on {q.meta.dtype} tensors")
    if scale is None:
        e = _const(q, -1)
        scale_expr = rust_float(1.0 / math.sqrt(e)) if e is not None else \
            f"1.0 / ({q.dim(-1)} as f64).sqrt()"
    elif isinstance(scale, (int, float)) and not isinstance(scale, bool):
        scale_expr = rust_float(float(scale))
    else:
        raise Unsupported(f"scaled_dot_product_attention with scale={scale!r}")
    scores = local_name("scores", q, k, v)
    same = all(sq[:-2] == sk[:-2] for sq, sk in zip(q.meta.shapes, k.meta.shapes))
    mm = "matmul" if same else "broadcast_matmul"
    same_v = all(sw[:-2] == sv[:-2] for sw, sv in zip(q.meta.shapes, v.meta.shapes))
    # Candle's matrix products take at most two batch dimensions: past rank 4 the leading
    # dimensions are one batch for the products, the scores and the result at full rank
    flat = q.rank > 4
    if flat and not (same and same_v):
        raise Unsupported(f"scaled_dot_product_attention of rank-{q.rank} tensors whose "
                          "leading dimensions differ (broadcast)")
    lead = [q.dim(d) for d in range(q.rank - 2)]

    def batched(t: T) -> str:
        return f"{t.name}.flatten_to({t.rank - 3})?" if flat else t.name

    def operand(t: T) -> str:
        return batched(t) if flat else f"{t.name}.contiguous()?"

    product = f"({operand(q)}.{mm}(&{batched(k)}.t()?.contiguous()?)? * {scale_expr})?"
    if flat:
        product += f".reshape({shape_tuple(lead + [q.dim(q.rank - 2), k.dim(k.rank - 2)])})?"
    lines.append(f"let {scores} = {product};")
    neg_inf = rust_scalar(float("-inf"), q.meta.dtype)
    if causal:
        i, j = local_name("i", q, k, v), local_name("j", q, k, v)
        lines += [f"let {i} = Tensor::arange(0u32, {scores}.dim({q.rank - 2})? as u32, "
                  f"{scores}.device())?.unsqueeze(1)?;",
                  f"let {j} = Tensor::arange(0u32, {scores}.dim({q.rank - 1})? as u32, "
                  f"{scores}.device())?.unsqueeze(0)?;",
                  f"let {scores} = {j}.broadcast_le(&{i})?.broadcast_as({scores}.shape())?"
                  f".where_cond(&{scores}, &Tensor::full({neg_inf}, {scores}.shape(), "
                  f"{scores}.device())?)?;"]
    elif isinstance(mask, T):
        if mask.meta.dtype == "bool":
            lines.append(f"let {scores} = {mask.name}.broadcast_as({scores}.shape())?"
                         f".where_cond(&{scores}, &Tensor::full({neg_inf}, {scores}.shape(), "
                         f"{scores}.device())?)?;")
        elif mask.meta.dtype == q.meta.dtype:
            lines.append(f"let {scores} = {scores}.broadcast_add({mask.borrow})?;")
        else:
            raise Unsupported(f"scaled_dot_product_attention with a {mask.meta.dtype} attn_mask")
    elif mask is not None:
        raise Unsupported(f"scaled_dot_product_attention with attn_mask={mask!r}")
    mm_v = "matmul" if same_v and same else "broadcast_matmul"
    weights = f"candle_nn::ops::softmax_last_dim(&{scores})?"
    if flat:
        lines.append(f"{weights}.flatten_to({q.rank - 3})?.matmul(&{operand(v)})?"
                     f".reshape({shape_tuple(lead + [q.dim(q.rank - 2), v.dim(v.rank - 1)])})?")
    else:
        lines.append(f"{weights}.{mm_v}(&{operand(v)})?")
    return "{\n" + "\n".join(lines) + "\n}"


register_op(Op("scaled_dot_product_attention", {
    "torch.nn.functional.scaled_dot_product_attention":
        "query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, "
        "enable_gqa=False"},
    _sdpa, doc="any rank from 2 (one batch of heads per leading index); boolean (True attends) or float attn_mask; is_causal; scale; "
               "dropout_p=0; enable_gqa"))

# --- nn.MultiheadAttention ------------------------------------------------------------------------


def _mha_field(cfg: dict[str, Any]) -> Field:
    e = cfg["embed_dim"]
    body = (f"embed_dim: {e},\nnum_heads: {cfg['num_heads']},\nkdim: {cfg['kdim']},\n"
            f"vdim: {cfg['vdim']},\nbias: {'true' if cfg['in_proj_bias'] else 'false'},\n"
            f"batch_first: {'true' if cfg['batch_first'] else 'false'},\n")
    config = runtime("MultiheadAttentionConfig")
    return Field(runtime("MultiheadAttention"),
                 lambda vb: f"MultiheadAttention::load(\n{config} {{\n{body}}},\n{vb},\n)?")


def _mha_mask(v: Any, what: str, ranks: tuple[int, ...]) -> str:
    if v is None:
        return "None"
    m = tensor(v, what)
    if m.rank not in ranks:
        raise Unsupported(f"MultiheadAttention {what} of rank {m.rank}")
    if m.meta.dtype != "bool" and not m.meta.dtype.startswith("float"):
        raise Unsupported(f"MultiheadAttention {what} of dtype {m.meta.dtype} (bool or float)")
    return f"Some({m.borrow})"


def _mha_call(cfg: dict[str, Any], this: str, args: tuple, kwargs: dict[str, Any]) -> str:
    a = bind("query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None, "
             "average_attn_weights=True, is_causal=False", args, kwargs)
    q, k, v = tensor(a["query"], "query"), tensor(a["key"], "key"), tensor(a["value"], "value")
    if not 2 <= q.rank <= 3:
        raise Unsupported(f"MultiheadAttention on a rank-{q.rank} query (2 or 3)")
    kpm = _mha_mask(a["key_padding_mask"], "key_padding_mask", (q.rank - 1,))
    mask = _mha_mask(a["attn_mask"], "attn_mask", (2, 3))
    causal = a["is_causal"]
    if not isinstance(causal, bool):
        raise Unsupported(f"MultiheadAttention with is_causal={causal!r}")
    if causal and mask == "None":
        raise Unsupported("MultiheadAttention with is_causal and no attn_mask (PyTorch needs "
                          "the mask as well)")
    if kpm == mask == "None" and not causal:
        masks = f"{runtime('AttentionMasks')}::default()"
    else:
        masks = (f"{runtime('AttentionMasks')} {{\nkey_padding_mask: {kpm},\n"
                 f"attn_mask: {mask},\nis_causal: {'true' if causal else 'false'},\n}}")
    operands = f"{q.borrow}, {k.borrow}, {v.borrow}, {masks}"
    if a["need_weights"]:
        average = "true" if a["average_attn_weights"] else "false"
        return f"{this}.forward_with_weights({operands}, {average})?"
    return f"({this}.forward({operands})?, ())"  # attn_weights is None


def _mha_check(cfg: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    require(cfg.get("bias_k") is None and cfg.get("bias_v") is None, problems,
            "add_bias_kv=True")
    require(not cfg.get("add_zero_attn"), problems, "add_zero_attn=True")
    return problems


register_layer(Layer(
    "torch.nn.MultiheadAttention",
    ("embed_dim", "num_heads", "kdim", "vdim", "batch_first", "in_proj_bias", "bias_k",
     "bias_v", "add_zero_attn"),
    outputs=("output", "weights"), field=_mha_field, call=_mha_call, check=_mha_check,
    doc="bias, kdim/vdim, batch_first, need_weights (averaged or per head), key_padding_mask, "
        "attn_mask (bool or float, 2-D or 3-D), is_causal; eval (no dropout)",
))
