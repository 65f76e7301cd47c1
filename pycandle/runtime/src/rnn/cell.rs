//! Single-step cells: `torch.nn.LSTMCell`, `torch.nn.GRUCell` and
//! `torch.nn.RNNCell`.
//!
//! A cell is one layer of the matching stacked module applied to one step,
//! so the cells reuse those layers' prepared parameters and step functions.
//! Their parameters are named without a layer suffix: `weight_ih`,
//! `weight_hh`, `bias_ih`, `bias_hh`.

use candle_core::{Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::common::{self, CellInput, Recurrence};
use super::gru::GruLayer;
use super::lstm::LstmLayer;
use super::simple::{Nonlinearity, RnnLayer};

/// One step of `layer` from `state`, in the input's dtype.
fn step<R: Recurrence>(layer: &R, input: &CellInput, state: &R::State) -> Result<R::State> {
    let layer = layer.to_dtype(input.xs.dtype())?;
    layer.step(&layer.project_input(&input.xs)?, state) // (B, G*H) -> state
}

/// Hyper-parameters of an [`LstmCell`], named as in `torch.nn.LSTMCell`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LstmCellConfig {
    /// Number of features of the input `x`.
    pub input_size: usize,
    /// Number of features of `h` and `c`.
    pub hidden_size: usize,
    /// Whether the cell has `bias_ih` / `bias_hh`.
    pub bias: bool,
}

impl LstmCellConfig {
    /// A cell with biases, like `nn.LSTMCell(input_size, hidden_size)`.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        Self {
            input_size,
            hidden_size,
            bias: true,
        }
    }
}

/// `torch.nn.LSTMCell`: one step of an [`Lstm`](super::Lstm) layer.
#[derive(Debug, Clone)]
pub struct LstmCell {
    config: LstmCellConfig,
    layer: LstmLayer,
    device: Device,
}

impl LstmCell {
    /// Loads `weight_ih`, `weight_hh` and, when `bias`, `bias_ih`, `bias_hh`
    /// from `vb`, keeping `vb`'s dtype.
    pub fn load(config: LstmCellConfig, vb: VarBuilder) -> Result<Self> {
        common::check_config("LSTMCell", config.hidden_size, 1)?;
        let layer = LstmLayer::load(
            &vb,
            "",
            config.input_size,
            config.hidden_size,
            0,
            config.bias,
        )?;
        Ok(Self {
            config,
            layer,
            device: vb.device().clone(),
        })
    }

    /// The configuration this cell was loaded with.
    pub fn config(&self) -> &LstmCellConfig {
        &self.config
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One step: `x` is `(B, I)` or unbatched `(I)`; `state` is `(h, c)`,
    /// each `(B, H)` (or `(H)`) in the dtype of `x`, `None` for zeros.
    /// Returns the next `(h, c)` with the same shapes.
    pub fn forward(
        &self,
        x: &Tensor,
        state: Option<(&Tensor, &Tensor)>,
    ) -> Result<(Tensor, Tensor)> {
        let hs = self.config.hidden_size;
        let input = CellInput::new("LSTMCell", x, self.config.input_size)?;
        let state = match state {
            Some((h, c)) => {
                input.check_states(hs, [("h0", h), ("c0", c)])?;
                (input.batched_state(h)?, input.batched_state(c)?)
            }
            None => (input.zero_state(hs)?, input.zero_state(hs)?),
        }; // (B, H) each
        let (h, c) = step(&self.layer, &input, &state)?;
        Ok((input.output(h)?, input.output(c)?))
    }
}

/// Hyper-parameters of a [`GruCell`], named as in `torch.nn.GRUCell`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GruCellConfig {
    /// Number of features of the input `x`.
    pub input_size: usize,
    /// Number of features of `h`.
    pub hidden_size: usize,
    /// Whether the cell has `bias_ih` / `bias_hh`.
    pub bias: bool,
}

