//! Machinery shared by the recurrent layers: parameter loading, input layout
//! and state checks, padded-batch masks, and the layer, direction and time
//! loops.

use std::sync::{Arc, OnceLock};

use candle_core::{bail, DType, Result, Tensor, WithDType};
use candle_nn::VarBuilder;

use crate::host::with_elements;
use crate::kernel::{self, Float, PackedWeights, RecurrentShape, ShapeError, TokenTable};

/// One layer in one direction of a recurrent network (or a cell), split the
/// way the fast path needs it: an input projection computed for every step
/// at once, and a per-step update from the previous state.
pub trait Recurrence: Sized {
    /// What is carried from step to step.
    type State: RecurrentState;

    /// The same parameters in `dtype` (a cheap clone when they already are).
    fn to_dtype(&self, dtype: DType) -> Result<Self>;

    /// `x W_ih^T` plus the biases folded into it. (I, G*H)
    fn input(&self) -> &Affine;

    /// The input's contribution to the gates, folded biases included.
    /// (N, I) -> (N, G*H)
    fn project_input(&self, xs: &Tensor) -> Result<Tensor> {
        self.input().forward(xs)
    }

    /// One step from this step's projected input `xp` (B, G*H) and the
    /// previous state.
    fn step(&self, xp: &Tensor, state: &Self::State) -> Result<Self::State>;

    /// The weights packed for the CPU kernels of [`crate::kernel`] in `T`,
    /// or `None` when the kernels do not run this recurrence.
    fn packed<T: KernelFloat>(&self) -> Result<Option<Arc<PackedWeights<T>>>> {
        Ok(None)
    }
}

/// The state carried by a recurrence: `h`, or `(h, c)` for the LSTM.
pub trait RecurrentState: Sized {
    /// The state as `forward` takes it: `&Tensor`, or `(&Tensor, &Tensor)`.
    type Ref<'a>: Copy;

    /// The names of the parts of an initial state, for error messages.
    const NAMES: &'static [&'static str];

    /// The parts of a state passed to `forward`, in PyTorch's order.
    fn ref_parts<'a>(state: Self::Ref<'a>) -> Vec<&'a Tensor>;

    /// The hidden state, which is also the step's output. (B, H_out)
    fn hidden(&self) -> &Tensor;

    /// Row by row, `next` where `valid` (B, 1) is set and `prev` elsewhere.
    fn select(valid: &Tensor, next: Self, prev: Self) -> Result<Self>;

    /// From its parts in PyTorch's order (`h`, then `c`).
    fn from_parts(parts: Vec<Tensor>) -> Result<Self>;

    /// Its parts in PyTorch's order.
    fn into_parts(self) -> Vec<Tensor>;
}

impl RecurrentState for Tensor {
    type Ref<'a> = &'a Tensor;
    const NAMES: &'static [&'static str] = &["h0"];

    fn ref_parts<'a>(h: Self::Ref<'a>) -> Vec<&'a Tensor> {
        vec![h]
    }

    fn hidden(&self) -> &Tensor {
        self
    }

    fn from_parts(parts: Vec<Tensor>) -> Result<Self> {
        match <[Tensor; 1]>::try_from(parts) {
            Ok([h]) => Ok(h),
            Err(parts) => bail!("expected the state h, got {} tensors", parts.len()),
        }
    }

    fn into_parts(self) -> Vec<Tensor> {
        vec![self]
    }

    fn select(valid: &Tensor, next: Self, prev: Self) -> Result<Self> {
        valid.broadcast_as(next.shape())?.where_cond(&next, &prev)
    }
}

/// `(h, c)`.
impl RecurrentState for (Tensor, Tensor) {
    type Ref<'a> = (&'a Tensor, &'a Tensor);
    const NAMES: &'static [&'static str] = &["h0", "c0"];

    fn ref_parts<'a>((h, c): Self::Ref<'a>) -> Vec<&'a Tensor> {
        vec![h, c]
    }

    fn hidden(&self) -> &Tensor {
        &self.0
    }

    fn from_parts(parts: Vec<Tensor>) -> Result<Self> {
        match <[Tensor; 2]>::try_from(parts) {
            Ok([h, c]) => Ok((h, c)),
            Err(parts) => bail!("expected the states h and c, got {} tensors", parts.len()),
        }
    }

    fn into_parts(self) -> Vec<Tensor> {
        vec![self.0, self.1]
    }

    fn select(valid: &Tensor, next: Self, prev: Self) -> Result<Self> {
        Ok((
            <Tensor as RecurrentState>::select(valid, next.0, prev.0)?,
            <Tensor as RecurrentState>::select(valid, next.1, prev.1)?,
        ))
    }
}

