//! [`Stacked`], the one implementation behind [`Lstm`](super::Lstm),
//! [`Gru`](super::Gru) and [`Rnn`](super::Rnn): a stack of layers and
//! directions run over a sequence from the user's initial state, on the CPU
//! kernels when they apply and with Candle ops otherwise. What differs
//! between the three is their configuration's [`StackConfig`].

use std::fmt::Debug;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::common::{
    self, fast_path_dtype, run_kernel_layers, run_layers, KernelFloat, Recurrence, RecurrentState,
    SequenceInput,
};

/// The sizes every stacked module's configuration has.
#[derive(Debug, Clone, Copy)]
pub struct StackShape {
    /// `"LSTM"`, `"GRU"` or `"RNN"`, for error messages.
    pub(super) kind: &'static str,
    pub(super) input_size: usize,
    pub(super) hidden_size: usize,
    /// Features of `h`: `hidden_size`, or the LSTM's projection size.
    pub(super) output_size: usize,
    pub(super) num_layers: usize,
    pub(super) batch_first: bool,
    pub(super) bidirectional: bool,
}

impl StackShape {
    /// Input feature size of layer `layer`: the input's, then the
    /// concatenated outputs of the previous layer's directions.
    fn layer_input_size(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input_size
        } else {
            common::num_directions(self.bidirectional) * self.output_size
        }
    }
}

/// The configuration of a stacked module ([`LstmConfig`](super::LstmConfig),
/// [`GruConfig`](super::GruConfig), [`RnnConfig`](super::RnnConfig)): what
/// makes a [`Stacked`] an LSTM, a GRU or an RNN.
pub trait StackConfig: Copy + Debug {
    /// One layer in one direction.
    type Layer: Recurrence + Clone + Debug;

    /// The sizes and layout options.
    fn shape(&self) -> StackShape;

    /// Checks what [`StackShape`] does not cover.
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// Loads one layer and direction from the parameters named
    /// `{weight,bias}_..{suffix}`, with `in_size` input features.
    fn load_layer(&self, vb: &VarBuilder, suffix: &str, in_size: usize) -> Result<Self::Layer>;

    /// The feature size of each part of the state (`h`, then `c`).
    fn state_features(&self) -> Vec<usize>;
}

/// The state a [`Stacked`] module with configuration `C` carries: a
/// [`Tensor`] `h`, or `(h, c)` for the LSTM.
pub type StackState<C> = <<C as StackConfig>::Layer as Recurrence>::State;

/// The initial state `forward` takes: `&Tensor`, or `(&Tensor, &Tensor)`.
pub type StackStateRef<'a, C> = <StackState<C> as RecurrentState>::Ref<'a>;

/// A stacked recurrent module in PyTorch's semantics: [`Lstm`](super::Lstm),
/// [`Gru`](super::Gru) and [`Rnn`](super::Rnn) are this type with their
/// configuration.
///
/// The layers are kept `layer * num_directions + direction`, in PyTorch's
/// `h_n` order.
#[derive(Debug, Clone)]
pub struct Stacked<C: StackConfig> {
    config: C,
    layers: Vec<C::Layer>,
    device: Device,
}

impl<C: StackConfig> Stacked<C> {
    /// Loads PyTorch's parameter names from `vb`: `weight_ih_l{k}`,
    /// `weight_hh_l{k}`, `bias_ih_l{k}`, `bias_hh_l{k}` (when `bias`), and
    /// for an LSTM `weight_hr_l{k}` (when `proj_size > 0`), each with the
    /// suffix `_reverse` for the backward direction.
    ///
    /// The weights are kept in `vb`'s dtype; `forward` converts them when the
    /// input has another dtype, so load in the dtype you run in.
    pub fn load(config: C, vb: VarBuilder) -> Result<Self> {
        let s = config.shape();
        common::check_config(s.kind, s.hidden_size, s.num_layers)?;
        config.validate()?;
        let layers = common::load_layers(s.num_layers, s.bidirectional, |k, suffix| {
            config.load_layer(&vb, suffix, s.layer_input_size(k))
        })?;
        Ok(Self {
            config,
            layers,
            device: vb.device().clone(),
        })
    }