impl GruCellConfig {
    /// A cell with biases, like `nn.GRUCell(input_size, hidden_size)`.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        Self {
            input_size,
            hidden_size,
            bias: true,
        }
    }
}

/// `torch.nn.GRUCell`: one step of a [`Gru`](super::Gru) layer.
#[derive(Debug, Clone)]
pub struct GruCell {
    config: GruCellConfig,
    layer: GruLayer,
    device: Device,
}

impl GruCell {
    /// Loads `weight_ih`, `weight_hh` and, when `bias`, `bias_ih`, `bias_hh`
    /// from `vb`, keeping `vb`'s dtype.
    pub fn load(config: GruCellConfig, vb: VarBuilder) -> Result<Self> {
        common::check_config("GRUCell", config.hidden_size, 1)?;
        let layer = GruLayer::load(&vb, "", config.input_size, config.hidden_size, config.bias)?;
        Ok(Self {
            config,
            layer,
            device: vb.device().clone(),
        })
    }

    /// The configuration this cell was loaded with.
    pub fn config(&self) -> &GruCellConfig {
        &self.config
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One step: `x` is `(B, I)` or unbatched `(I)`; `h` is `(B, H)` (or
    /// `(H)`) in the dtype of `x`, `None` for zeros. Returns the next `h`.
    pub fn forward(&self, x: &Tensor, h: Option<&Tensor>) -> Result<Tensor> {
        let input = CellInput::new("GRUCell", x, self.config.input_size)?;
        let h = hidden_state(&input, self.config.hidden_size, h)?;
        input.output(step(&self.layer, &input, &h)?)
    }
}

/// Hyper-parameters of an [`RnnCell`], named as in `torch.nn.RNNCell`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RnnCellConfig {
    /// Number of features of the input `x`.
    pub input_size: usize,
    /// Number of features of `h`.
    pub hidden_size: usize,
    /// Whether the cell has `bias_ih` / `bias_hh`.
    pub bias: bool,
    /// Activation of the step.
    pub nonlinearity: Nonlinearity,
}

impl RnnCellConfig {
    /// A tanh cell with biases, like `nn.RNNCell(input_size, hidden_size)`.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        Self {
            input_size,
            hidden_size,
            bias: true,
            nonlinearity: Nonlinearity::Tanh,
        }
    }
}

/// `torch.nn.RNNCell`: one step of an [`Rnn`](super::Rnn) layer.
#[derive(Debug, Clone)]
pub struct RnnCell {
    config: RnnCellConfig,
    layer: RnnLayer,
    device: Device,
}

impl RnnCell {
    /// Loads `weight_ih`, `weight_hh` and, when `bias`, `bias_ih`, `bias_hh`
    /// from `vb`, keeping `vb`'s dtype.
    pub fn load(config: RnnCellConfig, vb: VarBuilder) -> Result<Self> {
        common::check_config("RNNCell", config.hidden_size, 1)?;
        let layer = RnnLayer::load(
            &vb,
            "",
            config.input_size,
            config.hidden_size,
            config.nonlinearity,
            config.bias,
        )?;
        Ok(Self {
            config,
            layer,
            device: vb.device().clone(),
        })
    }

    /// The configuration this cell was loaded with.
    pub fn config(&self) -> &RnnCellConfig {
        &self.config
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One step, with the shapes of [`GruCell::forward`].
    pub fn forward(&self, x: &Tensor, h: Option<&Tensor>) -> Result<Tensor> {
        let input = CellInput::new("RNNCell", x, self.config.input_size)?;
        let h = hidden_state(&input, self.config.hidden_size, h)?;
        input.output(step(&self.layer, &input, &h)?)
    }
}

/// The checked `h` of a GRU or RNN cell, or zeros. (B, H)
fn hidden_state(input: &CellInput, hidden_size: usize, h: Option<&Tensor>) -> Result<Tensor> {
    match h {
        Some(h) => {
            input.check_states(hidden_size, [("h0", h)])?;
            input.batched_state(h)
        }
        None => input.zero_state(hidden_size),
    }
}
