//! `torch.nn.LSTM`.

use std::sync::Arc;

use candle_core::{bail, DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::common::{self, Affine, KernelFloat, PackedCache, Recurrence, TorchParams};
use super::stack::{StackConfig, StackShape, Stacked};
use crate::kernel::{LstmWeights, PackedWeights};

/// Hyper-parameters of an [`Lstm`], named as in `torch.nn.LSTM`.
///
/// `dropout` is not represented: between-layer dropout is a no-op at
/// inference time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LstmConfig {
    /// Number of features of the input `x`.
    pub input_size: usize,
    /// Number of features of the cell state `c` (and of `h` without projection).
    pub hidden_size: usize,
    /// Number of stacked layers.
    pub num_layers: usize,
    /// Whether the layer has `bias_ih_l{k}` / `bias_hh_l{k}`.
    pub bias: bool,
    /// Input and output are `(B, T, F)` instead of `(T, B, F)`.
    pub batch_first: bool,
    /// Run a second, time-reversed direction and concatenate the outputs.
    pub bidirectional: bool,
    /// Size of the projected hidden state; 0 means no projection.
    pub proj_size: usize,
}

impl LstmConfig {
    /// A single-layer, unidirectional LSTM with biases, like
    /// `nn.LSTM(input_size, hidden_size)`.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        Self {
            input_size,
            hidden_size,
            num_layers: 1,
            bias: true,
            batch_first: false,
            bidirectional: false,
            proj_size: 0,
        }
    }

    /// Number of directions: 2 when bidirectional, else 1.
    pub fn num_directions(&self) -> usize {
        common::num_directions(self.bidirectional)
    }

    /// Feature size of `h`: `proj_size` when projecting, else `hidden_size`.
    pub fn output_hidden_size(&self) -> usize {
        if self.proj_size > 0 {
            self.proj_size
        } else {
            self.hidden_size
        }
    }
}

/// One LSTM layer in one direction (or an `LSTMCell`), prepared for fast
/// inference.
///
/// The gate blocks keep PyTorch's order `i, f, g, o`, which is also the order
/// the CPU kernels of [`crate::kernel`] take, so the same weights serve both
/// the generic path and the fast path without any per-call reordering.
#[derive(Debug, Clone)]
pub struct LstmLayer {
    /// `x W_ih^T + b_ih + b_hh`, gates i, f, g, o. (I, 4H)
    input: Affine,
    /// `W_hh^T`, gates i, f, g, o. (H_out, 4H)
    w_hh_t: Tensor,
    /// `W_hr^T` when projecting. (H, P)
    w_hr_t: Option<Tensor>,
    hidden_size: usize,
    /// The same weights packed for the CPU kernels, on first use.
    packed: PackedCache,
}

impl LstmLayer {
    /// Loads the parameters named `{weight,bias}_{ih,hh}{suffix}` and, when
    /// `proj_size > 0`, `weight_hr{suffix}`.
    pub(super) fn load(
        vb: &VarBuilder,
        suffix: &str,
        in_size: usize,
        hidden_size: usize,
        proj_size: usize,
        bias: bool,
    ) -> Result<Self> {
        let h = hidden_size;
        let h_out = if proj_size > 0 { proj_size } else { h };
        let p = TorchParams::load(vb, suffix, 4 * h, in_size, h_out, bias)?;
        let bias = match p.biases {
            Some((b_ih, b_hh)) => Some((b_ih + b_hh)?),
            None => None,
        };
        let w_hr_t = if proj_size > 0 {
            let w_hr = vb.get((proj_size, h), &format!("weight_hr{suffix}"))?;
            Some(w_hr.t()?.contiguous()?)
        } else {
            None
        };
        Ok(Self {
            input: Affine::new(&p.w_ih, bias)?,
            w_hh_t: p.w_hh.t()?.contiguous()?,
            w_hr_t,
            hidden_size,
            packed: PackedCache::default(),
        })
    }
}

