//! Recurrent layers with PyTorch semantics.
//!
//! [`Lstm`] reproduces `torch.nn.LSTM` in inference mode: any number of
//! layers, optional biases, `batch_first`, bidirectional runs, the `proj_size`
//! projection and unbatched input. Parameters are loaded under PyTorch's own
//! names, so a `state_dict` exported to safetensors loads as is.
//!
//! # Performance notes
//!
//! At load time the weights are transposed once into contiguous `(in, 4H)`
//! matrices, the two PyTorch biases are folded into one, and the gate blocks
//! are reordered from PyTorch's `i, f, g, o` to `i, f, o, g` so that the
//! three sigmoid gates form one contiguous block. In `forward`, the input
//! projection of a whole sequence is one matmul per layer and direction; the
//! time loop only multiplies the previous hidden state by `W_hh^T` and applies
//! the gate nonlinearities.

use candle_core::{bail, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

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
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    /// Feature size of `h`: `proj_size` when projecting, else `hidden_size`.
    pub fn output_hidden_size(&self) -> usize {
        if self.proj_size > 0 {
            self.proj_size
        } else {
            self.hidden_size
        }
    }

    /// Input feature size of layer `layer`.
    fn layer_input_size(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input_size
        } else {
            self.num_directions() * self.output_hidden_size()
        }
    }

    fn validate(&self) -> Result<()> {
        if self.hidden_size == 0 {
            bail!("LSTM: hidden_size must be positive, got {self:?}");
        }
        if self.num_layers == 0 {
            bail!("LSTM: num_layers must be positive, got {self:?}");
        }
        if self.proj_size >= self.hidden_size {
            bail!(
                "LSTM: proj_size ({}) must be smaller than hidden_size ({})",
                self.proj_size,
                self.hidden_size
            );
        }
        Ok(())
    }
}

/// Parameters of one layer in one direction, prepared for fast inference.
#[derive(Debug, Clone)]
struct Cell {
    /// `W_ih^T` with gate columns ordered i, f, o, g. (I_k, 4H)
    w_ih_t: Tensor,
    /// `W_hh^T` with gate columns ordered i, f, o, g. (H_out, 4H)
    w_hh_t: Tensor,
    /// `b_ih + b_hh`, gates ordered i, f, o, g. (4H)
    bias: Option<Tensor>,
    /// `W_hr^T` when projecting. (H, P)
    w_hr_t: Option<Tensor>,
}

impl Cell {
    fn load(cfg: &LstmConfig, layer: usize, reverse: bool, vb: &VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let h_out = cfg.output_hidden_size();
        let in_size = cfg.layer_input_size(layer);
        let suffix = if reverse { "_reverse" } else { "" };
        let name = |base: &str| format!("{base}_l{layer}{suffix}");

        let w_ih = vb.get((4 * h, in_size), &name("weight_ih"))?;
        let w_hh = vb.get((4 * h, h_out), &name("weight_hh"))?;
        let w_ih_t = reorder_gates(&w_ih, h)?.t()?.contiguous()?;
        let w_hh_t = reorder_gates(&w_hh, h)?.t()?.contiguous()?;
        let bias = if cfg.bias {
            let b_ih = vb.get(4 * h, &name("bias_ih"))?;
            let b_hh = vb.get(4 * h, &name("bias_hh"))?;
            Some(reorder_gates(&(b_ih + b_hh)?, h)?)
        } else {
            None
        };
        let w_hr_t = if cfg.proj_size > 0 {
            let w_hr = vb.get((cfg.proj_size, h), &name("weight_hr"))?;
            Some(w_hr.t()?.contiguous()?)
        } else {
            None
        };
        Ok(Self {
            w_ih_t,
            w_hh_t,
            bias,
            w_hr_t,
        })
    }

    /// The parameters in `dtype` (a cheap clone when they already are).
    fn in_dtype(&self, dtype: DType) -> Result<Self> {
        let conv = |t: &Tensor| t.to_dtype(dtype);
        Ok(Self {
            w_ih_t: conv(&self.w_ih_t)?,
            w_hh_t: conv(&self.w_hh_t)?,
            bias: self.bias.as_ref().map(conv).transpose()?,
            w_hr_t: self.w_hr_t.as_ref().map(conv).transpose()?,
        })
    }

