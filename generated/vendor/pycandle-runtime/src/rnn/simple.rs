//! `torch.nn.RNN`, the Elman network.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::common::{self, Affine, Recurrence, TorchParams};
use super::stack::{StackConfig, StackShape, Stacked};

/// The activation of an [`Rnn`] or [`RnnCell`](super::RnnCell), PyTorch's
/// `nonlinearity` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Nonlinearity {
    /// `nonlinearity="tanh"`, PyTorch's default.
    #[default]
    Tanh,
    /// `nonlinearity="relu"`.
    Relu,
}

impl Nonlinearity {
    fn apply(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Tanh => xs.tanh(),
            Self::Relu => xs.relu(),
        }
    }
}

/// Hyper-parameters of an [`Rnn`], named as in `torch.nn.RNN`.
///
/// `dropout` is not represented: between-layer dropout is a no-op at
/// inference time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RnnConfig {
    /// Number of features of the input `x`.
    pub input_size: usize,
    /// Number of features of the hidden state `h`.
    pub hidden_size: usize,
    /// Number of stacked layers.
    pub num_layers: usize,
    /// Activation applied at every step.
    pub nonlinearity: Nonlinearity,
    /// Whether the layer has `bias_ih_l{k}` / `bias_hh_l{k}`.
    pub bias: bool,
    /// Input and output are `(B, T, F)` instead of `(T, B, F)`.
    pub batch_first: bool,
    /// Run a second, time-reversed direction and concatenate the outputs.
    pub bidirectional: bool,
}

impl RnnConfig {
    /// A single-layer, unidirectional tanh RNN with biases, like
    /// `nn.RNN(input_size, hidden_size)`.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        Self {
            input_size,
            hidden_size,
            num_layers: 1,
            nonlinearity: Nonlinearity::Tanh,
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

/// One RNN layer in one direction (or an `RNNCell`), prepared for fast
/// inference.
#[derive(Debug, Clone)]
pub struct RnnLayer {
    /// `x W_ih^T + b_ih + b_hh`. (I, H)
    input: Affine,
    /// `W_hh^T`. (H, H)
    w_hh_t: Tensor,
    nonlinearity: Nonlinearity,
}

impl RnnLayer {
    /// Loads the parameters named `{weight,bias}_{ih,hh}{suffix}`.
    pub(super) fn load(
        vb: &VarBuilder,
        suffix: &str,
        in_size: usize,
        hidden_size: usize,
        nonlinearity: Nonlinearity,
        bias: bool,
    ) -> Result<Self> {
        let h = hidden_size;
        let p = TorchParams::load(vb, suffix, h, in_size, h, bias)?;
        let bias = p.biases.map(|(b_ih, b_hh)| b_ih + b_hh).transpose()?;
        Ok(Self {
            input: Affine::new(&p.w_ih, bias)?,
            w_hh_t: p.w_hh.t()?.contiguous()?,
            nonlinearity,
        })
    }
}

impl Recurrence for RnnLayer {
    /// `h`, (B, H).
    type State = Tensor;

    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            input: self.input.to_dtype(dtype)?,
            w_hh_t: self.w_hh_t.to_dtype(dtype)?,
            nonlinearity: self.nonlinearity,
        })
    }

    fn input(&self) -> &Affine {
        &self.input
    }

    fn step(&self, xp: &Tensor, h: &Tensor) -> Result<Tensor> {
        self.nonlinearity.apply(&h.matmul(&self.w_hh_t)?.add(xp)?) // (B, H)
    }
}

/// `torch.nn.RNN` for inference.
///
/// With `D` directions, each layer and direction computes, for every step,
///
/// ```text
/// h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
/// ```
///
/// with `act` tanh or relu. Layer `k > 0` reads the `D * H` concatenated
/// outputs of layer `k - 1`.
///
/// Runs through [`Stacked`], with the shapes of [`Gru`](super::Gru).
pub type Rnn = Stacked<RnnConfig>;

impl StackConfig for RnnConfig {
    type Layer = RnnLayer;

    fn shape(&self) -> StackShape {
        StackShape {
            kind: "RNN",
            input_size: self.input_size,
            hidden_size: self.hidden_size,
            output_size: self.hidden_size,
            num_layers: self.num_layers,
            batch_first: self.batch_first,
            bidirectional: self.bidirectional,
        }
    }

    fn load_layer(&self, vb: &VarBuilder, suffix: &str, in_size: usize) -> Result<RnnLayer> {
        let (h, act) = (self.hidden_size, self.nonlinearity);
        RnnLayer::load(vb, suffix, in_size, h, act, self.bias)
    }

    fn state_features(&self) -> Vec<usize> {
        vec![self.hidden_size]
    }
}
