//! Loading fixtures and comparing against PyTorch: the helpers shared by the
//! `lstm_torch` and `recurrent` test targets.

use std::collections::HashMap;

use candle_core::{bail, DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use pycandle_runtime::kernel::{self, KernelPath};
use pycandle_runtime::{
    Gru, GruCell, GruCellConfig, GruConfig, Lstm, LstmCell, LstmCellConfig, LstmConfig,
    Nonlinearity, Rnn, RnnCell, RnnCellConfig, RnnConfig,
};

use crate::fixtures::{Data, Module, Run, HIDDEN_SIZE, INPUT_SIZE};

/// Largest accepted absolute error against PyTorch.
pub const TOL: f64 = 1e-5;

pub fn tensor(data: &Data, dtype: DType) -> Result<Tensor> {
    Tensor::from_slice(&data.values, data.shape.as_slice(), &Device::Cpu)?.to_dtype(dtype)
}

pub fn zeros(shape: &[usize]) -> Result<Tensor> {
    Tensor::zeros(shape, DType::F32, &Device::Cpu)
}

/// The module's PyTorch parameters, under their PyTorch names.
pub fn var_builder(m: &Module, dtype: DType) -> Result<VarBuilder<'static>> {
    let mut map = HashMap::new();
    for (name, data) in &m.params {
        map.insert(name.to_string(), tensor(data, dtype)?);
    }
    Ok(VarBuilder::from_tensors(map, dtype, &Device::Cpu))
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
}

