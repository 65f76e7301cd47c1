//! Bad shapes, lengths and configurations are errors that name the offending
//! shapes, never panics.

use candle_core::{DType, Device, Result, Tensor};
use pycandle_runtime::{
    Gru, GruCell, GruCellConfig, GruConfig, Lstm, LstmCell, LstmCellConfig, LstmConfig, Rnn,
    RnnConfig,
};

use crate::fixtures::{cells, gru, padded, rnn, HIDDEN_SIZE, INPUT_SIZE};
use crate::support::{
    assert_bad_feature_size_is_an_error, assert_bad_input_rank_is_an_error,
    assert_empty_sequence_is_an_error, err_text, gru_config, rnn_config, var_builder, zeros, Cell,
    Stack,
};

#[test]
fn bad_input_rank_is_an_error() -> Result<()> {
    for m in [
        gru().get("one_layer"),
        rnn().get("tanh_2l"),
        padded().get("lstm_bidirectional_2l"),
    ] {
        assert_bad_input_rank_is_an_error(&Stack::load(m, DType::F32)?)?;
    }
    Ok(())
}

#[test]
fn bad_feature_size_is_an_error() -> Result<()> {
    for (m, kind) in [
        (gru().get("one_layer"), "GRU"),
        (rnn().get("tanh_2l"), "RNN"),
    ] {
        assert_bad_feature_size_is_an_error(&Stack::load(m, DType::F32)?, kind)?;
    }
    Ok(())
}

#[test]
fn empty_sequence_is_an_error() -> Result<()> {
    assert_empty_sequence_is_an_error(&Stack::load(gru().get("one_layer"), DType::F32)?)
}

#[test]
fn bad_h0_shapes_are_errors() -> Result<()> {
    // Two layers, bidirectional: h0 must be (4, B, 4).
    for m in [
        gru().get("bidirectional_2l"),
        rnn().get("relu_bidirectional_2l"),
    ] {
        let stack = Stack::load(m, DType::F32)?;
        let xs = zeros(&[5, 2, 3])?;
        for shape in [
            &[2, 2, 4][..], // one layer-direction per layer only
            &[4, 3, 4][..], // wrong batch
            &[4, 2, 5][..], // wrong feature size
            &[4, 4][..],    // unbatched state for batched input
        ] {
            let msg = err_text(stack.call(&xs, None, &[zeros(shape)?]));
            assert!(
                msg.contains(&format!(
                    "expected h0 [4, 2, 4] for input [5, 2, 3], got h0 {shape:?}"
                )),
                "{msg}"
            );
        }
        // Batched state for unbatched input.
        let msg = err_text(stack.call(&zeros(&[5, 3])?, None, &[zeros(&[4, 1, 4])?]));
        assert!(msg.contains("expected h0 [4, 4]"), "{msg}");
    }
    Ok(())
}

#[test]
fn h0_dtype_mismatch_is_an_error() -> Result<()> {
    let m = gru().get("one_layer");
    let gru = Gru::load(gru_config(m), var_builder(m, DType::F32)?)?;
    let h0 = Tensor::zeros((1, 2, 4), DType::F64, &Device::Cpu)?;
    let msg = err_text(gru.forward(&zeros(&[5, 2, 3])?, Some(&h0)));
    assert!(msg.contains("dtype"), "{msg}");
    Ok(())
}

#[test]
fn load_errors() -> Result<()> {
    let m = gru().get("one_layer");
    let vb = || var_builder(m, DType::F32);
    // A second layer whose weights are not there.
    let two_layers = GruConfig {
        num_layers: 2,
        ..gru_config(m)
    };
    assert!(Gru::load(two_layers, vb()?).is_err());
    // Weights of the wrong shape.
    assert!(Gru::load(GruConfig::new(INPUT_SIZE + 1, HIDDEN_SIZE), vb()?).is_err());
    assert!(Gru::load(GruConfig::new(INPUT_SIZE, HIDDEN_SIZE + 1), vb()?).is_err());
    // GRU weights are not LSTM or RNN weights.
    assert!(Lstm::load(LstmConfig::new(INPUT_SIZE, HIDDEN_SIZE), vb()?).is_err());
    assert!(Rnn::load(RnnConfig::new(INPUT_SIZE, HIDDEN_SIZE), vb()?).is_err());
    // Biases asked for but not stored.
    let m = rnn().get("no_bias_bidirectional_2l");
    let with_bias = RnnConfig {
        bias: true,
        ..rnn_config(m)
    };
    assert!(Rnn::load(with_bias, var_builder(m, DType::F32)?).is_err());
    // Invalid configurations.
    let no_layers = GruConfig {
        num_layers: 0,
        ..gru_config(gru().get("one_layer"))
    };
    let msg = err_text(Gru::load(no_layers, vb()?));
    assert!(msg.contains("num_layers"), "{msg}");
    let msg = err_text(Rnn::load(RnnConfig::new(INPUT_SIZE, 0), vb()?));
    assert!(msg.contains("hidden_size"), "{msg}");
    Ok(())
}