    /// Runs one direction over a whole time-major sequence.
    ///
    /// `x2d` is the layer input flattened to (T*B, I_k); `h0` is (B, H_out),
    /// `c0` is (B, H). Returns the per-step outputs stacked in time order,
    /// (T, B, H_out), and the final (h, c).
    fn run(
        &self,
        x2d: &Tensor,
        t_len: usize,
        batch: usize,
        h0: Tensor,
        c0: Tensor,
        reverse: bool,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let h = c0.dim(1)?;
        // Input projection for every timestep at once.
        let mut xp = x2d.matmul(&self.w_ih_t)?; // (T*B, 4H)
        if let Some(bias) = &self.bias {
            xp = xp.broadcast_add(bias)?;
        }
        let xp = xp.reshape((t_len, batch, 4 * h))?; // (T, B, 4H)

        let mut h_t = h0;
        let mut c_t = c0;
        let mut outs = Vec::with_capacity(t_len);
        for step in 0..t_len {
            let t = if reverse { t_len - 1 - step } else { step };
            let gates = h_t.matmul(&self.w_hh_t)?.add(&xp.get(t)?)?; // (B, 4H)
            let ifo = candle_nn::ops::sigmoid(&gates.narrow(1, 0, 3 * h)?)?; // (B, 3H)
            let g = gates.narrow(1, 3 * h, h)?.tanh()?; // (B, H)
            let i = ifo.narrow(1, 0, h)?;
            let f = ifo.narrow(1, h, h)?;
            let o = ifo.narrow(1, 2 * h, h)?;
            c_t = (f.mul(&c_t)? + i.mul(&g)?)?; // (B, H)
            let mut next_h = o.mul(&c_t.tanh()?)?; // (B, H)
            if let Some(w_hr_t) = &self.w_hr_t {
                next_h = next_h.matmul(w_hr_t)?; // (B, P)
            }
            h_t = next_h;
            outs.push(h_t.clone());
        }
        if reverse {
            outs.reverse();
        }
        let out = Tensor::stack(&outs, 0)?; // (T, B, H_out)
        Ok((out, h_t, c_t))
    }
}

/// Moves PyTorch's gate blocks `i, f, g, o` (along dim 0, `h` rows each) to
/// `i, f, o, g`.
fn reorder_gates(t: &Tensor, h: usize) -> Result<Tensor> {
    Tensor::cat(
        &[
            t.narrow(0, 0, 2 * h)?,
            t.narrow(0, 3 * h, h)?,
            t.narrow(0, 2 * h, h)?,
        ],
        0,
    )
}

/// Where the recurrence starts from.
enum InitState {
    /// User-supplied `(h0, c0)`, (L*D, B, H_out) and (L*D, B, H).
    Given(Tensor, Tensor),
    /// Zeros shared by every layer and direction, (B, H_out) and (B, H).
    Zeros(Tensor, Tensor),
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
#[derive(Debug, Clone)]
pub struct Lstm {
    config: LstmConfig,
    /// Indexed `layer * num_directions + direction`, like PyTorch's `h_n`.
    cells: Vec<Cell>,
    device: Device,
}

impl Lstm {
    /// Loads PyTorch's parameter names from `vb`: `weight_ih_l{k}`,
    /// `weight_hh_l{k}`, `bias_ih_l{k}`, `bias_hh_l{k}` (when `bias`),
    /// `weight_hr_l{k}` (when `proj_size > 0`), each with the suffix
    /// `_reverse` for the backward direction.
    ///
    /// The weights are kept in `vb`'s dtype; `forward` converts them when the
    /// input has another dtype, so load in the dtype you run in.
    pub fn load(config: LstmConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let mut cells = Vec::with_capacity(config.num_layers * config.num_directions());
        for layer in 0..config.num_layers {
            cells.push(Cell::load(&config, layer, false, &vb)?);
            if config.bidirectional {
                cells.push(Cell::load(&config, layer, true, &vb)?);
            }
        }
        Ok(Self {
            config,
            cells,
            device: vb.device().clone(),
        })
    }

    /// The configuration this layer was loaded with.
    pub fn config(&self) -> &LstmConfig {
        &self.config
    }

