//! `torch.nn.RNN`, the Elman network.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::common::{self, Affine, Recurrence, TorchParams};
use super::stack::{Stack, StackShape};

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
}

/// One RNN layer in one direction (or an `RNNCell`), prepared for fast
/// inference.
#[derive(Debug, Clone)]
pub(super) struct RnnLayer {
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
#[derive(Debug, Clone)]
pub struct Rnn {
    config: RnnConfig,
    stack: Stack<RnnLayer>,
}

impl Rnn {
    /// Loads PyTorch's parameter names from `vb`: `weight_ih_l{k}`,
    /// `weight_hh_l{k}`, and `bias_ih_l{k}`, `bias_hh_l{k}` when `bias`,
    /// each with the suffix `_reverse` for the backward direction.
    ///
    /// The weights are kept in `vb`'s dtype; `forward` converts them when the
    /// input has another dtype, so load in the dtype you run in.
    pub fn load(config: RnnConfig, vb: VarBuilder) -> Result<Self> {
        let stack = Stack::load(config.shape(), &vb, |vb, suffix, in_size| {
            let (h, act) = (config.hidden_size, config.nonlinearity);
            RnnLayer::load(vb, suffix, in_size, h, act, config.bias)
        })?;
        Ok(Self { config, stack })
    }

    /// The configuration this layer was loaded with.
    pub fn config(&self) -> &RnnConfig {
        &self.config
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        self.stack.device()
    }

    /// Runs the RNN with PyTorch's semantics.
    ///
    /// * `xs`: `(B, T, I)` when `batch_first`, else `(T, B, I)`; or unbatched
    ///   `(T, I)`.
    /// * `h0`: `(num_layers * D, B, H)` (without the `B` axis for unbatched
    ///   input), in the dtype of `xs`; `None` starts from zeros.
    ///
    /// Returns `(output, h_n)` with the shapes and ordering of
    /// [`Gru::forward`](super::Gru::forward).
    pub fn forward(&self, xs: &Tensor, h0: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        self.run(xs, None, h0)
    }

    /// Runs a padded batch as PyTorch does for
    /// `pad_packed_sequence(rnn(pack_padded_sequence(xs, lengths, enforce_sorted=False)))`,
    /// with the conventions of [`Gru::forward_padded`](super::Gru::forward_padded).
    pub fn forward_padded(
        &self,
        xs: &Tensor,
        lengths: &[usize],
        h0: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        self.run(xs, Some(lengths), h0)
    }

    fn run(
        &self,
        xs: &Tensor,
        lengths: Option<&[usize]>,
        h0: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let parts = [("h0", self.config.hidden_size)];
        let (out, [h_n]) = self.stack.run(xs, lengths, h0.map(|h0| [h0]), parts)?;
        Ok((out, h_n))
    }
}
