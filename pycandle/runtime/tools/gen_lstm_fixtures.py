#!/usr/bin/env python3
"""Generate the PyTorch reference fixtures for the pycandle-runtime LSTM tests
(tests/lstm_torch.rs): ``tests/fixtures/lstm.json``.

Small ``torch.nn.LSTM`` configurations with fixed seeds, each run once in
float32; the file holds the parameters, the input, the initial state (when the
case passes one) and the expected ``[output, h_n, c_n]``. Building, running
and writing are shared with ``gen_rnn_fixtures.py`` in ``recurrent_fixtures.py``.

Usage (from anywhere, with a Python that has torch):

    python pycandle/runtime/tools/gen_lstm_fixtures.py

Pass another directory as the single argument to write elsewhere.
"""

from torch import nn

from recurrent_fixtures import main, run

# family file -> [(name, seed, module class, kwargs, runs)]; one run each
FAMILIES = {
    "lstm": [
        ("one_layer", 1, nn.LSTM, dict(), [run((5, 2))]),
        ("three_layers", 2, nn.LSTM, dict(num_layers=3), [run((3, 2))]),
        ("batch_first_state", 4, nn.LSTM, dict(num_layers=2, batch_first=True),
         [run((4, 2), True)]),
        ("explicit_state", 5, nn.LSTM, dict(num_layers=2), [run((5, 2), True)]),
        ("bidirectional_2l", 6, nn.LSTM, dict(num_layers=2, bidirectional=True), [run((4, 2))]),
        ("bidirectional_2l_state_bf", 7, nn.LSTM,
         dict(num_layers=2, bidirectional=True, batch_first=True), [run((3, 2), True)]),
        ("proj", 8, nn.LSTM, dict(num_layers=2, proj_size=2), [run((5, 2), True)]),
        ("proj_bidirectional", 9, nn.LSTM,
         dict(num_layers=2, proj_size=3, bidirectional=True), [run((3, 2))]),
        ("no_bias", 10, nn.LSTM, dict(num_layers=2, bias=False), [run((5, 2))]),
        ("unbatched", 11, nn.LSTM, dict(), [run((5,))]),
        ("unbatched_bidir_state", 12, nn.LSTM, dict(num_layers=2, bidirectional=True),
         [run((3,), True)]),
    ],
}

if __name__ == "__main__":
    main("gen_lstm_fixtures.py", FAMILIES)
