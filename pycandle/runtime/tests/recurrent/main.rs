//! `Gru`, `Rnn`, the cells and padded batches against numbers produced by
//! PyTorch, plus streaming, embeddings folded into the first layer and
//! input validation.
//!
//! The fixtures (`tests/fixtures/{gru,rnn,cells,padded}.json`) are generated
//! by `tools/gen_rnn_fixtures.py`.

#[allow(dead_code)]
#[path = "../common/fixtures.rs"]
mod fixtures;

#[allow(dead_code)]
#[macro_use]
#[path = "../common/support.rs"]
mod support;

mod cells;
mod errors;
mod gru;
mod padded;
mod rnn;
mod streaming;
mod tokens;

use candle_core::Result;

/// Every fixture also runs in half precision, with a loose tolerance.
#[test]
fn half_precision_runs() -> Result<()> {
    let families = [
        fixtures::gru(),
        fixtures::rnn(),
        fixtures::cells(),
        fixtures::padded(),
    ];
    let modules: Vec<_> = families.iter().flat_map(|f| f.iter()).collect();
    support::check_half_precision(&modules, 3e-2)
}
