//! What [`Lstm`](super::Lstm), [`Gru`](super::Gru) and [`Rnn`](super::Rnn)
//! share: a stack of layers and directions run over a sequence, with the
//! user's initial states, on the CPU kernels when they apply and with Candle
//! ops otherwise.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::common::{
    self, fast_path_dtype, run_kernel_layers, run_layers, KernelFloat, Recurrence, RecurrentState,
    SequenceInput,
};

/// The sizes every stacked module's configuration has.
#[derive(Debug, Clone, Copy)]
pub(super) struct StackShape {
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
    /// Number of directions: 2 when bidirectional, else 1.
    pub(super) fn num_directions(&self) -> usize {
        common::num_directions(self.bidirectional)
    }

    /// Input feature size of layer `layer`: the input's, then the
    /// concatenated outputs of the previous layer's directions.
    pub(super) fn layer_input_size(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input_size
        } else {
            self.num_directions() * self.output_size
        }
    }
}

/// The layers of a stacked module, `layer * num_directions + direction` in
/// PyTorch's `h_n` order, and how to run them.
#[derive(Debug, Clone)]
pub(super) struct Stack<R> {
    shape: StackShape,
    layers: Vec<R>,
    device: Device,
}

impl<R: Recurrence> Stack<R> {
    /// Checks `shape` and loads every layer and direction with
    /// `load(vb, layer, suffix, input_size)` from the parameters named
    /// `..._l{layer}[_reverse]`.
    pub(super) fn load(
        shape: StackShape,
        vb: &VarBuilder,
        mut load: impl FnMut(&VarBuilder, &str, usize) -> Result<R>,
    ) -> Result<Self> {
        common::check_config(shape.kind, shape.hidden_size, shape.num_layers)?;
        let layers = common::load_layers(shape.num_layers, shape.bidirectional, |k, suffix| {
            load(vb, suffix, shape.layer_input_size(k))
        })?;
        Ok(Self {
            shape,
            layers,
            device: vb.device().clone(),
        })
    }

    /// The device the parameters live on.
    pub(super) fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the stack over `xs` (padded to `lengths` when given) from the
    /// initial states `init`, `N` parts in PyTorch's order, each named and
    /// of the feature size given by `parts` (`None` for zeros). Returns the
    /// output in the input's layout and the final states, part by part.
    pub(super) fn run<const N: usize>(
        &self,
        xs: &Tensor,
        lengths: Option<&[usize]>,
        init: Option<[&Tensor; N]>,
        parts: [(&str, usize); N],
    ) -> Result<(Tensor, [Tensor; N])> {
        let s = &self.shape;
        let input = SequenceInput::new(s.kind, xs, s.input_size, s.batch_first, lengths)?;
        let n = self.layers.len();
        let init = match init {
            Some(init) => {
                let named = std::array::from_fn::<_, N, _>(|i| (parts[i].0, init[i], parts[i].1));
                input.check_states(n, named)?;
                let batched = init.iter().map(|t| input.batched_state(t));
                Some(batched.collect::<Result<Vec<_>>>()?)
            }
            None => None,
        }; // N x (L*D, B, F)
        let fast = match fast_path_dtype(&input, self.device.is_cpu()) {
            Some(DType::F32) => self.run_fast::<f32>(&input, init.as_deref())?,
            Some(DType::F64) => self.run_fast::<f64>(&input, init.as_deref())?,
            _ => None,
        };
        let (out, finals) = match fast {
            Some(done) => done,
            None => self.run_generic(&input, init, parts.map(|(_, features)| features))?,
        };
        let finals = finals
            .iter()
            .take(N)
            .map(|part| input.final_state(part))
            .collect::<Result<Vec<_>>>()?;
        let finals = <[Tensor; N]>::try_from(finals)
            .map_err(|_| candle_core::Error::Msg(format!("{}: a state part is missing", s.kind)))?;
        Ok((input.output(out)?, finals))
    }

    /// [`Self::run`] with Candle ops, on any device and dtype: the last
    /// layer's output (T, B, D*H_out) and every layer-direction's final
    /// states, part by part.
    fn run_generic(
        &self,
        input: &SequenceInput,
        init: Option<Vec<Tensor>>,
        features: impl IntoIterator<Item = usize>,
    ) -> Result<(Tensor, Vec<Vec<Tensor>>)> {
        let n = self.layers.len();
        let init = match init {
            Some(init) => init,
            None => features
                .into_iter()
                .map(|f| input.zero_state(n, f))
                .collect::<Result<_>>()?,
        };
        let (out, finals) = run_layers(&self.layers, self.shape.bidirectional, input, |idx| {
            let parts = init.iter().map(|t| t.get(idx)).collect::<Result<_>>()?;
            R::State::from_parts(parts)
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
    /// of every direction, on weights packed once. `None` when the kernels
    /// do not run these layers.
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
        let dirs = self.shape.num_directions();
        let (out, h_n, c_n) = run_kernel_layers(input, &packed, dirs, part(0), part(1))?;
        Ok(Some((out, vec![h_n, c_n])))
    }
}
