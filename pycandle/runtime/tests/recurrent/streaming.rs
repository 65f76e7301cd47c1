//! Streaming: a unidirectional module run chunk by chunk, carrying the state
//! returned by each call into the next, equals one run over the whole
//! sequence. (Bidirectional modules cannot stream: their backward direction
//! starts from the end of the whole sequence.)

use candle_core::{DType, Result, Tensor};
use pycandle_runtime::{Gru, GruConfig, Lstm, LstmConfig, Nonlinearity, Rnn, RnnConfig};

use crate::support::{input, max_abs_diff, synthetic, Stack};

/// Runs `xs` whole and in chunks of the given lengths along `t_axis`,
/// starting both from `state`, and checks that outputs and final states
/// agree within `tol`.
fn assert_streams(
    stack: &Stack,
    xs: &Tensor,
    t_axis: usize,
    chunks: &[usize],
    state: Vec<Tensor>,
    tol: f64,
) -> Result<()> {
    let whole = stack.call(xs, None, &state)?;
    let mut state = state;
    let mut outs = Vec::new();
    let mut start = 0;
    for &len in chunks {
        let mut res = stack.call(&xs.narrow(t_axis, start, len)?, None, &state)?;
        state = res.split_off(1); // [h_n(, c_n)]
        outs.push(res.remove(0));
        start += len;
    }
    assert_eq!(start, xs.dim(t_axis)?, "chunks must cover the sequence");
    let streamed = Tensor::cat(&outs, t_axis)?;
    let err = max_abs_diff(&streamed, &whole[0])?;
    assert!(err <= tol, "output error {err:e}");
    for (k, (s, w)) in state.iter().zip(&whole[1..]).enumerate() {
        let err = max_abs_diff(s, w)?;
        assert!(err <= tol, "final state {k} error {err:e}");
    }
    Ok(())
}

/// Two-layer unidirectional modules of every family.
fn stacks(batch_first: bool, dtype: DType) -> Result<Vec<(Stack, usize)>> {
    let lstm = LstmConfig {
        num_layers: 2,
        batch_first,
        ..LstmConfig::new(3, 4)
    };
    let gru = GruConfig {
        num_layers: 2,
        batch_first,
        ..GruConfig::new(3, 4)
    };
    let rnn = RnnConfig {
        num_layers: 2,
        batch_first,
        ..RnnConfig::new(3, 4)
    };
    let relu = RnnConfig {
        nonlinearity: Nonlinearity::Relu,
        ..rnn
    };
    let projected = LstmConfig {
        proj_size: 2,
        ..lstm
    };
    // (module, output hidden size)
    Ok(vec![
        (Stack::Lstm(Lstm::load(lstm, synthetic(dtype))?), 4),
        (Stack::Lstm(Lstm::load(projected, synthetic(dtype))?), 2),
        (Stack::Gru(Gru::load(gru, synthetic(dtype))?), 4),
        (Stack::Rnn(Rnn::load(rnn, synthetic(dtype))?), 4),
        (Stack::Rnn(Rnn::load(relu, synthetic(dtype))?), 4),
    ])
}

/// A non-zero initial state `[h0]` or `[h0, c0]` for 2 layers and batch 2.
fn initial_state(stack: &Stack, h_out: usize, dtype: DType) -> Result<Vec<Tensor>> {
    let h0 = (input(&[2, 2, h_out], dtype)? * 0.5)?;
    Ok(match stack {
        Stack::Lstm(_) => vec![h0, (input(&[2, 2, 4], dtype)? * -0.3)?],
        _ => vec![h0],
    })
}

#[test]
fn chunked_run_equals_whole_run() -> Result<()> {
    for (dtype, tol) in [(DType::F32, 1e-6), (DType::F64, 1e-12)] {
        for batch_first in [false, true] {
            let (t_axis, dims) = if batch_first {
                (1, [2, 9, 3])
            } else {
                (0, [9, 2, 3])
            };
            let xs = input(&dims, dtype)?;
            for (stack, h_out) in stacks(batch_first, dtype)? {
                for state in [vec![], initial_state(&stack, h_out, dtype)?] {
                    for chunks in [&[3, 1, 4, 1][..], &[1; 9][..], &[9][..]] {
                        assert_streams(&stack, &xs, t_axis, chunks, state.clone(), tol)?;
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn unbatched_chunked_run_equals_whole_run() -> Result<()> {
    let xs = input(&[7, 3], DType::F32)?; // (T, I)
    for (stack, _) in stacks(false, DType::F32)? {
        assert_streams(&stack, &xs, 0, &[2, 5], vec![], 1e-6)?;
    }
    Ok(())
}

/// The documented limit: chunking a bidirectional run changes its result.
#[test]
fn bidirectional_does_not_stream() -> Result<()> {
    let cfg = GruConfig {
        bidirectional: true,
        ..GruConfig::new(3, 4)
    };
    let gru = Gru::load(cfg, synthetic(DType::F32))?;
    let xs = input(&[6, 1, 3], DType::F32)?;
    let (whole, _) = gru.forward(&xs, None)?;
    let (first, h_n) = gru.forward(&xs.narrow(0, 0, 3)?, None)?;
    let (second, _) = gru.forward(&xs.narrow(0, 3, 3)?, Some(&h_n))?;
    let streamed = Tensor::cat(&[first, second], 0)?;
    assert!(max_abs_diff(&streamed, &whole)? > 1e-3);
    Ok(())
}
