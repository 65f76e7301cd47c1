"""Elementwise activations: as layers and as functions."""

from pycandle.registry.core import (
    Layer, Op, no_field, register_layer, register_op, unary_call, unary_op,
)

register_layer(Layer("torch.nn.ReLU", ("inplace",), "out", no_field, unary_call("{x.name}.relu()?")))
register_layer(Layer("torch.nn.Tanh", (), "out", no_field, unary_call("{x.name}.tanh()?")))
register_layer(Layer("torch.nn.Sigmoid", (), "out", no_field,
                     unary_call("candle_nn::ops::sigmoid({x.borrow})?")))

register_op(Op("relu", {"torch.relu": "input", "torch.nn.functional.relu": "input, inplace=False",
                        "Tensor.relu": "input", "Tensor.relu_": "input"},
               unary_op("{x.name}.relu()?")))
register_op(Op("tanh", {"torch.tanh": "input", "torch.nn.functional.tanh": "input",
                        "Tensor.tanh": "input", "Tensor.tanh_": "input"},
               unary_op("{x.name}.tanh()?")))
register_op(Op("sigmoid", {"torch.sigmoid": "input", "torch.nn.functional.sigmoid": "input",
                           "Tensor.sigmoid": "input", "Tensor.sigmoid_": "input"},
               unary_op("candle_nn::ops::sigmoid({x.borrow})?")))