/// `x W^T + b` with `W^T` stored contiguous, so a call is a single matmul.
#[derive(Debug, Clone)]
pub struct Affine {
    /// (in, out)
    w_t: Tensor,
    /// (out)
    b: Option<Tensor>,
}

impl Affine {
    /// From PyTorch's `(out, in)` weight and `(out)` bias.
    pub(super) fn new(w: &Tensor, b: Option<Tensor>) -> Result<Self> {
        Ok(Self {
            w_t: w.t()?.contiguous()?,
            b,
        })
    }

    /// (N, in) -> (N, out)
    pub(super) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = xs.matmul(&self.w_t)?;
        match &self.b {
            Some(b) => ys.broadcast_add(b),
            None => Ok(ys),
        }
    }

    pub(super) fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            w_t: self.w_t.to_dtype(dtype)?,
            b: self.b.as_ref().map(|b| b.to_dtype(dtype)).transpose()?,
        })
    }

    /// `W^T`. (in, out)
    pub(super) fn weight_t(&self) -> &Tensor {
        &self.w_t
    }

    /// `b`. (out)
    pub(super) fn bias(&self) -> Option<&Tensor> {
        self.b.as_ref()
    }
}

/// PyTorch's parameters of one layer and direction, or of a cell, as stored.
pub(super) struct TorchParams {
    /// `weight_ih`, (G*H, I)
    pub(super) w_ih: Tensor,
    /// `weight_hh`, (G*H, H_out)
    pub(super) w_hh: Tensor,
    /// `bias_ih` and `bias_hh`, (G*H) each.
    pub(super) biases: Option<(Tensor, Tensor)>,
}

impl TorchParams {
    /// Loads `weight_ih{suffix}`, `weight_hh{suffix}` and, with `bias`,
    /// `bias_ih{suffix}` and `bias_hh{suffix}`, with `rows = G*H`.
    pub(super) fn load(
        vb: &VarBuilder,
        suffix: &str,
        rows: usize,
        in_size: usize,
        hidden_in: usize,
        bias: bool,
    ) -> Result<Self> {
        let w_ih = vb.get((rows, in_size), &format!("weight_ih{suffix}"))?;
        let w_hh = vb.get((rows, hidden_in), &format!("weight_hh{suffix}"))?;
        let biases = if bias {
            Some((
                vb.get(rows, &format!("bias_ih{suffix}"))?,
                vb.get(rows, &format!("bias_hh{suffix}"))?,
            ))
        } else {
            None
        };
        Ok(Self { w_ih, w_hh, biases })
    }
}

/// Loads the layers of a stacked module in PyTorch's `h_n` order
/// (`layer * num_directions + direction`). `load(layer, suffix)` loads one
/// of them from the parameters named `..._l{layer}[_reverse]`.
pub(super) fn load_layers<R>(
    num_layers: usize,
    bidirectional: bool,
    mut load: impl FnMut(usize, &str) -> Result<R>,
) -> Result<Vec<R>> {
    let mut layers = Vec::with_capacity(num_layers * num_directions(bidirectional));
    for layer in 0..num_layers {
        layers.push(load(layer, &format!("_l{layer}"))?);
        if bidirectional {
            layers.push(load(layer, &format!("_l{layer}_reverse"))?);
        }
    }
    Ok(layers)
}

pub(super) fn num_directions(bidirectional: bool) -> usize {
    if bidirectional {
        2
    } else {
        1
    }
}

pub(super) fn check_config(kind: &str, hidden_size: usize, num_layers: usize) -> Result<()> {
    if hidden_size == 0 {
        bail!("{kind}: hidden_size must be positive");
    }
    if num_layers == 0 {
        bail!("{kind}: num_layers must be positive");
    }
    Ok(())
}

