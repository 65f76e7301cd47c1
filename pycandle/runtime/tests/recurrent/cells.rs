//! `LstmCell`, `GruCell` and `RnnCell` against their PyTorch counterparts.

use std::collections::HashMap;

use candle_core::{DType, Device, Result};
use candle_nn::VarBuilder;
use pycandle_runtime::{Gru, GruConfig, Lstm, LstmConfig, Rnn, RnnConfig};

use crate::fixtures::{cells, HIDDEN_SIZE, INPUT_SIZE};
use crate::support::{max_abs_diff, tensor, Cell, Stack};

torch_cases! {
    lstm_cell => cells::LSTM_CELL,
    lstm_cell_no_bias => cells::LSTM_CELL_NO_BIAS,
    gru_cell => cells::GRU_CELL,
    gru_cell_no_bias => cells::GRU_CELL_NO_BIAS,
    rnn_cell_tanh => cells::RNN_CELL_TANH,
    rnn_cell_relu_no_bias => cells::RNN_CELL_RELU_NO_BIAS,
}

#[test]
fn every_module_is_tested() {
    assert_eq!(cells::ALL.len(), 6);
}

/// A cell's parameters, renamed `..._l0`, load into the one-layer stacked
/// module, and one step of the cell is a length-1 run of that module.
#[test]
fn a_cell_is_one_step_of_the_stacked_module() -> Result<()> {
    let dtype = DType::F32;
    for m in cells::ALL {
        let mut map = HashMap::new();
        for (name, data) in m.params {
            map.insert(format!("{name}_l0"), tensor(data, dtype)?);
        }
        let vb = VarBuilder::from_tensors(map, dtype, &Device::Cpu);
        let (i, h) = (INPUT_SIZE, HIDDEN_SIZE);
        let stack = match Cell::load(m, dtype)? {
            Cell::Lstm(_) => Stack::Lstm(Lstm::load(
                LstmConfig {
                    bias: m.bias,
                    ..LstmConfig::new(i, h)
                },
                vb,
            )?),
            Cell::Gru(_) => Stack::Gru(Gru::load(
                GruConfig {
                    bias: m.bias,
                    ..GruConfig::new(i, h)
                },
                vb,
            )?),
            Cell::Rnn(cell) => Stack::Rnn(Rnn::load(
                RnnConfig {
                    bias: m.bias,
                    nonlinearity: cell.config().nonlinearity,
                    ..RnnConfig::new(i, h)
                },
                vb,
            )?),
        };
        let cell = Cell::load(m, dtype)?;
        for run in m.runs.iter().filter(|r| r.input.shape.len() == 2) {
            let x = tensor(&run.input, dtype)?; // (B, I)
            let state = run
                .state
                .iter()
                .map(|d| tensor(d, dtype))
                .collect::<Result<Vec<_>>>()?; // (B, H) each
            let stepped = cell.call(&x, &state)?;
            let state_1 = state
                .iter()
                .map(|s| s.unsqueeze(0))
                .collect::<Result<Vec<_>>>()?; // (1, B, H) each
            let ran = stack.call(&x.unsqueeze(0)?, None, &state_1)?;
            // ran = [output, h_n(, c_n)], all (1, B, H); stepped = [h(, c)].
            assert_eq!(max_abs_diff(&ran[0].squeeze(0)?, &stepped[0])?, 0.0);
            for (k, s) in stepped.iter().enumerate() {
                assert_eq!(
                    max_abs_diff(&ran[k + 1].squeeze(0)?, s)?,
                    0.0,
                    "{}",
                    m.torch
                );
            }
        }
    }
    Ok(())
}
