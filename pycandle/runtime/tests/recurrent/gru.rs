//! `Gru` against `torch.nn.GRU`.

use candle_core::{DType, Device, Result, Tensor};
use pycandle_runtime::{Gru, GruConfig};

use crate::fixtures::gru;
use crate::support::{gru_config, max_abs_diff, tensor, var_builder};

torch_cases! {
    one_layer => gru::ONE_LAYER,
    bidirectional_two_layers => gru::BIDIRECTIONAL_2L,
    batch_first_two_layers => gru::BATCH_FIRST_STATE,
    no_bias => gru::NO_BIAS,
    unbatched_bidirectional => gru::UNBATCHED_BIDIRECTIONAL,
}

#[test]
fn every_module_is_tested() {
    assert_eq!(gru::ALL.len(), 5);
}

#[test]
fn batch_first_matches_time_major() -> Result<()> {
    let m = &gru::BIDIRECTIONAL_2L;
    let time_major = Gru::load(gru_config(m), var_builder(m, DType::F32)?)?;
    let batch_first = Gru::load(
        GruConfig {
            batch_first: true,
            ..gru_config(m)
        },
        var_builder(m, DType::F32)?,
    )?;
    let xs = tensor(&m.runs[0].input, DType::F32)?; // (T, B, I)
    let (out_tm, h_tm) = time_major.forward(&xs, None)?;
    let (out_bf, h_bf) = batch_first.forward(&xs.transpose(0, 1)?, None)?;
    assert_eq!(out_bf.dims(), &[3, 4, 8]);
    assert!(out_bf.is_contiguous());
    assert_eq!(max_abs_diff(&out_bf.transpose(0, 1)?, &out_tm)?, 0.0);
    assert_eq!(max_abs_diff(&h_bf, &h_tm)?, 0.0);
    Ok(())
}

#[test]
fn zero_state_equals_no_state() -> Result<()> {
    let m = &gru::BIDIRECTIONAL_2L;
    let gru = Gru::load(gru_config(m), var_builder(m, DType::F32)?)?;
    let xs = tensor(&m.runs[0].input, DType::F32)?;
    let (out_none, h_none) = gru.forward(&xs, None)?;
    let h0 = Tensor::zeros((4, 3, 4), DType::F32, &Device::Cpu)?;
    let (out, h_n) = gru.forward(&xs, Some(&h0))?;
    assert_eq!(max_abs_diff(&out, &out_none)?, 0.0);
    assert_eq!(max_abs_diff(&h_n, &h_none)?, 0.0);
    Ok(())
}

#[test]
fn config_is_kept() -> Result<()> {
    let m = &gru::NO_BIAS;
    let gru = Gru::load(gru_config(m), var_builder(m, DType::F32)?)?;
    assert_eq!(gru.config(), &gru_config(m));
    assert_eq!(gru.config().num_directions(), 1);
    Ok(())
}