/// Checks user-provided states, each given as `(name, tensor, expected
/// shape)`, against their shapes and the input's dtype.
fn validate_states(kind: &str, xs: &Tensor, states: &[(&str, &Tensor, Vec<usize>)]) -> Result<()> {
    let describe = |part: fn(&Tensor, &[usize]) -> String| {
        let parts: Vec<String> = states
            .iter()
            .map(|(name, t, dims)| format!("{name} {}", part(t, dims)))
            .collect();
        parts.join(" and ")
    };
    if states.iter().any(|(_, t, dims)| t.dims() != dims) {
        bail!(
            "{kind}: expected {} for input {:?}, got {}",
            describe(|_, dims| format!("{dims:?}")),
            xs.dims(),
            describe(|t, _| format!("{:?}", t.dims())),
        );
    }
    if states.iter().any(|(_, t, _)| t.dtype() != xs.dtype()) {
        bail!(
            "{kind}: {} must have the input dtype {:?}",
            describe(|t, _| format!("({:?})", t.dtype())),
            xs.dtype()
        );
    }
    Ok(())
}

/// `t` with a batch axis of size 1 inserted at `axis` when `unbatched`.
fn with_batch_axis(t: &Tensor, unbatched: bool, axis: usize) -> Result<Tensor> {
    if unbatched {
        t.unsqueeze(axis)
    } else {
        Ok(t.clone())
    }
}

/// Which steps of a padded batch are real: sequence `b` covers the steps
/// `t < lengths[b]`.
pub(super) struct Padding {
    /// 1 at real steps, 0 at padding. (T, B, 1) u8 with T = max(lengths)
    valid: Tensor,
    /// `valid[t]` (B, 1) for the steps at which some sequence is padding,
    /// `None` where every sequence is real and nothing needs masking.
    masks: Vec<Option<Tensor>>,
}

impl Padding {
    /// Checks `lengths` against a batch of `batch` sequences of `t_len`
    /// steps, given as `xs`, and builds the masks on its device.
    fn new(kind: &str, lengths: &[usize], t_len: usize, batch: usize, xs: &Tensor) -> Result<Self> {
        if lengths.len() != batch {
            bail!(
                "{kind}: got {} lengths for a batch of {batch} sequences (input shape {:?})",
                lengths.len(),
                xs.dims()
            );
        }
        if lengths.iter().any(|&len| len == 0 || len > t_len) {
            bail!(
                "{kind}: every length must be in 1..={t_len} (input shape {:?}), got lengths {lengths:?}",
                xs.dims()
            );
        }
        let max_len = lengths.iter().copied().max().unwrap_or(0);
        let min_len = lengths.iter().copied().min().unwrap_or(0);
        let valid: Vec<u8> = (0..max_len)
            .flat_map(|t| lengths.iter().map(move |&len| u8::from(t < len)))
            .collect();
        let valid = Tensor::from_vec(valid, (max_len, batch, 1), xs.device())?;
        let masks = (0..max_len)
            .map(|t| (t >= min_len).then(|| valid.get(t)).transpose())
            .collect::<Result<_>>()?;
        Ok(Self { valid, masks })
    }

    /// The padded batch's time length, max(lengths).
    fn max_len(&self) -> usize {
        self.masks.len()
    }

    /// The mask of step `t`, when some sequence is padding there. (B, 1)
    pub(super) fn mask(&self, t: usize) -> Option<&Tensor> {
        self.masks.get(t).and_then(Option::as_ref)
    }

    /// Zeroes the padding positions of a time-major output. (T, B, F)
    fn zero_padding(&self, out: &Tensor) -> Result<Tensor> {
        if self.masks.iter().all(Option::is_none) {
            return Ok(out.clone());
        }
        self.valid
            .broadcast_as(out.shape())?
            .where_cond(out, &out.zeros_like()?)
    }
}

/// The input of a stacked module, checked and brought to time-major layout.
pub(super) struct SequenceInput {
    kind: &'static str,
    /// The input as given, for error messages and dtype checks.
    original: Tensor,
    /// (T, B, I), cut to max(lengths) for a padded batch.
    pub(super) xs: Tensor,
    batch_first: bool,
    unbatched: bool,
    pub(super) padding: Option<Padding>,
}