impl Recurrence for LstmLayer {
    /// `(h, c)`, (B, H_out) and (B, H).
    type State = (Tensor, Tensor);

    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            input: self.input.to_dtype(dtype)?,
            w_hh_t: self.w_hh_t.to_dtype(dtype)?,
            w_hr_t: common::opt_to_dtype(self.w_hr_t.as_ref(), dtype)?,
            hidden_size: self.hidden_size,
            packed: self.packed.clone(),
        })
    }

    fn input(&self) -> &Affine {
        &self.input
    }

    fn step(&self, xp: &Tensor, (h, c): &Self::State) -> Result<Self::State> {
        let hs = self.hidden_size;
        let gates = h.matmul(&self.w_hh_t)?.add(xp)?; // (B, 4H), i, f, g, o
        let if_ = candle_nn::ops::sigmoid(&gates.narrow(1, 0, 2 * hs)?)?; // (B, 2H)
        let g = gates.narrow(1, 2 * hs, hs)?.tanh()?; // (B, H)
        let o = candle_nn::ops::sigmoid(&gates.narrow(1, 3 * hs, hs)?)?; // (B, H)
        let i = if_.narrow(1, 0, hs)?;
        let f = if_.narrow(1, hs, hs)?;
        let c = (f.mul(c)? + i.mul(&g)?)?; // (B, H)
        let mut h = o.mul(&c.tanh()?)?; // (B, H)
        if let Some(w_hr_t) = &self.w_hr_t {
            h = h.matmul(w_hr_t)?; // (B, P)
        }
        Ok((h, c))
    }

    fn packed<T: KernelFloat>(&self) -> Result<Option<Arc<PackedWeights<T>>>> {
        self.packed.get_or_pack(&self.input, &self.w_hh_t, |g| {
            let w_hr_t = common::host_opt::<T>(self.w_hr_t.as_ref())?;
            let weights = LstmWeights {
                w_ih_t: &g.w_ih_t,
                w_hh_t: &g.w_hh_t,
                b_ih: g.bias.as_deref(), // b_ih + b_hh, folded at load time
                b_hh: None,
                w_hr_t: w_hr_t.as_deref(),
            };
            Ok(PackedWeights::lstm(g.in_size, self.hidden_size, weights)?)
        })
    }
}

/// `torch.nn.LSTM` for inference.
///
/// With `D` directions and `H_out = proj_size` (or `hidden_size` when
/// `proj_size == 0`), each layer and direction computes, for every step,
///
/// ```text
/// i, f, g, o = split(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
/// c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
/// h_t = (sigmoid(o) * tanh(c_t)) [W_hr^T]
/// ```
///
/// Layer `k > 0` reads the `D * H_out` concatenated outputs of layer `k - 1`.
///
/// Runs through [`Stacked`]: `forward(xs, Some((&h0, &c0)))` returns
/// `(output, (h_n, c_n))`, with `h0` `(num_layers * D, B, H_out)` and `c0`
/// `(num_layers * D, B, H)`.
pub type Lstm = Stacked<LstmConfig>;

impl StackConfig for LstmConfig {
    type Layer = LstmLayer;

    fn shape(&self) -> StackShape {
        StackShape {
            kind: "LSTM",
            input_size: self.input_size,
            hidden_size: self.hidden_size,
            output_size: self.output_hidden_size(),
            num_layers: self.num_layers,
            batch_first: self.batch_first,
            bidirectional: self.bidirectional,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.proj_size >= self.hidden_size {
            bail!(
                "LSTM: proj_size ({}) must be smaller than hidden_size ({})",
                self.proj_size,
                self.hidden_size
            );
        }
        Ok(())
    }

    fn load_layer(&self, vb: &VarBuilder, suffix: &str, in_size: usize) -> Result<LstmLayer> {
        let (h, proj) = (self.hidden_size, self.proj_size);
        LstmLayer::load(vb, suffix, in_size, h, proj, self.bias)
    }

    fn state_features(&self) -> Vec<usize> {
        vec![self.output_hidden_size(), self.hidden_size]
    }
}
