//! An embedding folded into a module's first layer: `forward_tokens` gives
//! what `forward` gives on the embedded tokens, in every layout, and falls
//! back to running the embedding whenever the folded tables do not apply.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Embedding, Module};
use pycandle_runtime::{
    Gru, GruConfig, Lstm, LstmConfig, Nonlinearity, Rnn, RnnConfig, FOLD_LIMIT_BYTES,
};

use crate::support::{err_text, input, max_abs_diff, synthetic};

const VOCAB: usize = 11;

/// An embedding of `VOCAB` rows of `features`, from `seed`.
fn embedding(features: usize, dtype: DType, seed: f64) -> Result<Embedding> {
    let weight = (input(&[VOCAB, features], dtype)? * seed)?;
    Ok(Embedding::new(weight, features))
}

/// Token ids of the given shape, every id of the vocabulary among them.
fn tokens(dims: &[usize]) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let ids: Vec<i64> = (0..n).map(|i| ((i * 7 + 3) % VOCAB) as i64).collect();
    Tensor::from_vec(ids, dims, &Device::Cpu)
}

/// A module either kind, with its state's feature sizes.
enum Stack {
    Lstm(Lstm),
    Gru(Gru),
}

impl Stack {
    fn fold(&mut self, e: &Embedding) -> Result<bool> {
        match self {
            Stack::Lstm(m) => m.fold_embedding(e),
            Stack::Gru(m) => m.fold_embedding(e),
        }
    }

    /// `[output, h_n(, c_n)]` of `forward_tokens`, or of `forward` on the
    /// embedded tokens.
    fn run(
        &self,
        e: &Embedding,
        ids: &Tensor,
        state: &[Tensor],
        fold: bool,
    ) -> Result<Vec<Tensor>> {
        let xs = || e.forward(ids);
        Ok(match self {
            Stack::Lstm(m) => {
                let state = state.first().map(|h| (h, &state[1]));
                let (out, (h, c)) = if fold {
                    m.forward_tokens(e, ids, state)?
                } else {
                    m.forward(&xs()?, state)?
                };
                vec![out, h, c]
            }
            Stack::Gru(m) => {
                let (out, h) = if fold {
                    m.forward_tokens(e, ids, state.first())?
                } else {
                    m.forward(&xs()?, state.first())?
                };
                vec![out, h]
            }
        })
    }
}

/// The modules the tests fold into, each with `(layers * directions,
/// [state features])`.
fn modules(dtype: DType) -> Result<Vec<(Stack, usize, Vec<usize>)>> {
    let lstm = LstmConfig::new(6, 20);
    let deep = LstmConfig {
        num_layers: 2,
        bidirectional: true,
        batch_first: true,
        proj_size: 5,
        ..LstmConfig::new(6, 20)
    };
    let gru = GruConfig {
        bidirectional: true,
        ..GruConfig::new(6, 18)
    };
    let gru_bf = GruConfig {
        num_layers: 2,
        batch_first: true,
        ..GruConfig::new(6, 33)
    };
    Ok(vec![
        (
            Stack::Lstm(Lstm::load(lstm, synthetic(dtype))?),
            1,
            vec![20, 20],
        ),
        (
            Stack::Lstm(Lstm::load(deep, synthetic(dtype))?),
            4,
            vec![5, 20],
        ),
        (Stack::Gru(Gru::load(gru, synthetic(dtype))?), 2, vec![18]),
        (
            Stack::Gru(Gru::load(gru_bf, synthetic(dtype))?),
            2,
            vec![33],
        ),
    ])
}