impl SequenceInput {
    /// Accepts `(T, B, I)`, `(B, T, I)` when `batch_first`, or unbatched
    /// `(T, I)`; a padded batch (`lengths`) must be batched.
    pub(super) fn new(
        kind: &'static str,
        xs: &Tensor,
        input_size: usize,
        batch_first: bool,
        lengths: Option<&[usize]>,
    ) -> Result<Self> {
        let layout = if batch_first { "B, T, I" } else { "T, B, I" };
        let (xs_tm, unbatched) = match *xs.dims() {
            [_, _] if lengths.is_some() => bail!(
                "{kind}: a padded batch must be batched ({layout}), got shape {:?}",
                xs.dims()
            ),
            [_, _] => (xs.unsqueeze(1)?, true),
            [_, _, _] if batch_first => (xs.transpose(0, 1)?, false),
            [_, _, _] => (xs.clone(), false),
            _ => bail!(
                "{kind}: expected input of rank 2 (T, I) or 3 ({layout}), got shape {:?}",
                xs.dims()
            ),
        };
        let (t_len, batch, in_size) = xs_tm.dims3()?;
        if in_size != input_size {
            bail!(
                "{kind}: input feature size {in_size} (input shape {:?}) does not match input_size {input_size}",
                xs.dims()
            );
        }
        if t_len == 0 {
            bail!(
                "{kind}: input has an empty time axis (shape {:?})",
                xs.dims()
            );
        }
        let (xs_tm, padding) = match lengths {
            None => (xs_tm, None),
            Some(lengths) => {
                let padding = Padding::new(kind, lengths, t_len, batch, xs)?;
                (xs_tm.narrow(0, 0, padding.max_len())?, Some(padding))
            }
        };
        Ok(Self {
            kind,
            original: xs.clone(),
            xs: xs_tm,
            batch_first,
            unbatched,
            padding,
        })
    }

    /// Checks the user's initial states, each `(name, tensor, features)`
    /// for `n` layer-directions: `(n, B, F)`, or `(n, F)` for unbatched
    /// input, in the input's dtype.
    pub(super) fn check_states(&self, n: usize, states: &[(&str, &Tensor, usize)]) -> Result<()> {
        let batch = self.xs.dim(1)?;
        let expected: Vec<_> = states
            .iter()
            .map(|&(name, t, features)| {
                let dims = if self.unbatched {
                    vec![n, features]
                } else {
                    vec![n, batch, features]
                };
                (name, t, dims)
            })
            .collect();
        validate_states(self.kind, &self.original, &expected)
    }

    /// A checked user state as (n, B, F).
    pub(super) fn batched_state(&self, state: &Tensor) -> Result<Tensor> {
        with_batch_axis(state, self.unbatched, 1)
    }

    /// An all-zero initial state. (n, B, F)
    pub(super) fn zero_state(&self, n: usize, features: usize) -> Result<Tensor> {
        Tensor::zeros(
            (n, self.xs.dim(1)?, features),
            self.xs.dtype(),
            self.xs.device(),
        )
    }

    /// Whether the input's layout is `(B, T, F)`: `xs` is then a transposed
    /// view of it, and the kernels read it as it is.
    pub(super) fn input_is_batch_first(&self) -> bool {
        self.batch_first && !self.unbatched
    }

    /// Whether the input's layout is `(B, T, F)` with nothing else for
    /// [`Self::output`] to do than transposing: the kernels then write the
    /// last layer's output batch first themselves, with no copy afterwards.
    pub(super) fn output_is_batch_first(&self) -> bool {
        self.input_is_batch_first() && self.padding.is_none()
    }

    /// Brings the last layer's output back to the input's layout, with
    /// zeros at padding positions. (T, B, F) -> input layout
    pub(super) fn output(&self, out: Tensor) -> Result<Tensor> {
        let out = match &self.padding {
            Some(padding) => padding.zero_padding(&out)?,
            None => out,
        };
        if self.unbatched {
            out.squeeze(1) // (T, F)
        } else if self.batch_first {
            out.transpose(0, 1)?.contiguous() // (B, T, F)
        } else {
            Ok(out)
        }
    }

    /// Stacks per-layer-direction final states. n x (B, F) -> (n, B, F),
    /// or (n, F) for unbatched input.
    pub(super) fn final_state(&self, states: &[Tensor]) -> Result<Tensor> {
        let stacked = Tensor::stack(states, 0)?;
        if self.unbatched {
            stacked.squeeze(1)
        } else {
            Ok(stacked)
        }
    }
}