pub fn err_text<T>(r: Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn nonlinearity(m: &Module) -> Nonlinearity {
    if m.relu {
        Nonlinearity::Relu
    } else {
        Nonlinearity::Tanh
    }
}

pub fn lstm_config(m: &Module) -> LstmConfig {
    LstmConfig {
        num_layers: m.num_layers,
        bias: m.bias,
        batch_first: m.batch_first,
        bidirectional: m.bidirectional,
        proj_size: m.proj_size,
        ..LstmConfig::new(INPUT_SIZE, HIDDEN_SIZE)
    }
}

pub fn gru_config(m: &Module) -> GruConfig {
    GruConfig {
        num_layers: m.num_layers,
        bias: m.bias,
        batch_first: m.batch_first,
        bidirectional: m.bidirectional,
        ..GruConfig::new(INPUT_SIZE, HIDDEN_SIZE)
    }
}

pub fn rnn_config(m: &Module) -> RnnConfig {
    RnnConfig {
        num_layers: m.num_layers,
        nonlinearity: nonlinearity(m),
        bias: m.bias,
        batch_first: m.batch_first,
        bidirectional: m.bidirectional,
        ..RnnConfig::new(INPUT_SIZE, HIDDEN_SIZE)
    }
}

/// Any of the stacked modules, called with flattened states.
pub enum Stack {
    Lstm(Lstm),
    Gru(Gru),
    Rnn(Rnn),
}

impl Stack {
    /// Loads a fixture's `nn.LSTM`, `nn.GRU` or `nn.RNN`.
    pub fn load(m: &Module, dtype: DType) -> Result<Self> {
        let vb = var_builder(m, dtype)?;
        Ok(match m.torch.split('(').next() {
            Some("nn.LSTM") => Self::Lstm(Lstm::load(lstm_config(m), vb)?),
            Some("nn.GRU") => Self::Gru(Gru::load(gru_config(m), vb)?),
            Some("nn.RNN") => Self::Rnn(Rnn::load(rnn_config(m), vb)?),
            _ => bail!("{} is not a stacked recurrent module", m.torch),
        })
    }

    /// `forward`, or `forward_padded` when `lengths` is given. `state` is
    /// `[]`, `[h0]` or `[h0, c0]`; returns `[output, h_n]` or
    /// `[output, h_n, c_n]`.
    pub fn call(
        &self,
        xs: &Tensor,
        lengths: Option<&[usize]>,
        state: &[Tensor],
    ) -> Result<Vec<Tensor>> {
        let h0 = state.first();
        Ok(match self {
            Self::Lstm(lstm) => {
                let state = match state {
                    [h0, c0] => Some((h0, c0)),
                    _ => None,
                };
                let (out, (h_n, c_n)) = match lengths {
                    Some(lengths) => lstm.forward_padded(xs, lengths, state)?,
                    None => lstm.forward(xs, state)?,
                };
                vec![out, h_n, c_n]
            }
            Self::Gru(gru) => {
                let (out, h_n) = match lengths {
                    Some(lengths) => gru.forward_padded(xs, lengths, h0)?,
                    None => gru.forward(xs, h0)?,
                };
                vec![out, h_n]
            }
            Self::Rnn(rnn) => {
                let (out, h_n) = match lengths {
                    Some(lengths) => rnn.forward_padded(xs, lengths, h0)?,
                    None => rnn.forward(xs, h0)?,
                };
                vec![out, h_n]
            }
        })
    }
}

/// Any of the cells, called with flattened states.
pub enum Cell {
    Lstm(LstmCell),
    Gru(GruCell),
    Rnn(RnnCell),
}

impl Cell {
    /// Loads a fixture's `nn.LSTMCell`, `nn.GRUCell` or `nn.RNNCell`.
    pub fn load(m: &Module, dtype: DType) -> Result<Self> {
        let vb = var_builder(m, dtype)?;
        Ok(match m.torch.split('(').next() {
            Some("nn.LSTMCell") => Self::Lstm(LstmCell::load(
                LstmCellConfig {
                    bias: m.bias,
                    ..LstmCellConfig::new(INPUT_SIZE, HIDDEN_SIZE)
                },
                vb,
            )?),
            Some("nn.GRUCell") => Self::Gru(GruCell::load(
                GruCellConfig {
                    bias: m.bias,
                    ..GruCellConfig::new(INPUT_SIZE, HIDDEN_SIZE)
                },
                vb,
            )?),
            Some("nn.RNNCell") => Self::Rnn(RnnCell::load(
                RnnCellConfig {
                    bias: m.bias,
                    nonlinearity: nonlinearity(m),
                    ..RnnCellConfig::new(INPUT_SIZE, HIDDEN_SIZE)
                },
                vb,
            )?),
            _ => bail!("{} is not a recurrent cell", m.torch),
        })
    }

    /// One step; `state` is `[]`, `[h]` or `[h, c]`, and so is the result.
    pub fn call(&self, x: &Tensor, state: &[Tensor]) -> Result<Vec<Tensor>> {
        Ok(match self {
            Self::Lstm(cell) => {
                let state = match state {
                    [h, c] => Some((h, c)),
                    _ => None,
                };
                let (h, c) = cell.forward(x, state)?;
                vec![h, c]
            }
            Self::Gru(cell) => vec![cell.forward(x, state.first())?],
            Self::Rnn(cell) => vec![cell.forward(x, state.first())?],
        })
    }
}

/// Replays one recorded call in `dtype`.
pub fn replay(m: &Module, run: &Run, dtype: DType) -> Result<Vec<Tensor>> {
    let xs = tensor(&run.input, dtype)?;
    let state = run
        .state
        .iter()
        .map(|d| tensor(d, dtype))
        .collect::<Result<Vec<_>>>()?;
    if m.torch.contains("Cell(") {
        Cell::load(m, dtype)?.call(&xs, &state)
    } else {
        let lengths = (!run.lengths.is_empty()).then_some(run.lengths.as_slice());
        Stack::load(m, dtype)?.call(&xs, lengths, &state)
    }
}

/// Worst absolute error of every recorded call of `m` in `dtype`, checking
/// dtypes and shapes on the way.
pub fn worst_error(m: &Module, dtype: DType) -> Result<f64> {
    let mut worst = 0f64;
    for (i, run) in m.runs.iter().enumerate() {
        let got = replay(m, run, dtype)?;
        assert_eq!(got.len(), run.outputs.len(), "{}: run {i}", m.torch);
        for (k, (actual, expected)) in got.iter().zip(&run.outputs).enumerate() {
            assert_eq!(actual.dtype(), dtype, "{}: run {i}, result {k}", m.torch);
            assert_eq!(
                actual.dims(),
                expected.shape.as_slice(),
                "{}: run {i}, result {k} shape",
                m.torch
            );
            worst = worst.max(max_abs_diff(actual, &tensor(expected, DType::F64)?)?);
        }
    }
    Ok(worst)
}

/// Every recorded call of `m` matches PyTorch in f32 and f64, on every
/// recurrent kernel path this CPU has.
pub fn check_against_torch(m: &Module) -> Result<()> {
    for path in KernelPath::available() {
        for dtype in [DType::F32, DType::F64] {
            let err = kernel::with_kernel_path(path, || worst_error(m, dtype))
                .expect("an available path")?;
            assert!(
                err <= TOL,
                "{} ({}) in {dtype:?} on {path}: max abs error {err:e} > {TOL:e}",
                m.name,
                m.torch
            );
        }
    }
    Ok(())
}

/// Every recorded call of every module in `modules` runs in f16 and bf16
/// within `tol` of PyTorch's f32 results.
pub fn check_half_precision(modules: &[&Module], tol: f64) -> Result<()> {
    for dtype in [DType::F16, DType::BF16] {
        for m in modules {
            let err = worst_error(m, dtype)?;
            assert!(err < tol, "{} in {dtype:?}: max abs error {err}", m.torch);
        }
    }
    Ok(())
}

/// `m`'s module with `batch_first` set, run on its first recorded input
/// transposed, gives exactly what `m` gives (its output contiguous and of
/// shape `output_dims`).
pub fn assert_batch_first_matches_time_major(m: &Module, output_dims: &[usize]) -> Result<()> {
    assert!(!m.batch_first, "{}: already batch_first", m.torch);
    let time_major = Stack::load(m, DType::F32)?;
    let batch_first = Module {
        batch_first: true,
        ..m.clone()
    };
    let batch_first = Stack::load(&batch_first, DType::F32)?;
    let xs = tensor(&m.runs[0].input, DType::F32)?; // (T, B, I)
    let tm = time_major.call(&xs, None, &[])?;
    let bf = batch_first.call(&xs.transpose(0, 1)?, None, &[])?;
    assert_eq!(bf[0].dims(), output_dims);
    assert!(bf[0].is_contiguous());
    assert_eq!(max_abs_diff(&bf[0].transpose(0, 1)?, &tm[0])?, 0.0);
    assert_eq!(bf.len(), tm.len());
    for (b, t) in bf[1..].iter().zip(&tm[1..]) {
        assert_eq!(max_abs_diff(b, t)?, 0.0);
    }
    Ok(())
}

/// An all-zero initial state of the given shapes (`[h0]` or `[h0, c0]`)
/// gives exactly what no initial state gives, on `m`'s first recorded input.
pub fn assert_zero_state_equals_no_state(m: &Module, state_shapes: &[&[usize]]) -> Result<()> {
    let stack = Stack::load(m, DType::F32)?;
    let xs = tensor(&m.runs[0].input, DType::F32)?;
    let none = stack.call(&xs, None, &[])?;
    let state = state_shapes
        .iter()
        .map(|shape| zeros(shape))
        .collect::<Result<Vec<_>>>()?;
    let zero = stack.call(&xs, None, &state)?;
    assert_eq!(zero.len(), none.len());
    for (z, n) in zero.iter().zip(&none) {
        assert_eq!(max_abs_diff(z, n)?, 0.0);
    }
    Ok(())
}

// ---- errors, never panics ---------------------------------------------------

/// A 1-D or 4-D input is an error naming its rank and shape.
pub fn assert_bad_input_rank_is_an_error(stack: &Stack) -> Result<()> {
    for shape in [&[3][..], &[1, 5, 2, 3][..]] {
        let msg = err_text(stack.call(&zeros(shape)?, None, &[]));
        assert!(msg.contains("rank"), "{msg}");
        assert!(msg.contains(&format!("{shape:?}")), "{msg}");
    }
    Ok(())
}

/// An input of feature size 7 (input_size is 3) is an error naming the shape,
/// batched or not; the batched message starts with `kind` ("LSTM", "GRU", ...).
pub fn assert_bad_feature_size_is_an_error(stack: &Stack, kind: &str) -> Result<()> {
    let msg = err_text(stack.call(&zeros(&[5, 2, 7])?, None, &[]));
    assert!(msg.starts_with(kind), "{msg}");
    assert!(
        msg.contains("[5, 2, 7]") && msg.contains("input_size 3"),
        "{msg}"
    );
    let msg = err_text(stack.call(&zeros(&[5, 7])?, None, &[]));
    assert!(msg.contains("[5, 7]"), "{msg}");
    Ok(())
}

/// A sequence of length 0 is an error.
pub fn assert_empty_sequence_is_an_error(stack: &Stack) -> Result<()> {
    let msg = err_text(stack.call(&zeros(&[0, 2, 3])?, None, &[]));
    assert!(msg.contains("empty"), "{msg}");
    Ok(())
}

/// One test per fixture module of `family` (`test_name => "module name"`,
/// against PyTorch in f32 and f64), and `every_module_is_tested`: the list
/// names every module of the family, in file order.
macro_rules! torch_cases {
    ($family:ident: $($test:ident => $name:literal,)*) => {
        $(
            #[test]
            fn $test() -> candle_core::Result<()> {
                crate::support::check_against_torch(crate::fixtures::$family().get($name))
            }
        )*

        #[test]
        fn every_module_is_tested() {
            let family = crate::fixtures::$family();
            let names: Vec<&str> = family.iter().map(|m| m.name.as_str()).collect();
            assert_eq!(names, [$($name),*]);
        }
    };
}

/// Deterministic parameters of any name and shape: a sine wave whose phase
/// depends on the name, with amplitude 0.5.
struct Synthetic;

impl SimpleBackend for Synthetic {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let seed = name.bytes().fold(7u64, |acc, b| {
            acc.wrapping_mul(31).wrapping_add(u64::from(b))
        });
        let phase = (seed % 997) as f64 * 0.01;
        let values: Vec<f64> = (0..s.elem_count())
            .map(|i| 0.5 * (phase + 0.73 * i as f64).sin())
            .collect();
        Tensor::from_vec(values, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        bail!("synthetic parameters need a shape ({name})")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

pub fn synthetic(dtype: DType) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(Synthetic), dtype, Device::Cpu)
}

/// A deterministic input of the given shape.
pub fn input(dims: &[usize], dtype: DType) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let values: Vec<f64> = (0..n).map(|i| (0.37 * i as f64).cos()).collect();
    Tensor::from_vec(values, dims, &Device::Cpu)?.to_dtype(dtype)
}
