"""Construction-only factories for zoo models whose constructor takes an object YAML can't
express (a filterbank, a dataclass, an attention-layers module). Each builds the package's own
class with the package's own code: nothing is edited, wrapped or patched."""

from __future__ import annotations

from typing import Callable


def builds(package: str) -> Callable[[Callable], Callable]:
    """Names the package whose classes a factory builds: tests/test_zoo.py counts the model
    under that package's distribution (pinned in zoo/requirements.lock)."""
    def mark(factory: Callable) -> Callable:
        factory.package = package
        return factory

    return mark


@builds("asteroid_filterbanks")
def asteroid_free_encoder(n_filters: int, kernel_size: int, stride: int):
    """asteroid_filterbanks.Encoder over a learnable FreeFB (the front end of ConvTasNet)."""
    from asteroid_filterbanks import Encoder, FreeFB
    return Encoder(FreeFB(n_filters, kernel_size, stride=stride))


@builds("asteroid_filterbanks")
def asteroid_stft_encoder(n_filters: int, kernel_size: int, stride: int):
    """asteroid_filterbanks.Encoder over the fixed STFTFB (windowed Fourier basis)."""
    from asteroid_filterbanks import Encoder, STFTFB
    return Encoder(STFTFB(n_filters, kernel_size, stride=stride))


@builds("whisper")
def whisper_model(**dims):
    """whisper.model.Whisper from its ModelDimensions dataclass."""
    from whisper.model import ModelDimensions, Whisper
    return Whisper(ModelDimensions(**dims))


@builds("x_transformers")
def x_transformers_encoder_lm(num_tokens: int, max_seq_len: int, dim: int, depth: int,
                              heads: int):
    """x_transformers.TransformerWrapper around an Encoder stack (a small BERT-like model)."""
    from x_transformers import Encoder, TransformerWrapper
    return TransformerWrapper(num_tokens=num_tokens, max_seq_len=max_seq_len,
                              attn_layers=Encoder(dim=dim, depth=depth, heads=heads))
