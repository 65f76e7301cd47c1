"""A small multilayer perceptron built from nn.Sequential."""

from torch import nn


def make_mlp(in_features: int = 16, hidden: int = 32, out_features: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden, bias=False),
        nn.Tanh(),
        nn.Linear(hidden, out_features),
    )