/// The element type of the CPU kernel fast path for `input`: `Some(F32)` or
/// `Some(F64)` when the input is on the CPU in one of those dtypes, the
/// parameters live on the CPU too, and the run is plain; `None` when the
/// generic Candle-op path must run.
///
/// A run is plain when no step needs masking (no padding, or a padded batch
/// whose lengths are all equal, which is the same computation) and it has
/// more than one step. A single step stays on the generic path, the one the
/// cells use, so that a cell step and a length-1 run of the stacked module
/// agree bit for bit (the kernels' `f32` sigmoid and tanh are polynomial
/// approximations, and they accumulate products in another order).
pub(super) fn fast_path_dtype(input: &SequenceInput, params_on_cpu: bool) -> Option<DType> {
    let dtype = input.xs.dtype();
    let unmasked = input
        .padding
        .as_ref()
        .is_none_or(|p| p.masks.iter().all(Option::is_none));
    let eligible = params_on_cpu
        && unmasked
        && input.xs.dim(0).is_ok_and(|t| t > 1)
        && input.xs.device().is_cpu()
        && matches!(dtype, DType::F32 | DType::F64);
    eligible.then_some(dtype)
}

/// The element types of the CPU kernels, with their slot in a [`PackedCache`].
pub trait KernelFloat: Float + WithDType {
    fn slot(cache: &PackedCache) -> &OnceLock<Arc<PackedWeights<Self>>>;
}

impl KernelFloat for f32 {
    fn slot(cache: &PackedCache) -> &OnceLock<Arc<PackedWeights<f32>>> {
        &cache.f32
    }
}

impl KernelFloat for f64 {
    fn slot(cache: &PackedCache) -> &OnceLock<Arc<PackedWeights<f64>>> {
        &cache.f64
    }
}

/// A layer's weights packed for the CPU kernels, per element type, packed
/// on first use and shared by clones of the layer.
#[derive(Debug, Clone, Default)]
pub struct PackedCache {
    f32: OnceLock<Arc<PackedWeights<f32>>>,
    f64: OnceLock<Arc<PackedWeights<f64>>>,
}

impl PackedCache {
    /// The packed weights for `T`; the first time, `pack` packs them from
    /// the gate matrices `input` and `w_hh_t` copied to the host.
    pub(super) fn get_or_pack<T: KernelFloat>(
        &self,
        input: &Affine,
        w_hh_t: &Tensor,
        pack: impl FnOnce(HostGates<T>) -> Result<PackedWeights<T>>,
    ) -> Result<Option<Arc<PackedWeights<T>>>> {
        let slot = T::slot(self);
        if let Some(packed) = slot.get() {
            return Ok(Some(packed.clone()));
        }
        let packed = Arc::new(pack(HostGates::new(input, w_hh_t)?)?);
        // A concurrent first call may have won; both packed the same weights.
        Ok(Some(slot.get_or_init(|| packed).clone()))
    }
}

impl From<ShapeError> for candle_core::Error {
    fn from(e: ShapeError) -> Self {
        candle_core::Error::wrap(e)
    }
}

/// The elements of `t` in `T` (converted from its dtype), as a flat vector.
pub(super) fn host_vec<T: KernelFloat>(t: &Tensor) -> Result<Vec<T>> {
    t.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()
}

/// [`host_vec`] of an optional tensor.
pub(super) fn host_opt<T: KernelFloat>(t: Option<&Tensor>) -> Result<Option<Vec<T>>> {
    t.map(host_vec::<T>).transpose()
}

/// An optional tensor in `dtype`.
pub(super) fn opt_to_dtype(t: Option<&Tensor>, dtype: DType) -> Result<Option<Tensor>> {
    t.map(|t| t.to_dtype(dtype)).transpose()
}

/// The gate matrices of a layer on the host in `T`, as the kernels'
/// weights take them: `W_ih^T` (I, G*H) and the biases folded into the
/// input projection, and `W_hh^T`.
pub(super) struct HostGates<T> {
    /// `I`.
    pub(super) in_size: usize,
    pub(super) w_ih_t: Vec<T>,
    pub(super) w_hh_t: Vec<T>,
    /// The input projection's bias. (G*H)
    pub(super) bias: Option<Vec<T>>,
}