// ---- cells ------------------------------------------------------------------

#[test]
fn bad_cell_inputs_are_errors() -> Result<()> {
    for m in cells().iter() {
        let cell = Cell::load(m, DType::F32)?;
        let msg = err_text(cell.call(&zeros(&[1, 2, 3])?, &[]));
        assert!(msg.contains("rank") && msg.contains("[1, 2, 3]"), "{msg}");
        let msg = err_text(cell.call(&zeros(&[2, 5])?, &[]));
        assert!(
            msg.contains("[2, 5]") && msg.contains("input_size 3"),
            "{msg}"
        );
        let msg = err_text(cell.call(&zeros(&[5])?, &[]));
        assert!(msg.contains("[5]") && msg.contains("input_size 3"), "{msg}");
    }
    Ok(())
}

#[test]
fn bad_cell_states_are_errors() -> Result<()> {
    let m = cells().get("gru_cell");
    let cell = GruCell::load(
        GruCellConfig::new(INPUT_SIZE, HIDDEN_SIZE),
        var_builder(m, DType::F32)?,
    )?;
    let x = zeros(&[2, 3])?;
    for shape in [&[3, 4][..], &[2, 5][..], &[4][..], &[1, 2, 4][..]] {
        let msg = err_text(cell.forward(&x, Some(&zeros(shape)?)));
        assert!(
            msg.contains(&format!(
                "expected h0 [2, 4] for input [2, 3], got h0 {shape:?}"
            )),
            "{msg}"
        );
    }
    let msg = err_text(cell.forward(&zeros(&[3])?, Some(&zeros(&[1, 4])?)));
    assert!(msg.contains("expected h0 [4]"), "{msg}");
    let h = Tensor::zeros((2, 4), DType::F64, &Device::Cpu)?;
    assert!(err_text(cell.forward(&x, Some(&h))).contains("dtype"));

    let m = cells().get("lstm_cell");
    let cell = LstmCell::load(
        LstmCellConfig::new(INPUT_SIZE, HIDDEN_SIZE),
        var_builder(m, DType::F32)?,
    )?;
    let (h, c) = (zeros(&[2, 4])?, zeros(&[2, 3])?);
    let msg = err_text(cell.forward(&x, Some((&h, &c))));
    assert!(msg.contains("got h0 [2, 4] and c0 [2, 3]"), "{msg}");
    Ok(())
}

#[test]
fn cell_load_errors() -> Result<()> {
    let m = cells().get("gru_cell");
    let vb = || var_builder(m, DType::F32);
    assert!(GruCell::load(GruCellConfig::new(INPUT_SIZE + 1, HIDDEN_SIZE), vb()?).is_err());
    assert!(LstmCell::load(LstmCellConfig::new(INPUT_SIZE, HIDDEN_SIZE), vb()?).is_err());
    let msg = err_text(GruCell::load(GruCellConfig::new(INPUT_SIZE, 0), vb()?));
    assert!(msg.contains("hidden_size"), "{msg}");
    Ok(())
}

// ---- padded batches ---------------------------------------------------------

#[test]
fn bad_lengths_are_errors() -> Result<()> {
    for m in padded().iter() {
        let stack = Stack::load(m, DType::F32)?;
        let xs = if m.batch_first {
            zeros(&[3, 5, 3])?
        } else {
            zeros(&[5, 3, 3])?
        };
        let shape = format!("{:?}", xs.dims());
        for lengths in [&[2, 5][..], &[2, 5, 3, 1][..], &[][..]] {
            let msg = err_text(stack.call(&xs, Some(lengths), &[]));
            assert!(
                msg.contains(&format!("got {} lengths for a batch of 3", lengths.len())),
                "{msg}"
            );
            assert!(msg.contains(&shape), "{msg}");
        }
        for lengths in [[2, 0, 3], [2, 6, 3]] {
            let msg = err_text(stack.call(&xs, Some(&lengths), &[]));
            assert!(
                msg.contains("1..=5") && msg.contains(&format!("{lengths:?}")),
                "{msg}"
            );
        }
        let msg = err_text(stack.call(&zeros(&[5, 3])?, Some(&[5]), &[]));
        assert!(msg.contains("batched") && msg.contains("[5, 3]"), "{msg}");
    }
    Ok(())
}

#[test]
fn padded_state_shapes_are_checked() -> Result<()> {
    let stack = Stack::load(padded().get("gru_bidirectional_2l"), DType::F32)?;
    let xs = zeros(&[5, 3, 3])?;
    let msg = err_text(stack.call(&xs, Some(&[2, 5, 3]), &[zeros(&[4, 2, 4])?]));
    assert!(msg.contains("expected h0 [4, 3, 4]"), "{msg}");
    Ok(())
}
