//! `torch.nn.GRU`.

use std::sync::Arc;

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::common::{self, Affine, KernelFloat, PackedCache, Recurrence, TorchParams};
use super::stack::{StackConfig, StackShape, Stacked};
use crate::kernel::{GruWeights, PackedWeights};

/// Hyper-parameters of a [`Gru`], named as in `torch.nn.GRU`.
///
/// `dropout` is not represented: between-layer dropout is a no-op at
/// inference time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GruConfig {
    /// Number of features of the input `x`.
    pub input_size: usize,
    /// Number of features of the hidden state `h`.
    pub hidden_size: usize,
    /// Number of stacked layers.
    pub num_layers: usize,
    /// Whether the layer has `bias_ih_l{k}` / `bias_hh_l{k}`.
    pub bias: bool,
    /// Input and output are `(B, T, F)` instead of `(T, B, F)`.
    pub batch_first: bool,
    /// Run a second, time-reversed direction and concatenate the outputs.
    pub bidirectional: bool,
}

impl GruConfig {
    /// A single-layer, unidirectional GRU with biases, like
    /// `nn.GRU(input_size, hidden_size)`.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        Self {
            input_size,
            hidden_size,
            num_layers: 1,
            bias: true,
            batch_first: false,
            bidirectional: false,
        }
    }

    /// Number of directions: 2 when bidirectional, else 1.
    pub fn num_directions(&self) -> usize {
        common::num_directions(self.bidirectional)
    }
}

/// One GRU layer in one direction (or a `GRUCell`), prepared for fast
/// inference. Gates keep PyTorch's order r, z, n.
#[derive(Debug, Clone)]
pub struct GruLayer {
    /// `x W_ih^T + b_ih + [b_hr, b_hz, 0]`. (I, 3H)
    input: Affine,
    /// `W_hh^T`. (H, 3H)
    w_hh_t: Tensor,
    /// `b_hn`, which cannot be folded: the reset gate multiplies it. (H)
    b_hn: Option<Tensor>,
    /// `[0, 0, b_hn]`, the kernels' `b_hh` to go with the folded input
    /// projection. (3H)
    b_hh_kernel: Option<Tensor>,
    hidden_size: usize,
    /// The same weights packed for the CPU kernels, on first use.
    packed: PackedCache,
}

impl GruLayer {
    /// Loads the parameters named `{weight,bias}_{ih,hh}{suffix}`.
    pub(super) fn load(
        vb: &VarBuilder,
        suffix: &str,
        in_size: usize,
        hidden_size: usize,
        bias: bool,
    ) -> Result<Self> {
        let h = hidden_size;
        let p = TorchParams::load(vb, suffix, 3 * h, in_size, h, bias)?;
        let (bias, b_hn, b_hh_kernel) = match p.biases {
            Some((b_ih, b_hh)) => {
                let b_rz = (b_ih.narrow(0, 0, 2 * h)? + b_hh.narrow(0, 0, 2 * h)?)?;
                let b_in = b_ih.narrow(0, 2 * h, h)?;
                let folded = Tensor::cat(&[&b_rz, &b_in], 0)?; // (3H)
                let b_hn = b_hh.narrow(0, 2 * h, h)?;
                let b_hh_kernel = Tensor::cat(&[&b_rz.zeros_like()?, &b_hn], 0)?; // (3H)
                (Some(folded), Some(b_hn), Some(b_hh_kernel))
            }
            None => (None, None, None),
        };
        Ok(Self {
            input: Affine::new(&p.w_ih, bias)?,
            w_hh_t: p.w_hh.t()?.contiguous()?,
            b_hn,
            b_hh_kernel,
            hidden_size,
            packed: PackedCache::default(),
        })
    }
}

impl Recurrence for GruLayer {
    /// `h`, (B, H).
    type State = Tensor;

    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            input: self.input.to_dtype(dtype)?,
            w_hh_t: self.w_hh_t.to_dtype(dtype)?,
            b_hn: common::opt_to_dtype(self.b_hn.as_ref(), dtype)?,
            b_hh_kernel: common::opt_to_dtype(self.b_hh_kernel.as_ref(), dtype)?,
            hidden_size: self.hidden_size,
            packed: self.packed.clone(),
        })
    }

    fn input(&self) -> &Affine {
        &self.input
    }

    fn step(&self, xp: &Tensor, h: &Tensor) -> Result<Tensor> {
        let hs = self.hidden_size;
        let hp = h.matmul(&self.w_hh_t)?; // (B, 3H)
        let rz = (xp.narrow(1, 0, 2 * hs)? + hp.narrow(1, 0, 2 * hs)?)?;
        let rz = candle_nn::ops::sigmoid(&rz)?; // (B, 2H)
        let r = rz.narrow(1, 0, hs)?;
        let z = rz.narrow(1, hs, hs)?;
        let mut hn = hp.narrow(1, 2 * hs, hs)?; // (B, H)
        if let Some(b_hn) = &self.b_hn {
            hn = hn.broadcast_add(b_hn)?;
        }
        let n = (xp.narrow(1, 2 * hs, hs)? + r.mul(&hn)?)?.tanh()?; // (B, H)

        // (1 - z) * n + z * h, in the form PyTorch evaluates it.
        z.mul(&(h - &n)?)? + n
    }

    fn packed<T: KernelFloat>(&self) -> Result<Option<Arc<PackedWeights<T>>>> {
        self.packed.get_or_pack(&self.input, &self.w_hh_t, |g| {
            let b_hh = common::host_opt::<T>(self.b_hh_kernel.as_ref())?;
            let weights = GruWeights {
                w_ih_t: &g.w_ih_t,
                w_hh_t: &g.w_hh_t,
                // b_ih + [b_hr, b_hz, 0] and [0, 0, b_hn], as folded at load time.
                b_ih: g.bias.as_deref(),
                b_hh: b_hh.as_deref(),
            };
            Ok(PackedWeights::gru(g.in_size, self.hidden_size, weights)?)
        })
    }
}

/// `torch.nn.GRU` for inference.
///
/// With `D` directions, each layer and direction computes, for every step,
///
/// ```text
/// r = sigmoid(x_t W_ir^T + b_ir + h_{t-1} W_hr^T + b_hr)
/// z = sigmoid(x_t W_iz^T + b_iz + h_{t-1} W_hz^T + b_hz)
/// n = tanh(x_t W_in^T + b_in + r * (h_{t-1} W_hn^T + b_hn))
/// h_t = (1 - z) * n + z * h_{t-1}
/// ```
///
/// Layer `k > 0` reads the `D * H` concatenated outputs of layer `k - 1`.
///
/// Runs through [`Stacked`]: `forward(xs, Some(&h0))` returns
/// `(output, h_n)`, with `h0` and `h_n` `(num_layers * D, B, H)`.
pub type Gru = Stacked<GruConfig>;

impl StackConfig for GruConfig {
    type Layer = GruLayer;

    fn shape(&self) -> StackShape {
        StackShape {
            kind: "GRU",
            input_size: self.input_size,
            hidden_size: self.hidden_size,
            output_size: self.hidden_size,
            num_layers: self.num_layers,
            batch_first: self.batch_first,
            bidirectional: self.bidirectional,
        }
    }

    fn load_layer(&self, vb: &VarBuilder, suffix: &str, in_size: usize) -> Result<GruLayer> {
        GruLayer::load(vb, suffix, in_size, self.hidden_size, self.bias)
    }

    fn state_features(&self) -> Vec<usize> {
        vec![self.hidden_size]
    }
}
