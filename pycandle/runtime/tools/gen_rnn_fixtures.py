#!/usr/bin/env python3
"""Generate the PyTorch reference fixtures for the GRU, RNN, cell and
padded-batch tests of pycandle-runtime (tests/recurrent/).

Small ``torch.nn`` recurrent modules with fixed seeds, each run on a few
inputs in float32; one JSON file per family under ``tests/fixtures/`` holds
the parameters, inputs, initial states and expected results:

* ``gru.json``    ``nn.GRU``
* ``rnn.json``    ``nn.RNN`` (tanh and relu)
* ``cells.json``  ``nn.LSTMCell``, ``nn.GRUCell``, ``nn.RNNCell``
* ``padded.json`` ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` on padded batches, computed
  as ``pad_packed_sequence(module(pack_padded_sequence(x, lengths,
  enforce_sorted=False)))``

Building, running and writing are shared with ``gen_lstm_fixtures.py`` in
``recurrent_fixtures.py``.

Usage (from anywhere, with a Python that has torch):

    python pycandle/runtime/tools/gen_rnn_fixtures.py

Pass another directory as the single argument to write elsewhere.
"""

from torch import nn

from recurrent_fixtures import main, run

# Batched and unbatched, with and without an initial state.
CELL_RUNS = [run((3,)), run((3,), True), run(()), run((), True)]
# Padded batches (T=5, B=3) with the longest sequence first, in the middle or
# last, with and without an initial state.
PADDED_RUNS = [
    run((5, 3), lengths=[2, 5, 3]),
    run((5, 3), True, [2, 5, 3]),
    run((5, 3), True, [4, 2, 3]),
]

# family file -> [(name, seed, module class, kwargs, runs)]
FAMILIES = {
    "gru": [
        ("one_layer", 101, nn.GRU, dict(),
         [run((5, 2)), run((5, 2), True), run((5,)), run((4,), True)]),
        ("bidirectional_2l", 102, nn.GRU, dict(num_layers=2, bidirectional=True),
         [run((4, 3)), run((4, 3), True)]),
        ("batch_first_state", 103, nn.GRU, dict(num_layers=2, batch_first=True),
         [run((5, 2), True), run((3, 3))]),
        ("no_bias", 104, nn.GRU, dict(num_layers=2, bias=False),
         [run((5, 2)), run((4, 2), True)]),
        ("unbatched_bidirectional", 105, nn.GRU,
         dict(num_layers=2, bidirectional=True, batch_first=True), [run((5,), True), run((3,))]),
    ],
    "rnn": [
        ("tanh_2l", 201, nn.RNN, dict(num_layers=2),
         [run((5, 2)), run((5, 2), True), run((4,), True)]),
        ("relu_bidirectional_2l", 202, nn.RNN,
         dict(num_layers=2, nonlinearity="relu", bidirectional=True),
         [run((4, 3)), run((4, 3), True)]),
        ("relu_batch_first", 203, nn.RNN, dict(nonlinearity="relu", batch_first=True),
         [run((5, 2), True), run((5,))]),
        ("no_bias_bidirectional_2l", 204, nn.RNN,
         dict(num_layers=2, bias=False, bidirectional=True), [run((5, 2)), run((3,), True)]),
    ],
    "cells": [
        ("lstm_cell", 301, nn.LSTMCell, dict(), CELL_RUNS),
        ("lstm_cell_no_bias", 302, nn.LSTMCell, dict(bias=False), [run((2,), True)]),
        ("gru_cell", 303, nn.GRUCell, dict(), CELL_RUNS),
        ("gru_cell_no_bias", 304, nn.GRUCell, dict(bias=False), [run((2,), True)]),
        ("rnn_cell_tanh", 305, nn.RNNCell, dict(), CELL_RUNS),
        ("rnn_cell_relu_no_bias", 306, nn.RNNCell, dict(nonlinearity="relu", bias=False),
         [run((3,), True), run(())]),
    ],
    "padded": [
        ("lstm_bidirectional_2l", 401, nn.LSTM, dict(num_layers=2, bidirectional=True),
         PADDED_RUNS),
        ("lstm_bidirectional_2l_batch_first_proj", 402, nn.LSTM,
         dict(num_layers=2, bidirectional=True, batch_first=True, proj_size=2),
         [run((5, 3), True, [2, 5, 3]), run((5, 3), lengths=[3, 1, 4])]),
        ("gru_bidirectional_2l", 403, nn.GRU, dict(num_layers=2, bidirectional=True),
         PADDED_RUNS),
        ("gru_bidirectional_2l_batch_first", 404, nn.GRU,
         dict(num_layers=2, bidirectional=True, batch_first=True),
         [run((5, 3), lengths=[2, 5, 3]), run((5, 3), True, [2, 5, 3]),
          run((4, 3), True, [1, 3, 2])]),
        ("rnn_tanh_bidirectional_2l", 405, nn.RNN, dict(num_layers=2, bidirectional=True),
         PADDED_RUNS),
        ("rnn_relu_2l_batch_first", 406, nn.RNN,
         dict(num_layers=2, nonlinearity="relu", batch_first=True),
         [run((5, 3), True, [2, 5, 3]), run((5, 3), lengths=[3, 1, 4])]),
    ],
}

if __name__ == "__main__":
    main("gen_rnn_fixtures.py", FAMILIES)