    /// The configuration this module was loaded with.
    pub fn config(&self) -> &C {
        &self.config
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the module with PyTorch's semantics.
    ///
    /// * `xs`: `(B, T, I)` when `batch_first`, else `(T, B, I)`; or unbatched
    ///   `(T, I)`.
    /// * `state`: the initial state, `h0` (or for an LSTM `(h0, c0)`), in the
    ///   dtype of `xs`; `None` starts from zeros. `h0` is
    ///   `(num_layers * D, B, H_out)`, with `H_out` the LSTM's `proj_size`
    ///   when it projects and `hidden_size` otherwise, and `c0` is
    ///   `(num_layers * D, B, H)`; without the `B` axis for unbatched input.
    ///
    /// Returns `(output, final state)`: `output` is `(B, T, D * H_out)`,
    /// `(T, B, D * H_out)` or `(T, D * H_out)` following the input layout,
    /// with the forward and backward outputs concatenated on the last axis;
    /// the final state `h_n` (or `(h_n, c_n)`) has the shapes of the initial
    /// one, ordered layer-major then direction, and holds the true final
    /// states (for the backward direction, the state after consuming
    /// `t = 0`).
    pub fn forward(
        &self,
        xs: &Tensor,
        state: Option<StackStateRef<'_, C>>,
    ) -> Result<(Tensor, StackState<C>)> {
        self.run(xs, None, state)
    }

    /// Runs a padded batch as PyTorch does for
    /// `pad_packed_sequence(module(pack_padded_sequence(xs, lengths, enforce_sorted=False)))`.
    ///
    /// `xs` is batched, `(B, T, I)` or `(T, B, I)` following `batch_first`,
    /// and `lengths[b]` is the true length of sequence `b`, in `1..=T`, in
    /// any order. Each sequence is run over its own steps only, so the final
    /// state holds its state at its true end (for the backward direction,
    /// which starts at `t = lengths[b] - 1`, after `t = 0`). The output is
    /// zero past each sequence's end and its time axis is `max(lengths)`.
    pub fn forward_padded(
        &self,
        xs: &Tensor,
        lengths: &[usize],
        state: Option<StackStateRef<'_, C>>,
    ) -> Result<(Tensor, StackState<C>)> {
        self.run(xs, Some(lengths), state)
    }

    fn run(
        &self,
        xs: &Tensor,
        lengths: Option<&[usize]>,
        state: Option<StackStateRef<'_, C>>,
    ) -> Result<(Tensor, StackState<C>)> {
        let s = self.config.shape();
        let input = SequenceInput::new(s.kind, xs, s.input_size, s.batch_first, lengths)?;
        let (n, features) = (self.layers.len(), self.config.state_features());
        let init = match state {
            Some(state) => {
                let parts = StackState::<C>::ref_parts(state);
                let named: Vec<_> = StackState::<C>::NAMES
                    .iter()
                    .zip(&parts)
                    .zip(&features)
                    .map(|((&name, &t), &f)| (name, t, f))
                    .collect();
                input.check_states(n, &named)?;
                let batched = parts.iter().map(|t| input.batched_state(t));
                Some(batched.collect::<Result<Vec<_>>>()?)
            }
            None => None,
        }; // parts x (L*D, B, F)
        let fast = match fast_path_dtype(&input, self.device.is_cpu()) {
            Some(DType::F32) => self.run_fast::<f32>(&input, init.as_deref())?,
            Some(DType::F64) => self.run_fast::<f64>(&input, init.as_deref())?,
            _ => None,
        };
        // The fast path's output is in the input's layout already.
        let (out, finals) = match fast {
            Some(done) => done,
            None => {
                let (out, finals) = self.run_generic(&input, init, &features)?;
                (input.output(out)?, finals)
            }
        };
        let finals = finals
            .iter()
            .take(features.len())
            .map(|part| input.final_state(part))
            .collect::<Result<Vec<_>>>()?;
        Ok((out, StackState::<C>::from_parts(finals)?))
    }

    /// [`Self::run`] with Candle ops, on any device and dtype: the last
    /// layer's output (T, B, D*H_out) and every layer-direction's final
    /// states, part by part.
    fn run_generic(
        &self,
        input: &SequenceInput,
        init: Option<Vec<Tensor>>,
        features: &[usize],
    ) -> Result<(Tensor, Vec<Vec<Tensor>>)> {
        let n = self.layers.len();
        let init = match init {
            Some(init) => init,
            None => features
                .iter()
                .map(|&f| input.zero_state(n, f))
                .collect::<Result<_>>()?,
        };
        let bidirectional = self.config.shape().bidirectional;
        let (out, finals) = run_layers(&self.layers, bidirectional, input, |idx| {
            let parts = init.iter().map(|t| t.get(idx)).collect::<Result<_>>()?;
            StackState::<C>::from_parts(parts)
        })?;
        let mut by_part = vec![Vec::with_capacity(n); init.len()];
        for state in finals {
            for (part, t) in by_part.iter_mut().zip(state.into_parts()) {
                part.push(t);
            }
        }
        Ok((out, by_part))
    }

    /// [`Self::run_generic`] on the CPU kernels of [`crate::kernel`], for a
    /// plain run (see `common::fast_path_dtype`) of `f32` or `f64` on the CPU:
    /// one kernel call per layer runs the input projection and the time loop
    /// of every direction, on weights packed once. Its output is in the
    /// input's layout (a batch-first input's last layer writes batch first).
    /// `None` when the kernels do not run these layers.
    fn run_fast<T: KernelFloat>(
        &self,
        input: &SequenceInput,
        init: Option<&[Tensor]>,
    ) -> Result<Option<(Tensor, Vec<Vec<Tensor>>)>> {
        let mut packed = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            match layer.packed::<T>()? {
                Some(p) => packed.push(p),
                None => return Ok(None),
            }
        }
        let part = |i: usize| init.and_then(|init| init.get(i));
        let dirs = common::num_directions(self.config.shape().bidirectional);
        let (out, h_n, c_n) = run_kernel_layers(input, &packed, dirs, part(0), part(1))?;
        Ok(Some((out, vec![h_n, c_n])))
    }
}
