"""Small hand-written manifests: codegen is tested on them without torch."""

from __future__ import annotations

from pycandle.manifest import Manifest, ModuleInfo, Node, Ref, TensorMeta


def meta(*shapes: tuple[int, ...], dtype: str = "float32") -> TensorMeta:
    return TensorMeta(dtype, tuple(shapes))


def lstm_info(input_size: int, hidden: int, layers: int, batch_first: bool) -> ModuleInfo:
    params = {}
    for k in range(layers):
        isz = input_size if k == 0 else hidden
        params[f"weight_ih_l{k}"] = {"shape": [4 * hidden, isz], "dtype": "float32"}
        params[f"weight_hh_l{k}"] = {"shape": [4 * hidden, hidden], "dtype": "float32"}
        params[f"bias_ih_l{k}"] = {"shape": [4 * hidden], "dtype": "float32"}
        params[f"bias_hh_l{k}"] = {"shape": [4 * hidden], "dtype": "float32"}
    return ModuleInfo(
        "torch.nn.LSTM",
        {"input_size": input_size, "hidden_size": hidden, "num_layers": layers, "bias": True,
         "batch_first": batch_first, "dropout": 0.0, "bidirectional": False, "proj_size": 0,
         "mode": "LSTM"},
        params, {})


def speaker_encoder(name: str = "speaker") -> Manifest:
    """mels -> LSTM(8->16, 2 layers) -> h_n[-1] -> Linear -> relu -> x / ||x||."""
    b = [(2, 10, 8), (1, 7, 8)]
    return Manifest(
        name=name, factory="model:Speaker", seed=0, atol=1e-5, rtol=1e-4,
        versions={"pycandle": "0.1.0", "torch": "2.15.0"}, content_hash="0" * 64,
        inputs=("mels",),
        cases=({"inputs": {"mels": {"shape": list(b[0]), "dtype": "float32"}}},
               {"inputs": {"mels": {"shape": list(b[1]), "dtype": "float32"}}}),
        modules={
            "": ModuleInfo("model.Speaker", {}, {}, {}),
            "lstm": lstm_info(8, 16, 2, True),
            "proj": ModuleInfo("torch.nn.Linear",
                               {"in_features": 16, "out_features": 4, "bias": True},
                               {"weight": {"shape": [4, 16], "dtype": "float32"},
                                "bias": {"shape": [4], "dtype": "float32"}}, {}),
        },
        nodes=(
            Node("mels", "input", "mels", out=meta(*b)),
            Node("lstm", "call_module", "lstm", (Ref("mels"),),
                 out=(meta((2, 10, 16), (1, 7, 16)), (meta((2, 2, 16), (2, 1, 16)),
                                                      meta((2, 2, 16), (2, 1, 16)))),
                 source="model.py:10"),
            Node("getitem", "call_function", "Tensor.__getitem__", (Ref("lstm", (1, 0)), -1),
                 out=meta((2, 16), (1, 16)), source="model.py:11"),
            Node("proj", "call_module", "proj", (Ref("getitem"),),
                 out=meta((2, 4), (1, 4)), source="model.py:12"),
            Node("relu", "call_function", "torch.relu", (Ref("proj"),),
                 out=meta((2, 4), (1, 4)), source="model.py:12"),
            Node("norm", "call_function", "torch.linalg.norm", (Ref("relu"),),
                 {"dim": 1, "keepdim": True}, out=meta((2, 1), (1, 1)), source="model.py:13"),
            Node("div", "call_function", "Tensor.div", (Ref("relu"), Ref("norm")),
                 out=meta((2, 4), (1, 4)), source="model.py:13"),
        ),
        output=Ref("div"),
    )


def with_node(manifest: Manifest, node: Node, output: Ref) -> Manifest:
    return Manifest(**{**manifest.__dict__, "nodes": manifest.nodes + (node,), "output": output})


def tagger(token_dtype: str = "int64", embedded_out: bool = False,
           dropout: bool = False) -> Manifest:
    """tokens -> Embedding(20 -> 8) [-> Dropout] -> LSTM(8 -> 16, batch first) -> output; with
    `embedded_out`, the embedded tokens are returned too."""
    b = [(2, 10), (1, 7)]
    embedded = meta(*(s + (8,) for s in b))
    drop = (Node("drop", "call_module", "drop", (Ref("embed"),), out=embedded,
                 source="model.py:9"),) if dropout else ()
    nodes = (
        Node("tokens", "input", "tokens", out=meta(*b, dtype=token_dtype)),
        Node("embed", "call_module", "embed", (Ref("tokens"),), out=embedded,
             source="model.py:9"),
        *drop,
        Node("lstm", "call_module", "lstm", (Ref("drop" if dropout else "embed"),),
             out=(meta((2, 10, 16), (1, 7, 16)), (meta((1, 2, 16), (1, 1, 16)),
                                                  meta((1, 2, 16), (1, 1, 16)))),
             source="model.py:10"),
    )
    output = (Ref("lstm", (0,)), Ref("embed")) if embedded_out else Ref("lstm", (0,))
    return Manifest(
        name="tagger", factory="model:Tagger", seed=0, atol=1e-5, rtol=1e-4,
        versions={"pycandle": "0.1.0", "torch": "2.15.0"}, content_hash="0" * 64,
        inputs=("tokens",),
        cases=tuple({"inputs": {"tokens": {"shape": list(s), "dtype": token_dtype}}} for s in b),
        modules={
            "": ModuleInfo("model.Tagger", {}, {}, {}),
            "embed": ModuleInfo(
                "torch.nn.Embedding",
                {"num_embeddings": 20, "embedding_dim": 8, "padding_idx": None,
                 "max_norm": None, "norm_type": 2.0, "scale_grad_by_freq": False,
                 "sparse": False},
                {"weight": {"shape": [20, 8], "dtype": "float32"}}, {}),
            "lstm": lstm_info(8, 16, 1, True),
            **({"drop": ModuleInfo("torch.nn.Dropout", {"p": 0.1}, {}, {})} if dropout else {}),
        },
        nodes=nodes,
        output=output,
    )
