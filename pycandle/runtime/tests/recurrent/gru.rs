//! `Gru` against `torch.nn.GRU`.

use candle_core::{DType, Result};
use pycandle_runtime::Gru;

use crate::fixtures::gru;
use crate::support::{
    assert_batch_first_matches_time_major, assert_zero_state_equals_no_state, gru_config,
    var_builder,
};

torch_cases! { gru:
    one_layer => "one_layer",
    bidirectional_two_layers => "bidirectional_2l",
    batch_first_two_layers => "batch_first_state",
    no_bias => "no_bias",
    unbatched_bidirectional => "unbatched_bidirectional",
}

#[test]
fn batch_first_matches_time_major() -> Result<()> {
    assert_batch_first_matches_time_major(gru().get("bidirectional_2l"), &[3, 4, 8])
}

#[test]
fn zero_state_equals_no_state() -> Result<()> {
    assert_zero_state_equals_no_state(gru().get("bidirectional_2l"), &[&[4, 3, 4]])
}

#[test]
fn config_is_kept() -> Result<()> {
    let m = gru().get("no_bias");
    let gru = Gru::load(gru_config(m), var_builder(m, DType::F32)?)?;
    assert_eq!(gru.config(), &gru_config(m));
    assert_eq!(gru.config().num_directions(), 1);
    Ok(())
}
