//! `LstmCell`, `GruCell` and `RnnCell` against their PyTorch counterparts.

use candle_core::{DType, Result};

use crate::fixtures::{cells, Module};
use crate::support::{max_abs_diff, tensor, Cell, Stack};

torch_cases! { cells:
    lstm_cell => "lstm_cell",
    lstm_cell_no_bias => "lstm_cell_no_bias",
    gru_cell => "gru_cell",
    gru_cell_no_bias => "gru_cell_no_bias",
    rnn_cell_tanh => "rnn_cell_tanh",
    rnn_cell_relu_no_bias => "rnn_cell_relu_no_bias",
}

/// A cell's parameters, renamed `..._l0`, load into the one-layer stacked
/// module, and one step of the cell is a length-1 run of that module.
#[test]
fn a_cell_is_one_step_of_the_stacked_module() -> Result<()> {
    let dtype = DType::F32;
    for m in cells().iter() {
        // `nn.LSTMCell(3, 4, bias=False)` -> `nn.LSTM(3, 4, bias=False)`, ...
        let stacked = Module {
            torch: m.torch.replacen("Cell(", "(", 1),
            params: m
                .params
                .iter()
                .map(|(name, data)| (format!("{name}_l0"), data.clone()))
                .collect(),
            ..m.clone()
        };
        let stack = Stack::load(&stacked, dtype)?;
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