impl<T: KernelFloat> HostGates<T> {
    fn new(input: &Affine, w_hh_t: &Tensor) -> Result<Self> {
        Ok(Self {
            in_size: input.weight_t().dim(0)?,
            w_ih_t: host_vec::<T>(input.weight_t())?,
            w_hh_t: host_vec::<T>(w_hh_t)?,
            bias: host_opt::<T>(input.bias())?,
        })
    }
}

/// `state[idx]` (B, F) copied out as a flat vector, for the kernels' `h0`
/// and `c0`.
fn state_vec<T: WithDType>(state: Option<&Tensor>, idx: usize) -> Result<Option<Vec<T>>> {
    state
        .map(|s| s.get(idx)?.flatten_all()?.to_vec1::<T>())
        .transpose()
}

/// Runs a stack of layers on the CPU kernels of [`crate::kernel`], for a
/// plain run (see [`fast_path_dtype`]) in `T`.
///
/// `layers` holds `num_layers * dirs` packed layer-directions in PyTorch's
/// `h_n` order; `h0` (L*D, B, H_out) and `c0` (L*D, B, H) are the checked
/// initial states, `None` for zeros. Each layer, input projection included,
/// is one kernel call; layer `k > 0` reads layer `k - 1`'s output buffer
/// directly. With `tokens`, the first layer reads token ids into the tables
/// of a folded embedding instead of `input`'s elements (`input` then only
/// gives the shape and layout). Returns the last layer's output in the
/// input's layout (as [`SequenceInput::output`] gives it), and the final `h`
/// and (LSTM) `c` of every layer and direction in `h_n` order.
pub(super) fn run_kernel_layers<T: KernelFloat>(
    input: &SequenceInput,
    layers: &[Arc<PackedWeights<T>>],
    dirs: usize,
    h0: Option<&Tensor>,
    c0: Option<&Tensor>,
    tokens: Option<Tokens<'_, T>>,
) -> Result<(Tensor, Vec<Tensor>, Vec<Tensor>)> {
    let (t_len, batch, _) = input.xs.dims3()?;
    let device = input.xs.device();
    let batch_first_out = input.output_is_batch_first();
    // A batch-first input is read in its own layout, with no transposing
    // copy (one is still made when it is itself a strided view, e.g. of a
    // channels-first tensor).
    let batch_first_in = input.input_is_batch_first();
    let run = |first: First<'_, T>| {
        kernel_layers(
            first,
            t_len,
            batch,
            (batch_first_in, batch_first_out),
            device,
            layers,
            dirs,
            h0,
            c0,
        )
    };
    let (out, h_n, c_n) = match tokens {
        Some(tokens) => run(First::Tokens(tokens))?,
        None => {
            let x = if batch_first_in {
                input.xs.transpose(0, 1)?
            } else {
                input.xs.clone()
            };
            with_elements::<T, _>(&x, |x0| run(First::Features(x0)))??
        }
    };
    let out = if batch_first_out {
        out
    } else {
        input.output(out)?
    };
    Ok((out, h_n, c_n))
}

/// The input of an embedding folded into the first layer: the token ids in
/// the input's layout, and the first layer's table for each direction.
#[derive(Clone, Copy)]
pub(super) struct Tokens<'a, T> {
    pub(super) ids: &'a [u32],
    pub(super) tables: &'a [TokenTable<T>],
}

