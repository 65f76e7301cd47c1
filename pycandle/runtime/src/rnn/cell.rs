//! Single-step cells: `torch.nn.LSTMCell`, `torch.nn.GRUCell` and
//! `torch.nn.RNNCell`.
//!
//! A cell is one layer of the matching stacked module applied to one step,
//! so the cells reuse those layers' prepared parameters and step functions.
//! Their parameters are named without a layer suffix: `weight_ih`,
//! `weight_hh`, `bias_ih`, `bias_hh`.

use candle_core::{Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::common::{self, CellInput, Recurrence, RecurrentState};
use super::gru::GruLayer;
use super::lstm::LstmLayer;
use super::simple::{Nonlinearity, RnnLayer};

/// What the three cells share: one layer of the matching stacked module,
/// applied to one step.
#[derive(Debug, Clone)]
struct Cell<R> {
    /// `"LSTMCell"`, `"GRUCell"` or `"RNNCell"`, for error messages.
    kind: &'static str,
    input_size: usize,
    hidden_size: usize,
    layer: R,
    device: Device,
}

impl<R: Recurrence> Cell<R> {
    /// Checks the sizes and loads the layer with `load(vb)`.
    fn load(
        kind: &'static str,
        (input_size, hidden_size): (usize, usize),
        vb: &VarBuilder,
        load: impl FnOnce(&VarBuilder) -> Result<R>,
    ) -> Result<Self> {
        common::check_config(kind, hidden_size, 1)?;
        Ok(Self {
            kind,
            input_size,
            hidden_size,
            layer: load(vb)?,
            device: vb.device().clone(),
        })
    }

    /// One step from `state`, `N` parts named by `names` (`None` for
    /// zeros), in the input's dtype; the next state's parts in the input's
    /// layout.
    fn step<const N: usize>(
        &self,
        x: &Tensor,
        state: Option<[&Tensor; N]>,
        names: [&str; N],
    ) -> Result<[Tensor; N]> {
        let (input, hs) = (
            CellInput::new(self.kind, x, self.input_size)?,
            self.hidden_size,
        );
        let parts: Result<Vec<_>> = match state {
            Some(state) => {
                input.check_states(hs, std::array::from_fn::<_, N, _>(|i| (names[i], state[i])))?;
                state.iter().map(|t| input.batched_state(t)).collect()
            }
            None => names.iter().map(|_| input.zero_state(hs)).collect(),
        }; // N x (B, H)
        let layer = self.layer.to_dtype(input.xs.dtype())?;
        let state = R::State::from_parts(parts?)?;
        let next = layer.step(&layer.project_input(&input.xs)?, &state)?; // (B, G*H) -> state
        let next = next.into_parts().into_iter().map(|t| input.output(t));
        let next = next.collect::<Result<Vec<_>>>()?;
        <[Tensor; N]>::try_from(next)
            .map_err(|_| candle_core::Error::Msg(format!("{}: a state part is missing", self.kind)))
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

/// `torch.nn.LSTMCell`: one step of an [`Lstm`](super::Lstm) layer.
#[derive(Debug, Clone)]
pub struct LstmCell {
    config: LstmCellConfig,
    cell: Cell<LstmLayer>,
}

impl LstmCell {
    /// Loads `weight_ih`, `weight_hh` and, when `bias`, `bias_ih`, `bias_hh`
    /// from `vb`, keeping `vb`'s dtype.
    pub fn load(config: LstmCellConfig, vb: VarBuilder) -> Result<Self> {
        let (i, h) = (config.input_size, config.hidden_size);
        let cell = Cell::load("LSTMCell", (i, h), &vb, |vb| {
            LstmLayer::load(vb, "", i, h, 0, config.bias)
        })?;
        Ok(Self { config, cell })
    }

    /// The configuration this cell was loaded with.
    pub fn config(&self) -> &LstmCellConfig {
        &self.config
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.cell.device
    }

    /// One step: `x` is `(B, I)` or unbatched `(I)`; `state` is `(h, c)`,
    /// each `(B, H)` (or `(H)`) in the dtype of `x`, `None` for zeros.
    /// Returns the next `(h, c)` with the same shapes.
    pub fn forward(
        &self,
        x: &Tensor,
        state: Option<(&Tensor, &Tensor)>,
    ) -> Result<(Tensor, Tensor)> {
        let state = state.map(|(h, c)| [h, c]);
        let [h, c] = self.cell.step(x, state, ["h0", "c0"])?;
        Ok((h, c))
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
    cell: Cell<GruLayer>,
}

impl GruCell {
    /// Loads `weight_ih`, `weight_hh` and, when `bias`, `bias_ih`, `bias_hh`
    /// from `vb`, keeping `vb`'s dtype.
    pub fn load(config: GruCellConfig, vb: VarBuilder) -> Result<Self> {
        let (i, h) = (config.input_size, config.hidden_size);
        let cell = Cell::load("GRUCell", (i, h), &vb, |vb| {
            GruLayer::load(vb, "", i, h, config.bias)
        })?;
        Ok(Self { config, cell })
    }

    /// The configuration this cell was loaded with.
    pub fn config(&self) -> &GruCellConfig {
        &self.config
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.cell.device
    }

    /// One step: `x` is `(B, I)` or unbatched `(I)`; `h` is `(B, H)` (or
    /// `(H)`) in the dtype of `x`, `None` for zeros. Returns the next `h`.
    pub fn forward(&self, x: &Tensor, h: Option<&Tensor>) -> Result<Tensor> {
        let [h] = self.cell.step(x, h.map(|h| [h]), ["h0"])?;
        Ok(h)
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
    cell: Cell<RnnLayer>,
}

impl RnnCell {
    /// Loads `weight_ih`, `weight_hh` and, when `bias`, `bias_ih`, `bias_hh`
    /// from `vb`, keeping `vb`'s dtype.
    pub fn load(config: RnnCellConfig, vb: VarBuilder) -> Result<Self> {
        let (i, h) = (config.input_size, config.hidden_size);
        let cell = Cell::load("RNNCell", (i, h), &vb, |vb| {
            RnnLayer::load(vb, "", i, h, config.nonlinearity, config.bias)
        })?;
        Ok(Self { config, cell })
    }

    /// The configuration this cell was loaded with.
    pub fn config(&self) -> &RnnCellConfig {
        &self.config
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.cell.device
    }

    /// One step, with the shapes of [`GruCell::forward`].
    pub fn forward(&self, x: &Tensor, h: Option<&Tensor>) -> Result<Tensor> {
        let [h] = self.cell.step(x, h.map(|h| [h]), ["h0"])?;
        Ok(h)
    }
}
