//! `forward_padded` of `Lstm`, `Gru` and `Rnn` against PyTorch's
//! `pack_padded_sequence` -> module -> `pad_packed_sequence`.

use candle_core::{DType, Result, Tensor};

use crate::fixtures::{padded, Module};
use crate::support::{max_abs_diff, tensor, Stack};

torch_cases! { padded:
    lstm_bidirectional_two_layers => "lstm_bidirectional_2l",
    lstm_bidirectional_batch_first_projection => "lstm_bidirectional_2l_batch_first_proj",
    gru_bidirectional_two_layers => "gru_bidirectional_2l",
    gru_bidirectional_batch_first => "gru_bidirectional_2l_batch_first",
    rnn_tanh_bidirectional_two_layers => "rnn_tanh_bidirectional_2l",
    rnn_relu_batch_first => "rnn_relu_2l_batch_first",
}

/// A recorded padded call: input, lengths and initial state (f32).
struct PaddedRun<'a> {
    xs: Tensor,
    lengths: &'a [usize],
    state: Vec<Tensor>,
}

/// Every padded call recorded for `m`.
fn padded_runs(m: &Module) -> Result<Vec<PaddedRun<'_>>> {
    m.runs
        .iter()
        .filter(|run| !run.lengths.is_empty())
        .map(|run| {
            let state = run
                .state
                .iter()
                .map(|d| tensor(d, DType::F32))
                .collect::<Result<Vec<_>>>()?;
            Ok(PaddedRun {
                xs: tensor(&run.input, DType::F32)?,
                lengths: &run.lengths,
                state,
            })
        })
        .collect()
}

/// With every length equal to `T` there is no padding: same as `forward`.
#[test]
fn full_lengths_match_forward() -> Result<()> {
    for m in padded().iter() {
        let stack = Stack::load(m, DType::F32)?;
        for PaddedRun { xs, lengths, state } in padded_runs(m)? {
            let t_len = xs.dim(if m.batch_first { 1 } else { 0 })?;
            let full = vec![t_len; lengths.len()];
            let padded = stack.call(&xs, Some(&full), &state)?;
            let plain = stack.call(&xs, None, &state)?;
            for (a, b) in padded.iter().zip(&plain) {
                assert_eq!(max_abs_diff(a, b)?, 0.0, "{}", m.torch);
            }
        }
    }
    Ok(())
}

/// Each sequence of a padded batch gives what it gives when run alone,
/// trimmed to its length, and its output is zero past its end.
#[test]
fn each_sequence_matches_running_it_alone() -> Result<()> {
    for m in padded().iter() {
        let stack = Stack::load(m, DType::F32)?;
        let (t_axis, b_axis) = if m.batch_first { (1, 0) } else { (0, 1) };
        for PaddedRun { xs, lengths, state } in padded_runs(m)? {
            let batch_out = stack.call(&xs, Some(lengths), &state)?;
            let max_len = lengths.iter().copied().max().unwrap_or(0);
            assert_eq!(batch_out[0].dim(t_axis)?, max_len, "{}", m.torch);
            for (b, &len) in lengths.iter().enumerate() {
                let xs_b = xs.narrow(b_axis, b, 1)?.narrow(t_axis, 0, len)?;
                let state_b = state
                    .iter()
                    .map(|s| s.narrow(1, b, 1))
                    .collect::<Result<Vec<_>>>()?;
                let alone = stack.call(&xs_b, None, &state_b)?;
                let out_b = batch_out[0].narrow(b_axis, b, 1)?;
                let what = format!("{} lengths {lengths:?}, sequence {b}", m.torch);
                let err = max_abs_diff(&out_b.narrow(t_axis, 0, len)?, &alone[0])?;
                assert!(err <= 1e-6, "{what}: output error {err:e}");
                if len < max_len {
                    let tail = out_b.narrow(t_axis, len, max_len - len)?;
                    let tail_max = tail.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                    assert_eq!(tail_max, 0.0, "{what}: padding is not zero");
                }
                for (k, final_state) in batch_out[1..].iter().enumerate() {
                    let err = max_abs_diff(&final_state.narrow(1, b, 1)?, &alone[k + 1])?;
                    assert!(err <= 1e-6, "{what}: final state {k} error {err:e}");
                }
            }
        }
    }
    Ok(())
}