#[test]
fn folded_runs_match_the_embedded_input() -> Result<()> {
    for (dtype, tol) in [(DType::F32, 2e-5), (DType::F64, 1e-12)] {
        let e = embedding(6, dtype, 0.8)?;
        for (mut stack, n, features) in modules(dtype)? {
            assert!(stack.fold(&e)?, "the kernels run every module here");
            // Batched (`(T, B)` or `(B, T)` following the module), then
            // unbatched.
            for dims in [vec![3, 9], vec![9]] {
                let ids = tokens(&dims)?;
                // The batch as `h_n` has it, `(L*D, B, F)`.
                let h_n = stack.run(&e, &ids, &[], false)?.remove(1);
                let batch = (h_n.rank() == 3).then(|| h_n.dim(1)).transpose()?;
                for with_state in [false, true] {
                    let state = if with_state {
                        features
                            .iter()
                            .map(|&f| {
                                let dims = match batch {
                                    Some(b) => vec![n, b, f],
                                    None => vec![n, f],
                                };
                                input(&dims, dtype)? * 0.3
                            })
                            .collect::<Result<Vec<_>>>()?
                    } else {
                        Vec::new()
                    };
                    let folded = stack.run(&e, &ids, &state, true)?;
                    let plain = stack.run(&e, &ids, &state, false)?;
                    for (k, (a, b)) in folded.iter().zip(&plain).enumerate() {
                        assert_eq!(a.dims(), b.dims(), "part {k}, tokens {dims:?}");
                        let err = max_abs_diff(a, b)?;
                        assert!(err <= tol, "part {k}, tokens {dims:?}: error {err:e}");
                    }
                }
                // The folded tables ran: they check the ids themselves.
                let bad = Tensor::full(VOCAB as i64, dims.as_slice(), &Device::Cpu)?;
                let err = err_text(stack.run(&e, &bad, &[], true));
                assert!(
                    err.contains("token id 11 is outside the embedding's 11 rows"),
                    "{err}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn other_inputs_run_the_embedding() -> Result<()> {
    let e = embedding(6, DType::F32, 0.8)?;
    let mut lstm = Lstm::load(LstmConfig::new(6, 20), synthetic(DType::F32))?;
    assert!(lstm.fold_embedding(&e)?);
    let run = |e: &Embedding, ids: &Tensor| -> Result<(Tensor, Tensor)> {
        let (folded, _) = lstm.forward_tokens(e, ids, None)?;
        let (plain, _) = lstm.forward(&e.forward(ids)?, None)?;
        Ok((folded, plain))
    };
    // Another embedding of the same shape is not the folded one.
    let other = embedding(6, DType::F32, -0.4)?;
    let (folded, plain) = run(&other, &tokens(&[7, 2])?)?;
    assert_eq!(max_abs_diff(&folded, &plain)?, 0.0);
    // A single step stays on the path the cells take.
    let (folded, plain) = run(&e, &tokens(&[1, 2])?)?;
    assert_eq!(max_abs_diff(&folded, &plain)?, 0.0);
    // Ids in an unsigned tensor.
    let ids = tokens(&[7, 2])?.to_dtype(DType::U32)?;
    let (folded, plain) = run(&e, &ids)?;
    assert!(max_abs_diff(&folded, &plain)? <= 2e-5);
    Ok(())
}

#[test]
fn what_cannot_fold_is_refused() -> Result<()> {
    // The RNN does not run on the kernels.
    let config = RnnConfig {
        nonlinearity: Nonlinearity::Relu,
        ..RnnConfig::new(6, 8)
    };
    let mut rnn = Rnn::load(config, synthetic(DType::F32))?;
    let e = embedding(6, DType::F32, 0.8)?;
    assert!(!rnn.fold_embedding(&e)?);
    let ids = tokens(&[5, 2])?;
    let (out, _) = rnn.forward_tokens(&e, &ids, None)?;
    let (want, _) = rnn.forward(&e.forward(&ids)?, None)?;
    assert_eq!(max_abs_diff(&out, &want)?, 0.0);

    // Tables past the size limit.
    let mut lstm = Lstm::load(LstmConfig::new(2, 512), synthetic(DType::F32))?;
    let row_bytes = 4 * 512 * 4;
    let vocab = FOLD_LIMIT_BYTES / row_bytes + 1;
    let big = Embedding::new(Tensor::zeros((vocab, 2), DType::F32, &Device::Cpu)?, 2);
    assert!(!lstm.fold_embedding(&big)?);
    let small = Embedding::new(Tensor::zeros((vocab - 1, 2), DType::F32, &Device::Cpu)?, 2);
    assert!(lstm.fold_embedding(&small)?);

    // An embedding of another width is an error.
    let err = err_text(lstm.fold_embedding(&embedding(3, DType::F32, 1.0)?));
    assert!(
        err.contains("LSTM: the embedding has 3 features per token, the input_size is 2"),
        "{err}"
    );
    Ok(())
}
