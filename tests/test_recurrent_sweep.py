"""Randomised recurrent configurations through the real pipeline.

Hypothesis draws a batch of configurations (layers, directions, projection, bias, layout,
initial state, unbatched input, batch and sequence sizes); they are generated into one crate,
so the whole batch costs one cargo build. CI runs a bounded, derandomised sample; `nox -s fuzz
-- --count N` runs as many as asked. Configurations that ever failed are kept below as fixed
regression cases.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

from pycandle.cli import main  # noqa: E402
from recurrent_sweep import RecurrentCase, recurrent_cases, write_sweep  # noqa: E402

pytestmark = pytest.mark.cargo

BATCH = int(os.environ.get("PYCANDLE_FUZZ_BATCH", "10"))  # configurations per crate
COUNT = int(os.environ.get("PYCANDLE_FUZZ_COUNT", str(BATCH)))  # configurations in all
FUZZING = "PYCANDLE_FUZZ_COUNT" in os.environ

# Fixed cases in every sweep: hand-picked edge cases, and every configuration that ever
# failed (add it here with a note when a sweep finds one).
FIXED: list[RecurrentCase] = [
    # length-1 sequence, projection, bidirectional, unbatched, with an initial state
    RecurrentCase("LSTM", 3, 4, 2, True, 2, True, False, True, True, (1, 1), (1, 2)),
    # hidden size 1, no bias, batch-first, streaming (no state) at batch 1
    RecurrentCase("LSTM", 1, 1, 3, False, 0, False, True, False, False, (1, 4), (9, 2)),
    RecurrentCase("GRU", 2, 3, 2, True, 0, True, True, True, False, (3, 1), (4, 1)),
    RecurrentCase("RNN", 2, 3, 2, False, 0, False, False, False, False, (2, 1), (5, 3), relu=True),
    RecurrentCase("LSTMCell", 3, 2, 1, False, 0, True, False, True, True, (1, 1), (1, 1)),
    RecurrentCase("GRUCell", 3, 2, 1, False, 0, False, False, True, False, (2, 3), (1, 1)),
    RecurrentCase("RNNCell", 3, 2, 1, False, 0, True, False, False, False, (2, 3), (1, 1),
                  relu=True),
    # token ids through an embedding folded into the layer: bidirectional, projection,
    # batch-first, initial state; unbatched and streaming, more units than one block, one
    # token in the vocabulary, a single step (no folding then); an RNN (never folded)
    RecurrentCase("LSTM", 4, 5, 2, True, 3, True, True, True, False, (3, 1), (6, 2), vocab=9),
    RecurrentCase("GRU", 3, 17, 1, False, 0, False, False, False, True, (1, 1), (7, 1), vocab=1),
    RecurrentCase("RNN", 2, 3, 1, False, 0, True, True, False, False, (2, 2), (4, 3), vocab=5),
]


def run_sweep(tmp_path, cases: list[RecurrentCase]) -> None:
    config = write_sweep(tmp_path, cases)
    code = main(["all", "--config", str(config)])
    assert code == 0, "sweep failed; configurations:\n" + "\n".join(map(repr, cases))


@settings(max_examples=max(1, COUNT // BATCH), derandomize=not FUZZING, deadline=None,
          database=None, suppress_health_check=list(HealthCheck))
@given(cases=st.lists(recurrent_cases(), min_size=BATCH, max_size=BATCH))
def test_random_recurrent_configurations(tmp_path_factory, cargo_env, cases):
    run_sweep(tmp_path_factory.mktemp("sweep"), FIXED + cases)
