//! `Rnn` against `torch.nn.RNN`, tanh and relu.

use candle_core::{DType, Device, Result, Tensor};
use pycandle_runtime::{Nonlinearity, Rnn, RnnConfig};

use crate::fixtures::rnn;
use crate::support::{max_abs_diff, rnn_config, tensor, var_builder};

torch_cases! {
    tanh_two_layers => rnn::TANH_2L,
    relu_bidirectional_two_layers => rnn::RELU_BIDIRECTIONAL_2L,
    relu_batch_first => rnn::RELU_BATCH_FIRST,
    no_bias_bidirectional_two_layers => rnn::NO_BIAS_BIDIRECTIONAL_2L,
}

#[test]
fn every_module_is_tested() {
    assert_eq!(rnn::ALL.len(), 4);
}

#[test]
fn batch_first_matches_time_major() -> Result<()> {
    let m = &rnn::RELU_BIDIRECTIONAL_2L;
    let time_major = Rnn::load(rnn_config(m), var_builder(m, DType::F32)?)?;
    let batch_first = Rnn::load(
        RnnConfig {
            batch_first: true,
            ..rnn_config(m)
        },
        var_builder(m, DType::F32)?,
    )?;
    let xs = tensor(&m.runs[0].input, DType::F32)?; // (T, B, I)
    let (out_tm, h_tm) = time_major.forward(&xs, None)?;
    let (out_bf, h_bf) = batch_first.forward(&xs.transpose(0, 1)?, None)?;
    assert_eq!(out_bf.dims(), &[3, 4, 8]);
    assert_eq!(max_abs_diff(&out_bf.transpose(0, 1)?, &out_tm)?, 0.0);
    assert_eq!(max_abs_diff(&h_bf, &h_tm)?, 0.0);
    Ok(())
}

#[test]
fn zero_state_equals_no_state() -> Result<()> {
    let m = &rnn::TANH_2L;
    let rnn = Rnn::load(rnn_config(m), var_builder(m, DType::F32)?)?;
    let xs = tensor(&m.runs[0].input, DType::F32)?;
    let (out_none, h_none) = rnn.forward(&xs, None)?;
    let h0 = Tensor::zeros((2, 2, 4), DType::F32, &Device::Cpu)?;
    let (out, h_n) = rnn.forward(&xs, Some(&h0))?;
    assert_eq!(max_abs_diff(&out, &out_none)?, 0.0);
    assert_eq!(max_abs_diff(&h_n, &h_none)?, 0.0);
    Ok(())
}

#[test]
fn relu_outputs_are_non_negative() -> Result<()> {
    let m = &rnn::RELU_BIDIRECTIONAL_2L;
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
