//! Single-step cells: `torch.nn.LSTMCell`, `torch.nn.GRUCell` and
//! `torch.nn.RNNCell`.
//!
//! A cell is one layer of the matching stacked module applied to one step,
//! so the cells reuse those layers' prepared parameters and step functions.
//! Their parameters are named without a layer suffix: `weight_ih`,
//! `weight_hh`, `bias_ih`, `bias_hh`. [`LstmCell`], [`GruCell`] and
//! [`RnnCell`] are one generic [`Cell`] with their configuration's
//! [`CellConfig`].

use std::fmt::Debug;

use candle_core::{Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::common::{self, CellInput, Recurrence, RecurrentState};
use super::gru::GruLayer;
use super::lstm::LstmLayer;
use super::simple::{Nonlinearity, RnnLayer};

/// The configuration of a cell ([`LstmCellConfig`], [`GruCellConfig`],
/// [`RnnCellConfig`]): what makes a [`Cell`] an LSTM, GRU or RNN cell.
pub trait CellConfig: Copy + Debug {
    /// The layer of the matching stacked module the cell runs.
    type Layer: Recurrence + Clone + Debug;

    /// `"LSTMCell"`, `"GRUCell"` or `"RNNCell"`, for error messages.
    const KIND: &'static str;

    /// `(input_size, hidden_size)`.
    fn sizes(&self) -> (usize, usize);

    /// Loads the layer from `weight_ih`, `weight_hh` and, when `bias`,
    /// `bias_ih`, `bias_hh`.
    fn load_layer(&self, vb: &VarBuilder) -> Result<Self::Layer>;
}

/// The state a [`Cell`] with configuration `C` carries: a [`Tensor`] `h`,
/// or `(h, c)` for the LSTM cell.
pub type CellState<C> = <<C as CellConfig>::Layer as Recurrence>::State;

/// The state `forward` takes: `&Tensor`, or `(&Tensor, &Tensor)`.
pub type CellStateRef<'a, C> = <CellState<C> as RecurrentState>::Ref<'a>;

/// A single-step recurrent cell in PyTorch's semantics: [`LstmCell`],
/// [`GruCell`] and [`RnnCell`] are this type with their configuration.
#[derive(Debug, Clone)]
pub struct Cell<C: CellConfig> {
    config: C,
    layer: C::Layer,
    device: Device,
}

impl<C: CellConfig> Cell<C> {
    /// Loads `weight_ih`, `weight_hh` and, when `bias`, `bias_ih`, `bias_hh`
    /// from `vb`, keeping `vb`'s dtype.
    pub fn load(config: C, vb: VarBuilder) -> Result<Self> {
        common::check_config(C::KIND, config.sizes().1, 1)?;
        Ok(Self {
            config,
            layer: config.load_layer(&vb)?,
            device: vb.device().clone(),
        })
    }

    /// The configuration this cell was loaded with.
    pub fn config(&self) -> &C {
        &self.config
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One step: `x` is `(B, I)` or unbatched `(I)`; `state` is `h` (or for
    /// the LSTM cell `(h, c)`), each `(B, H)` (or `(H)`) in the dtype of
    /// `x`, `None` for zeros. Returns the next state with the same shapes.
    pub fn forward(&self, x: &Tensor, state: Option<CellStateRef<'_, C>>) -> Result<CellState<C>> {
        let (input_size, hs) = self.config.sizes();
        let input = CellInput::new(C::KIND, x, input_size)?;
        let parts: Result<Vec<_>> = match state {
            Some(state) => {
                let parts = CellState::<C>::ref_parts(state);
                let names = CellState::<C>::NAMES.iter().copied();
                let named: Vec<_> = names.zip(parts.iter().copied()).collect();
                input.check_states(hs, &named)?;
                parts.iter().map(|t| input.batched_state(t)).collect()
            }
            None => CellState::<C>::NAMES
                .iter()
                .map(|_| input.zero_state(hs))
                .collect(),
        }; // parts x (B, H)
        let layer = self.layer.to_dtype(input.xs.dtype())?;
        let state = CellState::<C>::from_parts(parts?)?;
        let next = layer.step(&layer.project_input(&input.xs)?, &state)?; // (B, G*H) -> state
        let next = next.into_parts().into_iter().map(|t| input.output(t));
        CellState::<C>::from_parts(next.collect::<Result<_>>()?)
    }
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

/// `torch.nn.LSTMCell`: one step of an [`Lstm`](super::Lstm) layer;
/// `forward(x, Some((&h, &c)))` returns the next `(h, c)`.
pub type LstmCell = Cell<LstmCellConfig>;

impl CellConfig for LstmCellConfig {
    type Layer = LstmLayer;
    const KIND: &'static str = "LSTMCell";

    fn sizes(&self) -> (usize, usize) {
        (self.input_size, self.hidden_size)
    }

    fn load_layer(&self, vb: &VarBuilder) -> Result<LstmLayer> {
        LstmLayer::load(vb, "", self.input_size, self.hidden_size, 0, self.bias)
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

/// `torch.nn.GRUCell`: one step of a [`Gru`](super::Gru) layer;
/// `forward(x, Some(&h))` returns the next `h`.
pub type GruCell = Cell<GruCellConfig>;

impl CellConfig for GruCellConfig {
    type Layer = GruLayer;
    const KIND: &'static str = "GRUCell";

    fn sizes(&self) -> (usize, usize) {
        (self.input_size, self.hidden_size)
    }

    fn load_layer(&self, vb: &VarBuilder) -> Result<GruLayer> {
        GruLayer::load(vb, "", self.input_size, self.hidden_size, self.bias)
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

/// `torch.nn.RNNCell`: one step of an [`Rnn`](super::Rnn) layer, with the
/// shapes of [`GruCell`].
pub type RnnCell = Cell<RnnCellConfig>;

impl CellConfig for RnnCellConfig {
    type Layer = RnnLayer;
    const KIND: &'static str = "RNNCell";

    fn sizes(&self) -> (usize, usize) {
        (self.input_size, self.hidden_size)
    }

    fn load_layer(&self, vb: &VarBuilder) -> Result<RnnLayer> {
        let (i, h) = (self.input_size, self.hidden_size);
        RnnLayer::load(vb, "", i, h, self.nonlinearity, self.bias)
    }
}