    /// Runs the LSTM with PyTorch's semantics.
    ///
    /// * `xs`: `(B, T, I)` when `batch_first`, else `(T, B, I)`; or unbatched
    ///   `(T, I)`.
    /// * `state`: `Some((h0, c0))` with `h0` of shape
    ///   `(num_layers * D, B, H_out)` and `c0` of shape `(num_layers * D, B, H)`
    ///   (without the `B` axis for unbatched input), in the dtype of `xs`;
    ///   `None` starts from zeros.
    ///
    /// Returns `(output, (h_n, c_n))`: `output` is `(B, T, D * H_out)`,
    /// `(T, B, D * H_out)` or `(T, D * H_out)` following the input layout,
    /// with the forward and backward outputs concatenated on the last axis;
    /// `h_n` and `c_n` have the shapes of `h0` and `c0`, ordered layer-major
    /// then direction, and hold the true final states (for the backward
    /// direction, the state after consuming `t = 0`).
    pub fn forward(
        &self,
        xs: &Tensor,
        state: Option<(&Tensor, &Tensor)>,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let cfg = &self.config;
        let dirs = cfg.num_directions();
        let n_states = cfg.num_layers * dirs;
        let h = cfg.hidden_size;
        let h_out = cfg.output_hidden_size();
        let dtype = xs.dtype();

        // Normalise the input to time-major (T, B, I).
        let (xs_tm, unbatched) = match *xs.dims() {
            [_, _] => (xs.unsqueeze(1)?, true),
            [_, _, _] if cfg.batch_first => (xs.transpose(0, 1)?, false),
            [_, _, _] => (xs.clone(), false),
            _ => bail!(
                "LSTM: expected input of rank 2 (T, I) or 3 ({}), got shape {:?}",
                if cfg.batch_first {
                    "B, T, I"
                } else {
                    "T, B, I"
                },
                xs.dims()
            ),
        };
        let (t_len, batch, in_size) = xs_tm.dims3()?;
        if in_size != cfg.input_size {
            bail!(
                "LSTM: input feature size {in_size} (input shape {:?}) does not match input_size {}",
                xs.dims(),
                cfg.input_size
            );
        }
        if t_len == 0 {
            bail!("LSTM: input has an empty time axis (shape {:?})", xs.dims());
        }

        // Initial states: given as (L*D, B, F), or shared zeros (B, F).
        let init = match state {
            Some((h0, c0)) => {
                let (h_dims, c_dims) = if unbatched {
                    (vec![n_states, h_out], vec![n_states, h])
                } else {
                    (vec![n_states, batch, h_out], vec![n_states, batch, h])
                };
                if h0.dims() != h_dims.as_slice() || c0.dims() != c_dims.as_slice() {
                    bail!(
                        "LSTM: expected h0 {h_dims:?} and c0 {c_dims:?} for input {:?}, got h0 {:?} and c0 {:?}",
                        xs.dims(),
                        h0.dims(),
                        c0.dims()
                    );
                }
                if h0.dtype() != dtype || c0.dtype() != dtype {
                    bail!(
                        "LSTM: h0 ({:?}) and c0 ({:?}) must have the input dtype {dtype:?}",
                        h0.dtype(),
                        c0.dtype()
                    );
                }
                if unbatched {
                    InitState::Given(h0.unsqueeze(1)?, c0.unsqueeze(1)?)
                } else {
                    InitState::Given(h0.clone(), c0.clone())
                }
            }
            None => InitState::Zeros(
                Tensor::zeros((batch, h_out), dtype, xs.device())?, // (B, H_out)
                Tensor::zeros((batch, h), dtype, xs.device())?,     // (B, H)
            ),
        };

        let mut layer_in = xs_tm; // (T, B, I_k)
        let mut h_n = Vec::with_capacity(n_states);
        let mut c_n = Vec::with_capacity(n_states);
        for layer in 0..cfg.num_layers {
            let in_k = cfg.layer_input_size(layer);
            let x2d = layer_in.reshape((t_len * batch, in_k))?; // (T*B, I_k)
            let mut dir_outs = Vec::with_capacity(dirs);
            for dir in 0..dirs {
                let idx = layer * dirs + dir;
                let cell = self.cells[idx].in_dtype(dtype)?;
                let (h0, c0) = match &init {
                    InitState::Given(h0, c0) => (h0.get(idx)?, c0.get(idx)?),
                    InitState::Zeros(hz, cz) => (hz.clone(), cz.clone()),
                };
                let (out, h_last, c_last) = cell.run(&x2d, t_len, batch, h0, c0, dir == 1)?;
                dir_outs.push(out);
                h_n.push(h_last);
                c_n.push(c_last);
            }
            layer_in = if dir_outs.len() == 1 {
                dir_outs.swap_remove(0)
            } else {
                Tensor::cat(&dir_outs, 2)? // (T, B, D*H_out)
            };
        }

        let h_n = Tensor::stack(&h_n, 0)?; // (L*D, B, H_out)
        let c_n = Tensor::stack(&c_n, 0)?; // (L*D, B, H)
        if unbatched {
            Ok((layer_in.squeeze(1)?, (h_n.squeeze(1)?, c_n.squeeze(1)?)))
        } else if cfg.batch_first {
            let out = layer_in.transpose(0, 1)?.contiguous()?; // (B, T, D*H_out)
            Ok((out, (h_n, c_n)))
        } else {
            Ok((layer_in, (h_n, c_n)))
        }
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }
}
