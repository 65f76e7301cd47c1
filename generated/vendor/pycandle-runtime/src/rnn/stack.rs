//! [`Stacked`], the one implementation behind [`Lstm`](super::Lstm),
//! [`Gru`](super::Gru) and [`Rnn`](super::Rnn): a stack of layers and
//! directions run over a sequence from the user's initial state, on the CPU
//! kernels when they apply and with Candle ops otherwise. What differs
//! between the three is their configuration's [`StackConfig`].

use std::fmt::Debug;
use std::sync::Arc;

use candle_core::{bail, DType, Device, Result, Tensor};
use candle_nn::{Embedding, Module, VarBuilder};

use super::common::{
    self, fast_path_dtype, host_vec, run_kernel_layers, run_layers, Recurrence, RecurrentState,
    SequenceInput, Tokens,
};
use super::tokens::{token_ids, Folded, TableFloat, FOLD_LIMIT_BYTES};
use crate::kernel::{self, TokenTable};

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
    /// An embedding folded into the first layer ([`Self::fold_embedding`]).
    folded: Option<Arc<Folded>>,
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
            folded: None,
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

    /// Folds `embedding` into the first layer, for [`Self::forward_tokens`]:
    /// the input projection of every row of the embedding is computed now,
    /// once, so that a run on token ids copies one row of a table per step
    /// instead of projecting the embedded tokens. Returns whether it did.
    ///
    /// It does when the CPU kernels run this module (an LSTM or a GRU on
    /// the CPU, the embedding in `f32` or `f64`) and the tables take at most
    /// [`FOLD_LIMIT_BYTES`]; otherwise `forward_tokens` runs the embedding
    /// as it is. The embedding's rows must have `input_size` features.
    pub fn fold_embedding(&mut self, embedding: &Embedding) -> Result<bool> {
        let s = self.config.shape();
        let weight = embedding.embeddings();
        let (vocab, features) = weight.dims2()?;
        if features != s.input_size {
            bail!(
                "{}: the embedding has {features} features per token, the input_size is {}",
                s.kind,
                s.input_size
            );
        }
        self.folded = None;
        if self.device.is_cpu() && weight.device().is_cpu() {
            self.folded = match weight.dtype() {
                DType::F32 => self.fold::<f32>(weight, vocab)?,
                DType::F64 => self.fold::<f64>(weight, vocab)?,
                _ => None,
            };
        }
        Ok(self.folded.is_some())
    }

    /// The first layer's tables for the rows of `weight`, in `T`; `None`
    /// when the kernels do not run the layer or the tables are too large.
    fn fold<T: TableFloat>(&self, weight: &Tensor, vocab: usize) -> Result<Option<Arc<Folded>>> {
        let dirs = common::num_directions(self.config.shape().bidirectional);
        let mut packed = Vec::with_capacity(dirs);
        for layer in &self.layers[..dirs] {
            match layer.packed::<T>()? {
                Some(p) => packed.push(p),
                None => return Ok(None),
            }
        }
        let elements: usize = packed.iter().map(|w| TokenTable::len_for(w, vocab)).sum();
        if elements * std::mem::size_of::<T>() > FOLD_LIMIT_BYTES {
            return Ok(None);
        }
        let rows = host_vec::<T>(weight)?;
        let threads = kernel::default_threads();
        let tables = packed
            .iter()
            .map(|w| TokenTable::new(w, &rows, vocab, threads))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Some(Arc::new(Folded {
            source: weight.id(),
            vocab,
            tables: T::wrap(tables),
        })))
    }

    /// Runs the module on `embedding.forward(tokens)`, as [`Self::forward`]
    /// does: `tokens` holds integer ids, `(B, T)` when `batch_first`, else
    /// `(T, B)`, or unbatched `(T)`.
    ///
    /// When `embedding` is the one [`Self::fold_embedding`] folded and the
    /// run takes the CPU kernels, the embedded input is never built: each
    /// step's input projection is a row of the folded table. Otherwise the
    /// embedding runs first, and then the module.
    pub fn forward_tokens(
        &self,
        embedding: &Embedding,
        tokens: &Tensor,
        state: Option<StackStateRef<'_, C>>,
    ) -> Result<(Tensor, StackState<C>)> {
        let folded = self
            .folded
            .as_ref()
            .filter(|f| f.source == embedding.embeddings().id());
        if let Some(folded) = folded {
            if let Some(done) = self.run_tokens(folded, tokens, state)? {
                return Ok(done);
            }
        }
        self.forward(&embedding.forward(tokens)?, state)
    }

    /// [`Self::forward_tokens`] on the folded tables, or `None` when the
    /// CPU kernels do not run it (a single step, tokens elsewhere than on
    /// the CPU).
    fn run_tokens(
        &self,
        folded: &Folded,
        tokens: &Tensor,
        state: Option<StackStateRef<'_, C>>,
    ) -> Result<Option<(Tensor, StackState<C>)>> {
        let s = self.config.shape();
        if !matches!(tokens.rank(), 1 | 2) || tokens.dtype().is_float() {
            return Ok(None);
        }
        // The embedded input's shape without its elements: the checks and
        // layout of `forward`, on a view of one zero.
        let mut dims = tokens.dims().to_vec();
        dims.push(s.input_size);
        let dtype = folded.tables.dtype();
        let stand_in = Tensor::zeros((), dtype, tokens.device())?.broadcast_as(dims)?;
        let input = SequenceInput::new(s.kind, &stand_in, s.input_size, s.batch_first, None)?;
        if fast_path_dtype(&input, self.device.is_cpu()).is_none() {
            return Ok(None);
        }
        let init = self.initial_state(&input, state)?;
        let ids = token_ids(s.kind, tokens, folded.vocab)?;
        let fast = match dtype {
            DType::F32 => self.run_fast::<f32>(&input, init.as_deref(), Some((&ids, folded)))?,
            _ => self.run_fast::<f64>(&input, init.as_deref(), Some((&ids, folded)))?,
        };
        let Some((out, finals)) = fast else {
            return Ok(None);
        };
        self.finish(&input, out, finals).map(Some)
    }

    /// The user's initial state checked against `input` and brought to
    /// `(L*D, B, F)`, part by part.
    fn initial_state(
        &self,
        input: &SequenceInput,
        state: Option<StackStateRef<'_, C>>,
    ) -> Result<Option<Vec<Tensor>>> {
        let Some(state) = state else {
            return Ok(None);
        };
        let (n, features) = (self.layers.len(), self.config.state_features());
        let parts = StackState::<C>::ref_parts(state);
        let named: Vec<_> = StackState::<C>::NAMES
            .iter()
            .zip(&parts)
            .zip(&features)
            .map(|((&name, &t), &f)| (name, t, f))
            .collect();
        input.check_states(n, &named)?;
        let batched = parts.iter().map(|t| input.batched_state(t));
        Ok(Some(batched.collect::<Result<Vec<_>>>()?))
    }

    /// The output and the final state in the input's layout, from the
    /// output and every layer-direction's final states, part by part.
    fn finish(
        &self,
        input: &SequenceInput,
        out: Tensor,
        finals: Vec<Vec<Tensor>>,
    ) -> Result<(Tensor, StackState<C>)> {
        let parts = self.config.state_features().len();
        let finals = finals
            .iter()
            .take(parts)
            .map(|part| input.final_state(part))
            .collect::<Result<Vec<_>>>()?;
        Ok((out, StackState::<C>::from_parts(finals)?))
    }

    fn run(
        &self,
        xs: &Tensor,
        lengths: Option<&[usize]>,
        state: Option<StackStateRef<'_, C>>,
    ) -> Result<(Tensor, StackState<C>)> {
        let s = self.config.shape();
        let input = SequenceInput::new(s.kind, xs, s.input_size, s.batch_first, lengths)?;
        let features = self.config.state_features();
        let init = self.initial_state(&input, state)?; // parts x (L*D, B, F)
        let fast = match fast_path_dtype(&input, self.device.is_cpu()) {
            Some(DType::F32) => self.run_fast::<f32>(&input, init.as_deref(), None)?,
            Some(DType::F64) => self.run_fast::<f64>(&input, init.as_deref(), None)?,
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
        self.finish(&input, out, finals)
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
    /// With `tokens`, the first layer reads token ids into the tables of a
    /// folded embedding. `None` when the kernels do not run these layers.
    fn run_fast<T: TableFloat>(
        &self,
        input: &SequenceInput,
        init: Option<&[Tensor]>,
        tokens: Option<(&[u32], &Folded)>,
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
        let tokens = match tokens {
            Some((ids, folded)) => match T::tables(&folded.tables) {
                Some(tables) => Some(Tokens { ids, tables }),
                None => return Ok(None),
            },
            None => None,
        };
        let (out, h_n, c_n) = run_kernel_layers(input, &packed, dirs, part(0), part(1), tokens)?;
        Ok(Some((out, vec![h_n, c_n])))
    }
}
