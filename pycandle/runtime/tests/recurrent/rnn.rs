//! `Rnn` against `torch.nn.RNN`, tanh and relu.

use candle_core::{DType, Result};
use pycandle_runtime::{Nonlinearity, Rnn, RnnConfig};

use crate::fixtures::rnn;
use crate::support::{
    assert_batch_first_matches_time_major, assert_zero_state_equals_no_state, rnn_config, tensor,
    var_builder,
};

torch_cases! { rnn:
    tanh_two_layers => "tanh_2l",
    relu_bidirectional_two_layers => "relu_bidirectional_2l",
    relu_batch_first => "relu_batch_first",
    no_bias_bidirectional_two_layers => "no_bias_bidirectional_2l",
}

#[test]
fn batch_first_matches_time_major() -> Result<()> {
    assert_batch_first_matches_time_major(rnn().get("relu_bidirectional_2l"), &[3, 4, 8])
}

#[test]
fn zero_state_equals_no_state() -> Result<()> {
    assert_zero_state_equals_no_state(rnn().get("tanh_2l"), &[&[2, 2, 4]])
}

#[test]
fn relu_outputs_are_non_negative() -> Result<()> {
    let m = rnn().get("relu_bidirectional_2l");
    assert_eq!(rnn_config(m).nonlinearity, Nonlinearity::Relu);
    let rnn = Rnn::load(rnn_config(m), var_builder(m, DType::F32)?)?;
    let (out, _) = rnn.forward(&tensor(&m.runs[0].input, DType::F32)?, None)?;
    let min = out.flatten_all()?.min(0)?.to_scalar::<f32>()?;
    assert!(min >= 0.0, "{min}");
    Ok(())
}

#[test]
fn default_nonlinearity_is_tanh() {
    assert_eq!(Nonlinearity::default(), Nonlinearity::Tanh);
    assert_eq!(RnnConfig::new(3, 4).nonlinearity, Nonlinearity::Tanh);
}