/// What the first layer reads.
#[derive(Clone, Copy)]
enum First<'a, T> {
    /// The input's elements, (T, B, I), or (B, T, I) if batch first.
    Features(&'a [T]),
    /// Token ids, (T, B) or (B, T), into the tables of a folded embedding.
    Tokens(Tokens<'a, T>),
}

/// [`run_kernel_layers`] on the first layer's input `first`: the last
/// layer's output (T, B, D*H_out), or (B, T, D*H_out) if `batch_first_out`.
#[allow(clippy::too_many_arguments)]
fn kernel_layers<T: KernelFloat>(
    first: First<'_, T>,
    t_len: usize,
    batch: usize,
    (batch_first_in, batch_first_out): (bool, bool),
    device: &candle_core::Device,
    layers: &[Arc<PackedWeights<T>>],
    dirs: usize,
    h0: Option<&Tensor>,
    c0: Option<&Tensor>,
) -> Result<(Tensor, Vec<Tensor>, Vec<Tensor>)> {
    let last = layers.len().div_ceil(dirs.max(1)).saturating_sub(1);
    let threads = kernel::default_threads();
    let mut prev: Option<(Vec<T>, usize)> = None; // (T, B, D*H_out) and its width
    let (mut h_n, mut c_n) = (Vec::with_capacity(layers.len()), Vec::new());
    for (layer, weights) in layers.chunks(dirs).enumerate() {
        let (h, h_out) = (weights[0].hidden_size(), weights[0].output_size());
        let lstm = weights[0].is_lstm();
        let init = (0..dirs)
            .map(|dir| {
                let idx = layer * dirs + dir;
                Ok((state_vec::<T>(h0, idx)?, state_vec::<T>(c0, idx)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let kernel_dirs: Vec<_> = weights
            .iter()
            .zip(&init)
            .enumerate()
            .map(|(dir, (w, (h0, c0)))| kernel::Direction {
                weights: w,
                h0: h0.as_deref(),
                c0: c0.as_deref(),
                reverse: dir == 1,
            })
            .collect();
        let mut out = vec![T::ZERO; t_len * batch * dirs * h_out];
        let mut hn = vec![T::ZERO; dirs * batch * h_out];
        let mut cn = vec![T::ZERO; if lstm { dirs * batch * h } else { 0 }];
        let shape = RecurrentShape {
            steps: t_len,
            batch,
            batch_first_in: batch_first_in && layer == 0,
            batch_first_out: batch_first_out && layer == last,
        };
        let c_out = lstm.then_some(&mut cn[..]);
        let input = match &prev {
            Some((x, _)) => First::Features(x.as_slice()),
            None => first,
        };
        let done = match input {
            First::Features(x) => {
                kernel::recurrent_layer(shape, x, &kernel_dirs, &mut out, &mut hn, c_out, threads)
            }
            First::Tokens(Tokens { ids, tables }) => {
                let tables: Vec<_> = tables.iter().collect();
                kernel::recurrent_layer_from_tokens(
                    shape,
                    ids,
                    &kernel_dirs,
                    &tables,
                    &mut out,
                    &mut hn,
                    c_out,
                    threads,
                )
            }
        };
        done.map_err(candle_core::Error::wrap)?;
        let hn = Tensor::from_vec(hn, (dirs, batch, h_out), device)?;
        for dir in 0..dirs {
            h_n.push(hn.get(dir)?);
        }
        if lstm {
            let cn = Tensor::from_vec(cn, (dirs, batch, h), device)?;
            for dir in 0..dirs {
                c_n.push(cn.get(dir)?);
            }
        }
        prev = Some((out, dirs * h_out));
    }
    let Some((out, width)) = prev else {
        bail!("recurrent fast path: no layers")
    };
    let out = if batch_first_out {
        Tensor::from_vec(out, (batch, t_len, width), device)?
    } else {
        Tensor::from_vec(out, (t_len, batch, width), device)?
    };
    Ok((out, h_n, c_n))
}

/// Runs a stack of layers over `input`.
///
/// `layers` holds `num_layers * num_directions` recurrences in PyTorch's
/// `h_n` order; `init(idx)` gives the initial state of `layers[idx]`. Layer
/// `k > 0` reads the concatenated outputs of both directions of layer
/// `k - 1`. Returns the last layer's output (T, B, D*H_out) and the final
/// state of every layer and direction, in `h_n` order.
pub(super) fn run_layers<R: Recurrence>(
    layers: &[R],
    bidirectional: bool,
    input: &SequenceInput,
    init: impl Fn(usize) -> Result<R::State>,
) -> Result<(Tensor, Vec<R::State>)> {
    let dirs = num_directions(bidirectional);
    let (t_len, batch, _) = input.xs.dims3()?;
    let dtype = input.xs.dtype();
    let mut layer_in = input.xs.clone(); // (T, B, I_k)
    let mut finals = Vec::with_capacity(layers.len());
    for (layer, directions) in layers.chunks(dirs).enumerate() {
        let x2d = layer_in.reshape((t_len * batch, ()))?; // (T*B, I_k)
        let mut outs = Vec::with_capacity(dirs);
        for (dir, recurrence) in directions.iter().enumerate() {
            let recurrence = recurrence.to_dtype(dtype)?;
            let xp = recurrence
                .project_input(&x2d)?
                .reshape((t_len, batch, ()))?; // (T, B, G*H)
            let init = init(layer * dirs + dir)?;
            let reverse = dir == 1;
            let (out, last) = run_direction(&recurrence, &xp, init, reverse, input)?;
            outs.push(out);
            finals.push(last);
        }
        layer_in = if outs.len() == 1 {
            outs.swap_remove(0)
        } else {
            Tensor::cat(&outs, 2)? // (T, B, D*H_out)
        };
    }
    Ok((layer_in, finals))
}

/// Runs one direction over the projected inputs `xp` (T, B, G*H). Returns
/// the outputs in time order (T, B, H_out) and the final state.
///
/// In a padded batch, a sequence keeps its state at the steps past its end:
/// going forward, its state freezes after its last real step; going
/// backward, it stays at the initial state until its last real step. The
/// outputs at those steps are zeroed later, once for the whole stack.
fn run_direction<R: Recurrence>(
    recurrence: &R,
    xp: &Tensor,
    mut state: R::State,
    reverse: bool,
    input: &SequenceInput,
) -> Result<(Tensor, R::State)> {
    let t_len = xp.dim(0)?;
    let mut outs = Vec::with_capacity(t_len);
    for step in 0..t_len {
        let t = if reverse { t_len - 1 - step } else { step };
        let next = recurrence.step(&xp.get(t)?, &state)?;
        state = match input.padding.as_ref().and_then(|p| p.mask(t)) {
            Some(valid) => R::State::select(valid, next, state)?,
            None => next,
        };
        outs.push(state.hidden().clone());
    }
    if reverse {
        outs.reverse();
    }
    Ok((Tensor::stack(&outs, 0)?, state))
}

/// The input of a cell, checked and brought to `(B, I)`.
pub(super) struct CellInput {
    kind: &'static str,
    /// The input as given, for error messages and dtype checks.
    original: Tensor,
    /// (B, I)
    pub(super) xs: Tensor,
    unbatched: bool,
}

impl CellInput {
    /// Accepts `(B, I)` or unbatched `(I)`.
    pub(super) fn new(kind: &'static str, xs: &Tensor, input_size: usize) -> Result<Self> {
        let (batched, unbatched) = match xs.rank() {
            1 => (xs.unsqueeze(0)?, true),
            2 => (xs.clone(), false),
            _ => bail!(
                "{kind}: expected input of rank 1 (I) or 2 (B, I), got shape {:?}",
                xs.dims()
            ),
        };
        let in_size = batched.dim(1)?;
        if in_size != input_size {
            bail!(
                "{kind}: input feature size {in_size} (input shape {:?}) does not match input_size {input_size}",
                xs.dims()
            );
        }
        Ok(Self {
            kind,
            original: xs.clone(),
            xs: batched,
            unbatched,
        })
    }

    /// Checks the user's states, each `(name, tensor)`: `(B, H)`, or `(H)`
    /// for unbatched input, in the input's dtype.
    pub(super) fn check_states(
        &self,
        hidden_size: usize,
        states: &[(&str, &Tensor)],
    ) -> Result<()> {
        let dims = if self.unbatched {
            vec![hidden_size]
        } else {
            vec![self.xs.dim(0)?, hidden_size]
        };
        let expected: Vec<_> = states
            .iter()
            .map(|&(name, t)| (name, t, dims.clone()))
            .collect();
        validate_states(self.kind, &self.original, &expected)
    }

    /// A checked user state as (B, H).
    pub(super) fn batched_state(&self, state: &Tensor) -> Result<Tensor> {
        with_batch_axis(state, self.unbatched, 0)
    }

    /// An all-zero state. (B, H)
    pub(super) fn zero_state(&self, hidden_size: usize) -> Result<Tensor> {
        Tensor::zeros(
            (self.xs.dim(0)?, hidden_size),
            self.xs.dtype(),
            self.xs.device(),
        )
    }

    /// Drops the batch axis again for unbatched input. (B, H) -> input layout
    pub(super) fn output(&self, h: Tensor) -> Result<Tensor> {
        if self.unbatched {
            h.squeeze(0)
        } else {
            Ok(h)
        }
    }
}
