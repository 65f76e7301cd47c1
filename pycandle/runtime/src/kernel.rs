//! Direct CPU kernels for recurrent layers.
//!
//! A recurrent layer spends its time in a strictly sequential loop: every step
//! multiplies the previous hidden state by `W_hh^T` and applies a handful of
//! elementwise gate operations. Expressed with generic tensor ops, each step
//! pays for several small allocations, kernel launches and thread-pool round
//! trips, which dominate at the sizes speech and audio models use. The
//! functions here run a whole layer on plain contiguous buffers instead:
//!
//! * the weights of each direction are packed once ([`PackedWeights`]) into
//!   panels that hold the gates of one block of hidden units side by side,
//!   so that any contiguous range of units is one contiguous range of
//!   memory, read linearly by a register-blocked micro-kernel (AVX2 + FMA
//!   intrinsics on x86-64);
//! * the input projection `x W_ih^T + b` is computed inside the layer, for a
//!   chunk of steps at a time, by the threads that then run those steps, each
//!   for its own units: it needs no synchronisation and the chunk stays in
//!   cache;
//! * each step does one small matrix product in place on the chunk's
//!   pre-activations, followed by the gate loop, without allocating. For
//!   batch 1 the product is bound by reading the weights: the matrix-vector
//!   product reads every panel row once, with up to 8 vector accumulators;
//! * the directions of a bidirectional layer run concurrently, and a single
//!   direction can be split by hidden units over a small team of threads
//!   that meet at a spinning barrier once per step (twice with a
//!   projection) and exchange `h` through shared buffers. The other
//!   directions and team members run as tasks of Rayon's pool (the one
//!   Candle uses), whose threads persist between calls: a freshly spawned
//!   thread often waits for the spawning thread's core. The calling thread
//!   projects its share of the first chunk while the other members start;
//!   members that take too long to start are sent away (and a direction no
//!   pool thread has started when the calling thread is done runs on it),
//!   and a team whose members stall or fall behind (an oversubscribed
//!   machine) dissolves: the calling thread finishes alone.
//!
//! The kernels take the weights as PyTorch holds them, transposed to
//! `(in, gates * H)` with PyTorch's gate order, and the input and outputs
//! time-major `(T, B, F)`, with the directions concatenated on the last axis
//! of the output, exactly like the `output`, `h_n` (and `c_n`) of
//! `torch.nn.LSTM` / `torch.nn.GRU`.
//!
//! On x86-64 CPUs with AVX2 and FMA the hot loops are compiled a second time
//! with those features and selected at run time; elsewhere portable Rust
//! runs. For `f32`, `sigmoid` and `tanh` use branch-free polynomial
//! approximations (within about 2e-7 of the exact values) so that the gate
//! loop vectorises; `f64` uses the standard library functions. Products are
//! accumulated in a different order than a BLAS would, so results match
//! PyTorch to rounding, not bit for bit.

mod affinity;
mod gates;
mod product;
mod task;
#[cfg(test)]
mod tests;

use std::error::Error;
use std::fmt;
use std::ops::{Add, Div, Mul, Range, Sub};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use affinity::AvoidCpu;
use gates::{gru_block, lstm_row};
use product::{gate_vector, mul_acc, Panels, UNITS};
use task::Task;

mod private {
    /// Seals [`Float`](super::Float) and carries its per-type plumbing.
    pub trait Sealed: Sized {
        /// The atomic type with the bits of `Self`, for the buffers team
        /// members share.
        type Atomic: Send + Sync;
        fn new_atomic(v: Self) -> Self::Atomic;
        fn load(a: &Self::Atomic) -> Self;
        fn store(a: &Self::Atomic, v: Self);

        /// The logistic function on `v[..s]` and `tanh` on `v[s..]`, in
        /// lockstep (see the `gates` module).
        fn activate<const FMA: bool, const N: usize>(v: &mut [Self; N], s: usize);

        /// Rows per micro-tile of the many-row product (12 accumulators).
        const TILE_ROWS: usize;
        /// Elements per AVX register.
        const LANES: usize;

        /// The AVX2 + FMA micro-kernel: `rows x vecs` registers of
        /// accumulators (see `product::tile`).
        ///
        /// # Safety
        ///
        /// The CPU supports AVX2 and FMA, and every index the tile touches
        /// is in bounds.
        #[cfg(target_arch = "x86_64")]
        unsafe fn tile_avx2(
            rows: usize,
            vecs: usize,
            dst: *mut Self,
            lhs: *const Self,
            w: *const Self,
            s: Strides,
        );
    }

    /// The strides and depth of one micro-tile (see `product::tile`).
    #[derive(Debug, Clone, Copy)]
    pub struct Strides {
        /// Between rows of the destination.
        pub dst_rs: usize,
        /// Between the 16-column sub-panels of the weights.
        pub w_sub: usize,
        /// Depth of the product.
        pub depth: usize,
    }
}

/// The element types the kernels support: `f32` and `f64`.
pub trait Float:
    private::Sealed
    + Copy
    + Default
    + PartialOrd
    + Send
    + Sync
    + fmt::Debug
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
{
    /// Additive identity.
    const ZERO: Self;
    /// Multiplicative identity.
    const ONE: Self;

    /// `a * b + c`, as one fused instruction when `FMA` is set (only used in
    /// code compiled with the `fma` target feature).
    fn madd<const FMA: bool>(a: Self, b: Self, c: Self) -> Self;

    /// The logistic function `1 / (1 + exp(-x))`.
    fn sigmoid(x: Self) -> Self;

    /// The hyperbolic tangent.
    fn tanh(x: Self) -> Self;
}

impl private::Sealed for f32 {
    type Atomic = AtomicU32;
    fn new_atomic(v: Self) -> AtomicU32 {
        AtomicU32::new(v.to_bits())
    }
    #[inline(always)]
    fn load(a: &AtomicU32) -> Self {
        f32::from_bits(a.load(Ordering::Relaxed))
    }
    #[inline(always)]
    fn store(a: &AtomicU32, v: Self) {
        a.store(v.to_bits(), Ordering::Relaxed)
    }

    #[inline(always)]
    fn activate<const FMA: bool, const N: usize>(v: &mut [Self; N], s: usize) {
        gates::activate_f32::<FMA, N>(v, s)
    }

    const TILE_ROWS: usize = 6;
    const LANES: usize = 8;

    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_avx2(
        rows: usize,
        vecs: usize,
        dst: *mut Self,
        lhs: *const Self,
        w: *const Self,
        s: private::Strides,
    ) {
        // SAFETY: the caller's contract.
        unsafe { product::x86::dispatch(rows, vecs, dst, lhs, w, s) }
    }
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;

    #[inline(always)]
    fn madd<const FMA: bool>(a: Self, b: Self, c: Self) -> Self {
        if FMA {
            a.mul_add(b, c)
        } else {
            a * b + c
        }
    }

    #[inline(always)]
    fn sigmoid(x: Self) -> Self {
        gates::sigmoid_f32::<false>(x)
    }

    #[inline(always)]
    fn tanh(x: Self) -> Self {
        gates::tanh_f32::<false>(x)
    }
}

impl private::Sealed for f64 {
    type Atomic = AtomicU64;
    fn new_atomic(v: Self) -> AtomicU64 {
        AtomicU64::new(v.to_bits())
    }
    #[inline(always)]
    fn load(a: &AtomicU64) -> Self {
        f64::from_bits(a.load(Ordering::Relaxed))
    }
    #[inline(always)]
    fn store(a: &AtomicU64, v: Self) {
        a.store(v.to_bits(), Ordering::Relaxed)
    }

    #[inline(always)]
    fn activate<const FMA: bool, const N: usize>(v: &mut [Self; N], s: usize) {
        gates::activate_f64::<N>(v, s)
    }

    const TILE_ROWS: usize = 3;
    const LANES: usize = 4;

    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_avx2(
        rows: usize,
        vecs: usize,
        dst: *mut Self,
        lhs: *const Self,
        w: *const Self,
        s: private::Strides,
    ) {
        // SAFETY: the caller's contract.
        unsafe { product::x86::dispatch(rows, vecs, dst, lhs, w, s) }
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;

    #[inline(always)]
    fn madd<const FMA: bool>(a: Self, b: Self, c: Self) -> Self {
        if FMA {
            a.mul_add(b, c)
        } else {
            a * b + c
        }
    }

    #[inline(always)]
    fn sigmoid(x: Self) -> Self {
        1.0 / (1.0 + (-x).exp())
    }

    #[inline(always)]
    fn tanh(x: Self) -> Self {
        x.tanh()
    }
}

/// A buffer whose length does not match the shape it was passed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError(String);

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for ShapeError {}

fn check_len<T>(what: &str, buf: &[T], expected: usize) -> Result<(), ShapeError> {
    if buf.len() == expected {
        Ok(())
    } else {
        Err(ShapeError(format!(
            "recurrent kernel: {what} has {} elements, expected {expected}",
            buf.len()
        )))
    }
}

/// The number of threads Candle's CPU backend uses: `RAYON_NUM_THREADS`
/// when set, else the available parallelism.
pub fn default_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

// ---------------------------------------------------------------------------
// Weights

/// The cell a [`PackedWeights`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CellKind {
    Lstm,
    Gru,
}

/// The parameters of one direction of an LSTM layer, as slices of PyTorch's
/// tensors (weights transposed), for [`PackedWeights::lstm`].
///
/// With `H` the hidden size, `I` the input size and `H_out` the size of `h`
/// (`H`, or the projection size with `w_hr_t`); gates in PyTorch's order
/// `i, f, g, o`.
#[derive(Debug, Clone, Copy)]
pub struct LstmWeights<'a, T> {
    /// `W_ih^T`, row-major `(I, 4H)`.
    pub w_ih_t: &'a [T],
    /// `W_hh^T`, row-major `(H_out, 4H)`.
    pub w_hh_t: &'a [T],
    /// `b_ih`, `(4H)`; `None` for zeros.
    pub b_ih: Option<&'a [T]>,
    /// `b_hh`, `(4H)`; `None` for zeros.
    pub b_hh: Option<&'a [T]>,
    /// `W_hr^T`, row-major `(H, H_out)`, when the layer projects `h`.
    pub w_hr_t: Option<&'a [T]>,
}

/// The parameters of one direction of a GRU layer, as slices of PyTorch's
/// tensors (weights transposed), for [`PackedWeights::gru`]; gates in
/// PyTorch's order `r, z, n`.
#[derive(Debug, Clone, Copy)]
pub struct GruWeights<'a, T> {
    /// `W_ih^T`, row-major `(I, 3H)`.
    pub w_ih_t: &'a [T],
    /// `W_hh^T`, row-major `(H, 3H)`.
    pub w_hh_t: &'a [T],
    /// `b_ih`, `(3H)`; `None` for zeros.
    pub b_ih: Option<&'a [T]>,
    /// `b_hh`, `(3H)`; `None` for zeros.
    pub b_hh: Option<&'a [T]>,
}

/// The parameters of one direction of a recurrent layer, packed for the
/// kernels (see the module documentation). Packing copies the weights once;
/// keep the result for as long as the weights do not change.
///
/// The biases are folded where the math allows: the LSTM adds `b_ih + b_hh`
/// to the input projection, the GRU adds `b_ih` and the `r`, `z` parts of
/// `b_hh` there and keeps `b_hn`, which the reset gate multiplies, apart.
#[derive(Debug, Clone)]
pub struct PackedWeights<T> {
    cell: CellKind,
    input: usize,
    hidden: usize,
    h_out: usize,
    w_ih: Panels<T>,
    w_hh: Panels<T>,
    /// Added to the input projection, in panel order.
    x_bias: Vec<T>,
    /// GRU: `[0, 0, b_hn]` in panel order, added to `h W_hh^T`.
    h_bias: Option<Vec<T>>,
    /// `W_hr^T` in panels of 16 columns.
    w_hr: Option<Panels<T>>,
}

/// The kernels' order of the LSTM gates in a block of units, as indices
/// into PyTorch's `i, f, g, o`: the three logistic gates side by side, then
/// the candidate.
const LSTM_GATES: [usize; 4] = [0, 1, 3, 2];
/// The GRU gates keep PyTorch's order `r, z, n`.
const GRU_GATES: [usize; 3] = [0, 1, 2];

/// `a + b`, either of which may be missing.
fn sum<T: Float>(a: Option<&[T]>, b: Option<&[T]>) -> Option<Vec<T>> {
    match (a, b) {
        (None, None) => None,
        (Some(v), None) | (None, Some(v)) => Some(v.to_vec()),
        (Some(a), Some(b)) => Some(a.iter().zip(b).map(|(&a, &b)| a + b).collect()),
    }
}

impl<T: Float> PackedWeights<T> {
    /// Packs one direction of an LSTM layer with `input` features and
    /// `hidden` units.
    pub fn lstm(input: usize, hidden: usize, w: LstmWeights<'_, T>) -> Result<Self, ShapeError> {
        if hidden == 0 {
            return Err(ShapeError(
                "recurrent kernel: the hidden size must be positive".into(),
            ));
        }
        let h_out = match w.w_hr_t {
            Some(w_hr) if !w_hr.is_empty() && w_hr.len() % hidden == 0 => w_hr.len() / hidden,
            Some(w_hr) => {
                return Err(ShapeError(format!(
                    "recurrent kernel: w_hr_t has {} elements, not a positive multiple of hidden ({hidden})",
                    w_hr.len()
                )))
            }
            None => hidden,
        };
        check_len("w_ih_t", w.w_ih_t, input * 4 * hidden)?;
        check_len("w_hh_t", w.w_hh_t, h_out * 4 * hidden)?;
        for b in [w.b_ih, w.b_hh].into_iter().flatten() {
            check_len("b_ih/b_hh", b, 4 * hidden)?;
        }
        let bias = sum(w.b_ih, w.b_hh);
        Ok(Self {
            cell: CellKind::Lstm,
            input,
            hidden,
            h_out,
            w_ih: Panels::gates(w.w_ih_t, input, &LSTM_GATES, hidden),
            w_hh: Panels::gates(w.w_hh_t, h_out, &LSTM_GATES, hidden),
            x_bias: gate_vector(bias.as_deref(), &LSTM_GATES, hidden),
            h_bias: None,
            w_hr: w.w_hr_t.map(|w_hr| Panels::plain(w_hr, hidden, h_out)),
        })
    }

    /// Packs one direction of a GRU layer with `input` features and
    /// `hidden` units.
    pub fn gru(input: usize, hidden: usize, w: GruWeights<'_, T>) -> Result<Self, ShapeError> {
        if hidden == 0 {
            return Err(ShapeError(
                "recurrent kernel: the hidden size must be positive".into(),
            ));
        }
        check_len("w_ih_t", w.w_ih_t, input * 3 * hidden)?;
        check_len("w_hh_t", w.w_hh_t, hidden * 3 * hidden)?;
        for b in [w.b_ih, w.b_hh].into_iter().flatten() {
            check_len("b_ih/b_hh", b, 3 * hidden)?;
        }
        // b_hr and b_hz join the input projection; b_hn stays with h W_hn^T.
        let (b_rz, b_n) = match w.b_hh {
            Some(b) => {
                let mut rz = b.to_vec();
                rz[2 * hidden..].fill(T::ZERO);
                let mut n = b.to_vec();
                n[..2 * hidden].fill(T::ZERO);
                (Some(rz), Some(n))
            }
            None => (None, None),
        };
        let x_bias = sum(w.b_ih, b_rz.as_deref());
        Ok(Self {
            cell: CellKind::Gru,
            input,
            hidden,
            h_out: hidden,
            w_ih: Panels::gates(w.w_ih_t, input, &GRU_GATES, hidden),
            w_hh: Panels::gates(w.w_hh_t, hidden, &GRU_GATES, hidden),
            x_bias: gate_vector(x_bias.as_deref(), &GRU_GATES, hidden),
            h_bias: b_n.map(|b| gate_vector(Some(&b), &GRU_GATES, hidden)),
            w_hr: None,
        })
    }

    /// Number of input features `I`.
    pub fn input_size(&self) -> usize {
        self.input
    }

    /// Number of hidden units `H` (the cell state size of an LSTM).
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Number of features of `h`: `H`, or the projection size.
    pub fn output_size(&self) -> usize {
        self.h_out
    }

    /// Whether these are LSTM weights (else GRU).
    pub fn is_lstm(&self) -> bool {
        self.cell == CellKind::Lstm
    }

    fn gates(&self) -> usize {
        match self.cell {
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }
}

// ---------------------------------------------------------------------------
// Layers

/// Sizes of one run of a recurrent layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecurrentShape {
    /// Number of timesteps `T`.
    pub steps: usize,
    /// Batch size `B`.
    pub batch: usize,
}

/// One direction of a recurrent layer: its weights and initial state.
#[derive(Debug, Clone, Copy)]
pub struct Direction<'a, T> {
    /// The direction's parameters.
    pub weights: &'a PackedWeights<T>,
    /// Initial hidden state `(B, H_out)`; `None` means zeros.
    pub h0: Option<&'a [T]>,
    /// Initial cell state `(B, H)` of an LSTM; `None` means zeros.
    pub c0: Option<&'a [T]>,
    /// Walk the sequence from the last step to the first.
    pub reverse: bool,
}

/// Runs one recurrent layer (LSTM or GRU, one or two directions) over the
/// input `x`, `(T, B, I)`.
///
/// * `dirs`: one [`Direction`] per direction, forward first (PyTorch's
///   order); all must have the same cell, sizes and input size.
/// * `out`: `(T, B, D * H_out)`, the directions concatenated on the last
///   axis like the `output` of `torch.nn.LSTM` / `torch.nn.GRU`.
/// * `h_n`: `(D, B, H_out)`, the final states (for a reverse direction,
///   after consuming step 0); `c_n`: `(D, B, H)` for an LSTM, `None` for a
///   GRU.
/// * `threads`: how many threads the call may use, including the caller's
///   (e.g. [`default_threads`]); the others are tasks of Rayon's global pool.
///   Directions run concurrently when there are at least as many threads as
///   directions; spare threads split a direction's hidden units when the
///   step is large enough to pay for the per-step synchronisation.
///
/// Per step and direction, for an LSTM:
///
/// ```text
/// i, f, g, o = split(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
/// c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
/// h_t = (sigmoid(o) * tanh(c_t)) [W_hr^T]
/// ```
///
/// and for a GRU:
///
/// ```text
/// xr, xz, xn = split(x_t W_ih^T + b_ih)
/// hr, hz, hn = split(h_{t-1} W_hh^T + b_hh)
/// r = sigmoid(xr + hr);  z = sigmoid(xz + hz)
/// n = tanh(xn + r * hn)
/// h_t = (1 - z) * n + z * h_{t-1}
/// ```
pub fn recurrent_layer<T: Float>(
    shape: RecurrentShape,
    x: &[T],
    dirs: &[Direction<'_, T>],
    out: &mut [T],
    h_n: &mut [T],
    c_n: Option<&mut [T]>,
    threads: usize,
) -> Result<(), ShapeError> {
    let RecurrentShape { steps, batch } = shape;
    let Some(first) = dirs.first() else {
        return Err(ShapeError(
            "recurrent kernel: need at least one direction".into(),
        ));
    };
    let w0 = first.weights;
    let (input, hidden, h_out) = (w0.input, w0.hidden, w0.h_out);
    let is_lstm = w0.is_lstm();
    let d = dirs.len();
    for dir in dirs {
        let w = dir.weights;
        if w.cell != w0.cell || (w.input, w.hidden, w.h_out) != (input, hidden, h_out) {
            return Err(ShapeError(
                "recurrent kernel: the directions' weights disagree on the cell or the sizes"
                    .into(),
            ));
        }
        if let Some(h0) = dir.h0 {
            check_len("h0", h0, batch * h_out)?;
        }
        match (dir.c0, is_lstm) {
            (Some(c0), true) => check_len("c0", c0, batch * hidden)?,
            (Some(_), false) => return Err(ShapeError("recurrent kernel: a GRU has no c0".into())),
            (None, _) => {}
        }
    }
    check_len("x", x, steps * batch * input)?;
    check_len("out", out, steps * batch * d * h_out)?;
    check_len("h_n", h_n, d * batch * h_out)?;
    match (&c_n, is_lstm) {
        (Some(c_n), true) => check_len("c_n", c_n, d * batch * hidden)?,
        (None, false) => {}
        (None, true) => return Err(ShapeError("recurrent kernel: an LSTM needs c_n".into())),
        (Some(_), false) => return Err(ShapeError("recurrent kernel: a GRU has no c_n".into())),
    }

    let jobs: Vec<Job<'_, T>> = dirs
        .iter()
        .map(|dir| Job {
            w: dir.weights,
            x,
            h0: dir.h0,
            c0: dir.c0,
            reverse: dir.reverse,
        })
        .collect();
    let blocks = hidden.div_ceil(UNITS);
    let geom = Geometry {
        steps,
        batch,
        input,
        hidden,
        h_out,
        gates: w0.gates(),
        blocks,
        width: w0.gates() * UNITS,
        proj_panels: w0.w_hr.as_ref().map_or(0, Panels::count),
        chunk: (ROWS_PER_CHUNK / batch.max(1)).clamp(1, steps.max(1)),
    };
    run_layer(geom, &jobs, out, h_n, c_n, threads);
    Ok(())
}

// ---------------------------------------------------------------------------
// Scheduling

/// Input-projection rows (steps times batch) computed at a time: enough for
/// the micro-kernel to reuse every panel slice many times (192 rows measure
/// about 2% slower), few enough for the chunk to stay small next to the
/// sequence. Batch 1 projects up to this many steps at once.
const ROWS_PER_CHUNK: usize = 384;

/// Validated sizes of one layer.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    steps: usize,
    batch: usize,
    input: usize,
    hidden: usize,
    h_out: usize,
    /// 4 for an LSTM, 3 for a GRU.
    gates: usize,
    /// Blocks of [`UNITS`] hidden units (the last may be partial).
    blocks: usize,
    /// Columns per block: `gates * UNITS`.
    width: usize,
    /// Panels of `W_hr^T` (16 columns each), 0 without projection.
    proj_panels: usize,
    /// Steps per chunk of the input projection.
    chunk: usize,
}

impl Geometry {
    fn projects(&self) -> bool {
        self.proj_panels > 0
    }

    /// Real units of block `j`.
    fn units_in(&self, j: usize) -> Range<usize> {
        j * UNITS..((j + 1) * UNITS).min(self.hidden)
    }
}

/// One direction's inputs.
#[derive(Debug, Clone, Copy)]
struct Job<'a, T> {
    w: &'a PackedWeights<T>,
    /// `(T, B, I)`.
    x: &'a [T],
    h0: Option<&'a [T]>,
    c0: Option<&'a [T]>,
    reverse: bool,
}

impl<T> Job<'_, T> {
    /// The time index of walk step `step`.
    fn time(&self, steps: usize, step: usize) -> usize {
        if self.reverse {
            steps - 1 - step
        } else {
            step
        }
    }

    fn is_lstm(&self) -> bool {
        self.w.cell == CellKind::Lstm
    }
}

/// Multiply-adds per step below which a direction is not split over threads:
/// the per-step barrier would cost more than it saves.
const MIN_SPLIT_WORK: usize = 64 * 1024;
/// Fewest blocks of units a team member handles.
const MIN_BLOCKS_PER_MEMBER: usize = 2;

/// How many threads work on each direction.
fn team_size(geom: &Geometry, threads_for_dir: usize) -> usize {
    let work = geom.batch * geom.h_out * geom.gates * geom.hidden;
    if threads_for_dir <= 1 || work < MIN_SPLIT_WORK {
        return 1;
    }
    threads_for_dir
        .min(geom.blocks / MIN_BLOCKS_PER_MEMBER)
        .max(1)
}

/// Splits `0..total` into exactly `parts` contiguous ranges of nearly equal
/// length (ranges may be empty when `total` is small).
fn split_range(total: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.max(1);
    let bound = |k: usize| total * k / parts;
    (0..parts).map(|k| bound(k)..bound(k + 1)).collect()
}

/// The per-direction output views handed to a team's leader.
struct LeaderOut<'o, T> {
    /// `T * B` rows of `H_out` elements, indexed `t * B + b`.
    rows: Vec<&'o mut [T]>,
    /// `(B, H_out)`.
    h_n: &'o mut [T],
    /// `(B, H)` for an LSTM.
    c_n: Option<&'o mut [T]>,
}

fn run_layer<T: Float>(
    geom: Geometry,
    jobs: &[Job<'_, T>],
    out: &mut [T],
    h_n: &mut [T],
    c_n: Option<&mut [T]>,
    threads: usize,
) {
    let d = jobs.len();
    let Geometry {
        batch,
        hidden,
        h_out,
        ..
    } = geom;

    // Per-direction views of the outputs.
    let mut rows: Vec<Vec<&mut [T]>> = (0..d)
        .map(|_| Vec::with_capacity(geom.steps * batch))
        .collect();
    for (i, row) in out.chunks_mut(h_out).enumerate() {
        rows[i % d].push(row);
    }
    let mut c_parts: Vec<Option<&mut [T]>> = match c_n {
        Some(c_n) => c_n.chunks_mut(batch * hidden).map(Some).collect(),
        None => (0..d).map(|_| None).collect(),
    };
    let mut leaders: Vec<LeaderOut<'_, T>> = rows
        .into_iter()
        .zip(h_n.chunks_mut(batch * h_out))
        .zip(c_parts.iter_mut())
        .map(|((rows, h_n), c_n)| LeaderOut {
            rows,
            h_n,
            c_n: c_n.take(),
        })
        .collect();

    if geom.steps == 0 || batch == 0 {
        for (job, leader) in jobs.iter().zip(&mut leaders) {
            copy_or_zero(leader.h_n, job.h0);
            if let Some(c_n) = leader.c_n.as_deref_mut() {
                copy_or_zero(c_n, job.c0);
            }
        }
        return;
    }

    let threads = threads.max(1);
    if threads < d {
        // Not enough threads for the directions: one after the other.
        for (job, leader) in jobs.iter().zip(leaders) {
            run_direction(geom, job, leader, threads);
        }
        return;
    }
    let per_dir = threads / d;
    let mut leaders = leaders.into_iter().zip(jobs);
    let first = leaders.next();
    let others: Vec<Task<'_>> = leaders
        .map(|(leader, job)| Task::spawn(move || run_direction(geom, job, leader, per_dir)))
        .collect();
    if let Some((leader, job)) = first {
        run_direction(geom, job, leader, per_dir);
    }
    // A direction that no pool thread has started yet runs here.
    for task in others {
        task.finish();
    }
}

fn copy_or_zero<T: Float>(dst: &mut [T], src: Option<&[T]>) {
    match src {
        Some(src) => dst.copy_from_slice(src),
        None => dst.fill(T::ZERO),
    }
}

/// Runs one direction with a team of up to `threads` threads; the calling
/// thread is the leader and writes the outputs.
fn run_direction<T: Float>(
    geom: Geometry,
    job: &Job<'_, T>,
    leader: LeaderOut<'_, T>,
    threads: usize,
) {
    let size = if contended() {
        1
    } else {
        team_size(&geom, threads)
    };
    let team = Team::new(geom, size);
    if team.size == 1 {
        member_dispatch(geom, job, &team, 0, Some(leader));
        return;
    }
    let team = &team;
    let members: Vec<Task<'_>> = (1..team.size)
        .map(|member| Task::spawn(move || member_dispatch(geom, job, team, member, None)))
        .collect();
    member_dispatch(geom, job, team, 0, Some(leader));
    // A member that has not started by now has nothing left to do.
    for task in members {
        task.cancel();
    }
}

// ---------------------------------------------------------------------------
// Teams

/// A barrier for a few threads that spins (then yields) instead of sleeping:
/// a step takes microseconds, far less than a futex wake-up.
///
/// Spinning teams suffer when the machine is oversubscribed: a member that
/// loses its core stalls its partners for a whole scheduler time slice, and
/// a member that shares its core with another busy thread runs at a
/// fraction of its speed. Two signs tell the team to dissolve (the leader
/// then finishes the sequence alone): any wait longer than [`STALL`], and
/// the leader's request when it spends more time waiting than working (see
/// [`Pace`]): alone, it would be faster.
struct SpinBarrier {
    size: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    poisoned: AtomicBool,
    stalled: AtomicBool,
    requested: AtomicBool,
    dissolve: AtomicBool,
}

/// Spins before a waiting thread starts watching the clock.
const SPINS_BEFORE_CLOCK: u32 = 1 << 10;
/// Spinning time before a waiting thread starts yielding its core.
const SPIN_TIME: Duration = Duration::from_micros(50);
/// A wait this long means a partner lost its core for a scheduler time
/// slice, not just to a short interruption.
const STALL: Duration = Duration::from_millis(1);

/// Spins, then yields, until `done()`; panics when `poisoned` is set. Returns
/// how long the wait took once it started watching the clock (`None` for a
/// short wait).
fn wait_until(mut done: impl FnMut() -> bool, poisoned: &AtomicBool) -> Option<Duration> {
    let mut spins = 0u32;
    let mut clock: Option<Instant> = None;
    let mut yielding = false;
    while !done() {
        if poisoned.load(Ordering::Relaxed) {
            panic!("recurrent kernel: another team member panicked");
        }
        spins = spins.wrapping_add(1);
        // Reading the clock costs about as much as a short spin: only
        // every 64 rounds, once spinning has gone on for a while.
        if spins >= SPINS_BEFORE_CLOCK && spins.is_multiple_of(64) {
            yielding = clock.get_or_insert_with(Instant::now).elapsed() >= SPIN_TIME;
        }
        if yielding {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    clock.map(|start| start.elapsed())
}

impl SpinBarrier {
    fn new(size: usize) -> Self {
        Self {
            size,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            requested: AtomicBool::new(false),
            dissolve: AtomicBool::new(false),
        }
    }

    fn wait(&self) {
        if self.size == 1 {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.size {
            // Last to arrive: every member's earlier `stalled` and
            // `requested` stores are visible through `arrived`; publish the
            // decision with the new generation.
            self.arrived.store(0, Ordering::Relaxed);
            if self.stalled.load(Ordering::Relaxed)
                || self.requested.load(Ordering::Relaxed)
                || forced_dissolve(generation)
            {
                self.dissolve.store(true, Ordering::Relaxed);
            }
            self.generation
                .store(generation.wrapping_add(1), Ordering::Release);
            return;
        }
        let waited = wait_until(
            || self.generation.load(Ordering::Acquire) != generation,
            &self.poisoned,
        );
        // The first barrier also waits for the members that started last to
        // project their share of the first chunk.
        if generation > 0 && waited.is_some_and(|w| w > STALL) {
            self.stalled.store(true, Ordering::Relaxed);
        }
    }

    /// The leader asks the team to dissolve at the next barrier.
    fn request_dissolve(&self) {
        self.requested.store(true, Ordering::Relaxed);
    }

    /// Whether the team should dissolve; the same answer for every member
    /// between two barriers.
    fn dissolving(&self) -> bool {
        self.dissolve.load(Ordering::Relaxed)
    }
}

/// The leader's account of its team's pace: time spent working and time
/// spent waiting at the barrier for the members, from the end of the first
/// barrier on.
struct Pace {
    last: Option<Instant>,
    work: Duration,
    wait: Duration,
    barriers: usize,
}

/// Barriers the leader counts before it judges the team's pace.
const PACE_BARRIERS: usize = 4;
/// Waiting the leader tolerates whatever the pace: one short interruption
/// of a member costs less than finishing alone.
const PACE_TOLERANCE: Duration = Duration::from_micros(500);

impl Pace {
    fn new() -> Self {
        Self {
            last: None,
            work: Duration::ZERO,
            wait: Duration::ZERO,
            barriers: 0,
        }
    }

    /// The leader's barrier: when, since the team formed, it waited for the
    /// members longer than it worked (and more than [`PACE_TOLERANCE`]),
    /// they run at less than half its speed (their cores are shared), and it
    /// asks the team to dissolve.
    fn wait(&mut self, barrier: &SpinBarrier) {
        let arrived = Instant::now();
        if let Some(last) = self.last {
            self.work += arrived - last;
            self.barriers += 1;
        }
        barrier.wait();
        let done = Instant::now();
        if self.last.is_some() {
            self.wait += done - arrived;
        }
        self.last = Some(done);
        if self.barriers >= PACE_BARRIERS && self.wait > self.work && self.wait > PACE_TOLERANCE {
            barrier.request_dissolve();
        }
    }
}

/// Tests set this to `n > 0` to dissolve every team at its `n`-th barrier.
#[cfg(test)]
static DISSOLVE_AT: AtomicUsize = AtomicUsize::new(0);

/// Tests set this to [`ALWAYS`] (leaders wait for their members, however
/// long they take to start) or [`NEVER`] (leaders always work alone).
#[cfg(test)]
static START_MODE: AtomicUsize = AtomicUsize::new(PENDING);

#[cfg(test)]
const ALWAYS: usize = 1;
const NEVER: usize = usize::MAX;

fn start_mode() -> usize {
    #[cfg(test)]
    return START_MODE.load(Ordering::Relaxed);
    #[cfg(not(test))]
    PENDING
}

fn forced_dissolve(generation: usize) -> bool {
    #[cfg(test)]
    return DISSOLVE_AT.load(Ordering::Relaxed) == generation + 1;
    #[cfg(not(test))]
    {
        let _ = generation;
        false
    }
}

/// Poisons the barrier when a member unwinds, so that its partners stop
/// waiting for it.
struct PoisonOnPanic<'a>(&'a SpinBarrier);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned.store(true, Ordering::Relaxed);
        }
    }
}

/// How long teams do not form after one was sent away or dissolved: the
/// machine is likely still oversubscribed, and another team would lose
/// another stall before it dissolves in turn.
const CONTENTION_BACKOFF: Duration = Duration::from_millis(20);

/// When a team was last sent away or dissolved, in nanoseconds since
/// [`epoch`] plus one; 0 for never.
static CONTENTION_SEEN: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
}

/// Records that a team was sent away or dissolved now.
fn note_contention() {
    CONTENTION_SEEN.store(nanos_since_epoch() + 1, Ordering::Relaxed);
}

/// Whether a team was sent away or dissolved less than
/// [`CONTENTION_BACKOFF`] ago (ignored by the tests' forced team paths).
fn contended() -> bool {
    let seen = CONTENTION_SEEN.load(Ordering::Relaxed);
    let backoff = CONTENTION_BACKOFF.as_nanos() as u64;
    start_mode() == PENDING && seen > 0 && nanos_since_epoch().saturating_sub(seen - 1) < backoff
}

/// How long the leader, done with its share of the first chunk, waits for
/// the members' threads to start before it sends them away and runs alone.
const JOIN_WAIT: Duration = Duration::from_micros(50);

const PENDING: usize = 0;
const GO: usize = 1;
const CANCELLED: usize = 2;

/// The threads working on one direction and the buffers they exchange.
///
/// Member `k` owns the unit blocks `blocks[k]` (all gates of those units,
/// their input projection and cell state) and with a projection the
/// `W_hr^T` panels `cols[k]`. Each step it publishes its columns of `h` for
/// the whole batch into `h`, double-buffered by step parity so that one
/// barrier per step suffices; after the barrier every member reads the full
/// `h` for the next step. Relaxed atomics carry the values; the barrier
/// orders writers and readers.
struct Team<T: Float> {
    size: usize,
    barrier: SpinBarrier,
    blocks: Vec<Range<usize>>,
    cols: Vec<Range<usize>>,
    /// `[parity]`: `(B, H_out)`.
    h: [Vec<T::Atomic>; 2],
    /// With projection: the unprojected `h`, `(B, H)`.
    hid: Vec<T::Atomic>,
    /// LSTM cell state, `(B, H)`, published at the end and when dissolving.
    c: Vec<T::Atomic>,
    /// Members (other than the leader) that have started.
    joined: AtomicUsize,
    /// The leader's decision for the members: [`PENDING`], [`GO`] or
    /// [`CANCELLED`].
    start: AtomicUsize,
    /// The core the leader started on, when known.
    leader_cpu: Option<usize>,
}

impl<T: Float> Team<T> {
    fn new(geom: Geometry, size: usize) -> Self {
        let b = geom.batch;
        let many = size > 1;
        let shared = |len: usize| -> Vec<T::Atomic> {
            (0..if many { len } else { 0 })
                .map(|_| T::new_atomic(T::ZERO))
                .collect()
        };
        Self {
            size,
            barrier: SpinBarrier::new(size),
            blocks: split_range(geom.blocks, size),
            cols: split_range(geom.proj_panels, size),
            h: [shared(b * geom.h_out), shared(b * geom.h_out)],
            hid: shared(if geom.projects() { b * geom.hidden } else { 0 }),
            c: shared(if geom.gates == 4 { b * geom.hidden } else { 0 }),
            joined: AtomicUsize::new(0),
            start: AtomicUsize::new(PENDING),
            leader_cpu: if many { affinity::current_cpu() } else { None },
        }
    }

    /// The leader: waits (boundedly) for every member to start; whether they
    /// all did.
    fn members_started(&self) -> bool {
        let all = || self.joined.load(Ordering::Acquire) + 1 == self.size;
        match start_mode() {
            NEVER => false,
            PENDING => {
                let start = Instant::now();
                let mut spins = 0u32;
                while !all() {
                    if start.elapsed() > JOIN_WAIT {
                        return all();
                    }
                    spins = spins.wrapping_add(1);
                    if spins < SPINS_BEFORE_CLOCK {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
                true
            }
            // Tests: wait however long it takes.
            _ => {
                wait_until(all, &self.barrier.poisoned);
                true
            }
        }
    }

    /// The leader's decision: `go` or send the members away.
    fn decide(&self, go: bool) {
        self.start
            .store(if go { GO } else { CANCELLED }, Ordering::Release);
    }

    /// A member: whether the leader has already sent the members away.
    fn cancelled(&self) -> bool {
        self.start.load(Ordering::Acquire) == CANCELLED
    }

    /// A member: waits for the leader's decision; whether to work.
    fn started(&self) -> bool {
        let mut decision = PENDING;
        wait_until(
            || {
                decision = self.start.load(Ordering::Acquire);
                decision != PENDING
            },
            &self.barrier.poisoned,
        );
        decision == GO
    }
}

/// Copies `src` (`B` rows `src_rs` apart, of `cols.len()` elements) into
/// columns `cols` of the shared `(B, width)` matrix `buf`.
fn publish<T: Float>(
    buf: &[T::Atomic],
    width: usize,
    cols: Range<usize>,
    src: &[T],
    src_rs: usize,
    batch: usize,
) {
    let n = cols.len();
    for b in 0..batch {
        let dst = &buf[b * width + cols.start..b * width + cols.end];
        for (d, &v) in dst.iter().zip(&src[b * src_rs..b * src_rs + n]) {
            T::store(d, v);
        }
    }
}

/// Reads the shared matrix `buf` into `dst`.
fn read_shared<T: Float>(buf: &[T::Atomic], dst: &mut [T]) {
    for (d, s) in dst.iter_mut().zip(buf) {
        *d = T::load(s);
    }
}

// ---------------------------------------------------------------------------
// The time loop of one team member

/// Runs [`member`] compiled for AVX2 + FMA when the CPU has them.
fn member_dispatch<T: Float>(
    geom: Geometry,
    job: &Job<'_, T>,
    team: &Team<T>,
    id: usize,
    leader: Option<LeaderOut<'_, T>>,
) {
    let _guard = PoisonOnPanic(&team.barrier);
    #[cfg(target_arch = "x86_64")]
    {
        if !portable_only() && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features `member_avx2` is compiled with.
            unsafe { member_avx2(geom, job, team, id, leader) };
            return;
        }
    }
    member::<T, false>(geom, job, team, id, leader);
}

/// Tests set this to exercise the portable code on machines with AVX2.
#[cfg(test)]
static PORTABLE_ONLY: AtomicBool = AtomicBool::new(false);

#[cfg(target_arch = "x86_64")]
fn portable_only() -> bool {
    #[cfg(test)]
    return PORTABLE_ONLY.load(Ordering::Relaxed);
    #[cfg(not(test))]
    false
}

/// [`member`] with AVX2 and FMA. Everything generic over `FMA` that it calls
/// is `#[inline(always)]`: a function compiled on its own would lack the
/// features, and its `mul_add`s would become calls to a software fused
/// multiply-add.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn member_avx2<T: Float>(
    geom: Geometry,
    job: &Job<'_, T>,
    team: &Team<T>,
    id: usize,
    leader: Option<LeaderOut<'_, T>>,
) {
    member::<T, true>(geom, job, team, id, leader);
}

/// A member's working state: its share and buffers, allocated once per
/// call. The buffers cover the blocks `base .. base + span`: the leader's
/// cover every block (it may have to finish alone), a member's its own.
struct Work<T> {
    /// The unit blocks this member computes.
    blocks: Range<usize>,
    /// The `W_hr^T` panels this member computes.
    cols: Range<usize>,
    base: usize,
    span: usize,
    /// Input projection of the times `chunk`, `(chunk * B, span * width)`,
    /// time-major; an LSTM turns each row into its gate pre-activations in
    /// place.
    gx: Vec<T>,
    /// The times `gx` holds (for the blocks of the share).
    chunk: Range<usize>,
    /// GRU: `h W_hh^T + b_hh`, `(B, span * width)`.
    hh: Vec<T>,
    /// LSTM cell state, `(B, span * UNITS)`.
    c: Vec<T>,
    /// The units' new `h` (LSTM: before projection), `(B, span * UNITS)`.
    h_units: Vec<T>,
    /// With projection, in a team: the full unprojected `h`, `(B, H)`.
    hid: Vec<T>,
    /// With projection: the projected columns, `(B, proj_panels * 16)`.
    h_cols: Vec<T>,
    /// For the products.
    scratch: Vec<T>,
}

/// Columns per panel of `W_hr^T`.
const PROJ_COLS: usize = 16;

/// The row stride for rows of `cols` elements: one cache line more when the
/// rows would be a multiple of 4 KiB apart, where the rows a micro-tile
/// loads and stores would all compete for the same few L1 sets.
fn row_stride<T>(cols: usize) -> usize {
    let size = std::mem::size_of::<T>();
    if (cols * size).is_multiple_of(4096) {
        cols + 64 / size
    } else {
        cols
    }
}

impl<T: Float> Work<T> {
    /// Member `id`'s share of `team`; the leader's buffers span every block.
    fn new(geom: &Geometry, job: &Job<'_, T>, team: &Team<T>, id: usize) -> Self {
        let Geometry { batch, width, .. } = *geom;
        let span = if id == 0 {
            0..geom.blocks
        } else {
            team.blocks[id].clone()
        };
        let is_lstm = job.is_lstm();
        let n = span.len() * UNITS;
        let mut c = vec![T::ZERO; if is_lstm { batch * n } else { 0 }];
        if let Some(c0) = job.c0 {
            let units = span.start * UNITS..(span.end * UNITS).min(geom.hidden);
            for b in 0..batch {
                let src = b * geom.hidden;
                c[b * n..b * n + units.len()]
                    .copy_from_slice(&c0[src + units.start..src + units.end]);
            }
        }
        let rows = |width: usize| vec![T::ZERO; batch * width];
        Self {
            blocks: team.blocks[id].clone(),
            cols: team.cols[id].clone(),
            base: span.start,
            span: span.len(),
            gx: rows(geom.chunk * row_stride::<T>(span.len() * width)),
            chunk: 0..0,
            hh: rows(if is_lstm {
                0
            } else {
                row_stride::<T>(span.len() * width)
            }),
            c,
            h_units: rows(n),
            hid: rows(if geom.projects() { geom.hidden } else { 0 }),
            h_cols: rows(geom.proj_panels * PROJ_COLS),
            scratch: Vec::new(),
        }
    }

    /// Row stride of `gx` and `hh`.
    fn stride(&self, geom: &Geometry) -> usize {
        row_stride::<T>(self.span * geom.width)
    }

    /// Row stride of `c` and `h_units`.
    fn unit_stride(&self) -> usize {
        self.span * UNITS
    }

    /// Offset of the share's first unit in the rows of `c` and `h_units`.
    fn unit0(&self) -> usize {
        (self.blocks.start - self.base) * UNITS
    }

    /// The real units of the share.
    fn units(&self, geom: &Geometry) -> Range<usize> {
        (self.blocks.start * UNITS).min(geom.hidden)..(self.blocks.end * UNITS).min(geom.hidden)
    }

    /// Projects the input of the times `self.chunk` for `blocks` into `gx`:
    /// `x_t W_ih^T + bias`.
    #[inline(always)]
    fn project<const FMA: bool>(
        &mut self,
        geom: &Geometry,
        job: &Job<'_, T>,
        blocks: Range<usize>,
    ) {
        let Geometry {
            batch,
            input,
            width,
            ..
        } = *geom;
        let stride = self.stride(geom);
        let rows = self.chunk.len() * batch;
        let col0 = (blocks.start - self.base) * width;
        let bias = &job.w.x_bias[blocks.start * width..blocks.end * width];
        for row in self.gx[..rows * stride].chunks_exact_mut(stride) {
            row[col0..col0 + bias.len()].copy_from_slice(bias);
        }
        let x = &job.x[self.chunk.start * batch * input..self.chunk.end * batch * input];
        mul_acc::<T, FMA>(
            &mut self.gx[col0..],
            stride,
            x,
            input,
            rows,
            &job.w.w_ih,
            blocks,
            false,
            &mut self.scratch,
        );
    }

    /// Makes `gx` hold walk step `step` (time `t`): when it does not, loads
    /// the chunk of steps starting there.
    #[inline(always)]
    fn ensure_chunk<const FMA: bool>(
        &mut self,
        geom: &Geometry,
        job: &Job<'_, T>,
        step: usize,
        t: usize,
    ) {
        if self.chunk.contains(&t) {
            return;
        }
        let n = geom.chunk.min(geom.steps - step);
        self.chunk = if job.reverse {
            t + 1 - n..t + 1
        } else {
            t..t + n
        };
        self.project::<FMA>(geom, job, self.blocks.clone());
    }

    /// The leader, from now on alone: takes over every block and projection
    /// panel, with the current chunk's projection of the blocks it gains.
    #[inline(always)]
    fn take_all<const FMA: bool>(&mut self, geom: &Geometry, job: &Job<'_, T>) {
        let gained = self.blocks.end..geom.blocks;
        self.blocks = 0..geom.blocks;
        self.cols = 0..geom.proj_panels;
        self.project::<FMA>(geom, job, gained);
    }

    /// One step at time `t` from the previous state `h_prev` `(B, H_out)`:
    /// the share's gate pre-activations, then the gates, which update `c`
    /// and write the units' new `h` into `h_units`.
    #[inline(always)]
    fn step<const FMA: bool>(
        &mut self,
        geom: &Geometry,
        job: &Job<'_, T>,
        t: usize,
        h_prev: Option<&[T]>,
        zigzag: bool,
    ) {
        let Geometry {
            batch,
            h_out,
            width,
            ..
        } = *geom;
        let stride = self.stride(geom);
        let share = self.blocks.clone();
        let col0 = (share.start - self.base) * width;
        let row0 = (t - self.chunk.start) * batch * stride;
        let (cs, u0, n) = (self.unit_stride(), self.unit0(), share.len() * UNITS);
        // `h W_hh^T`: for an LSTM in place on the projected input, for a GRU
        // into `hh`, after `b_hh`.
        let dst = if job.is_lstm() {
            &mut self.gx[row0 + col0..]
        } else {
            for row in self.hh.chunks_exact_mut(stride) {
                let dst = &mut row[col0..col0 + share.len() * width];
                match &job.w.h_bias {
                    Some(b) => dst.copy_from_slice(&b[share.start * width..share.end * width]),
                    None => dst.fill(T::ZERO),
                }
            }
            &mut self.hh[col0..]
        };
        if let Some(h_prev) = h_prev {
            mul_acc::<T, FMA>(
                dst,
                stride,
                h_prev,
                h_out,
                batch,
                &job.w.w_hh,
                share.clone(),
                zigzag,
                &mut self.scratch,
            );
        }
        for b in 0..batch {
            let pre = row0 + b * stride + col0;
            let u = b * cs + u0;
            if job.is_lstm() {
                lstm_row::<T, FMA>(
                    &mut self.gx[pre..pre + share.len() * width],
                    &mut self.c[u..u + n],
                    &mut self.h_units[u..u + n],
                );
                continue;
            }
            let zeros = [T::ZERO; UNITS];
            for (k, j) in share.clone().enumerate() {
                let units = geom.units_in(j);
                let hh = b * stride + col0 + k * width;
                let hp = match h_prev {
                    Some(h) => &h[b * h_out + units.start..b * h_out + units.end],
                    None => &zeros[..units.len()],
                };
                gru_block::<T, FMA>(
                    &mut self.hh[hh..hh + width],
                    &self.gx[pre + k * width..pre + (k + 1) * width],
                    hp,
                    &mut self.h_units[u + k * UNITS..u + k * UNITS + units.len()],
                );
            }
        }
    }

    /// With projection: the columns `cols` of `h W_hr^T` into `h_cols`, `h`
    /// being `h_units` (alone) or the team's full `hid`.
    #[inline(always)]
    fn project_h<const FMA: bool>(
        &mut self,
        geom: &Geometry,
        job: &Job<'_, T>,
        alone: bool,
        zigzag: bool,
    ) {
        let ps = geom.proj_panels * PROJ_COLS;
        let cols = self.cols.clone();
        for row in self.h_cols.chunks_exact_mut(ps) {
            row[cols.start * PROJ_COLS..cols.end * PROJ_COLS].fill(T::ZERO);
        }
        let (lhs, lhs_rs) = if alone {
            (&self.h_units, self.unit_stride())
        } else {
            (&self.hid, geom.hidden)
        };
        mul_acc::<T, FMA>(
            &mut self.h_cols[cols.start * PROJ_COLS..],
            ps,
            lhs,
            lhs_rs,
            geom.batch,
            job.w.w_hr.as_ref().expect("projecting weights"),
            cols,
            zigzag,
            &mut self.scratch,
        );
    }

    /// The columns of `h` this member computes, and where they are: `(cols,
    /// buffer, row stride)`.
    fn h_out_part(&self, geom: &Geometry) -> (Range<usize>, &[T], usize) {
        if geom.projects() {
            let cols = (self.cols.start * PROJ_COLS).min(geom.h_out)
                ..(self.cols.end * PROJ_COLS).min(geom.h_out);
            let ps = geom.proj_panels * PROJ_COLS;
            (cols.clone(), &self.h_cols[cols.start..], ps)
        } else {
            (
                self.units(geom),
                &self.h_units[self.unit0()..],
                self.unit_stride(),
            )
        }
    }

    /// Publishes the share's cell state into the team's `c`.
    fn publish_c(&self, geom: &Geometry, team: &Team<T>) {
        let c = &self.c[self.unit0()..];
        publish(
            &team.c,
            geom.hidden,
            self.units(geom),
            c,
            self.unit_stride(),
            geom.batch,
        );
    }
}

#[inline(always)]
fn member<T: Float, const FMA: bool>(
    geom: Geometry,
    job: &Job<'_, T>,
    team: &Team<T>,
    id: usize,
    mut leader: Option<LeaderOut<'_, T>>,
) {
    let Geometry {
        steps,
        batch,
        hidden,
        h_out,
        ..
    } = geom;
    let is_lstm = job.is_lstm();

    // Start: every member projects its share of the first chunk; the leader
    // then decides whether the team works together or it runs alone.
    if id > 0 {
        team.joined.fetch_add(1, Ordering::AcqRel);
        if team.cancelled() {
            // Started too late: the leader already works alone.
            return;
        }
    }
    // A member on its leader's core moves away for as long as it works.
    let _away = (id > 0).then(|| AvoidCpu::new(team.leader_cpu));
    let mut work = Work::new(&geom, job, team, id);
    work.ensure_chunk::<FMA>(&geom, job, 0, job.time(steps, 0));
    let mut solo = id == 0;
    if id == 0 && team.size > 1 {
        let go = team.members_started();
        team.decide(go);
        if go {
            solo = false;
        } else {
            note_contention();
            work.take_all::<FMA>(&geom, job);
        }
    } else if id > 0 && !team.started() {
        return;
    }

    // The leader watches the team's pace.
    let mut pace = (id == 0).then(Pace::new);
    // The full previous `h`, `(B, H_out)`.
    let mut h_prev = vec![T::ZERO; batch * h_out];
    if let Some(h0) = job.h0 {
        h_prev.copy_from_slice(h0);
    }
    for step in 0..steps {
        let t = job.time(steps, step);
        work.ensure_chunk::<FMA>(&geom, job, step, t);
        // Every other step walks the weights backwards: what the previous
        // step read last is still in cache when a share is a little too
        // large for it.
        let zigzag = step % 2 == 1;
        let nonzero_h = step > 0 || job.h0.is_some();
        work.step::<FMA>(&geom, job, t, nonzero_h.then_some(&h_prev[..]), zigzag);
        if !solo && is_lstm && step + 1 == steps {
            work.publish_c(&geom, team);
        }
        if geom.projects() {
            if !solo {
                let (cs, u0) = (work.unit_stride(), work.unit0());
                let units = work.units(&geom);
                publish(&team.hid, hidden, units, &work.h_units[u0..], cs, batch);
                sync(team, &mut pace);
                read_shared(&team.hid, &mut work.hid);
            }
            work.project_h::<FMA>(&geom, job, solo, zigzag);
        }
        // The new `h`: into `h_prev` when alone, else through the team.
        let (cols, part, part_rs) = work.h_out_part(&geom);
        if solo {
            for b in 0..batch {
                h_prev[b * h_out + cols.start..b * h_out + cols.end]
                    .copy_from_slice(&part[b * part_rs..b * part_rs + cols.len()]);
            }
        } else {
            publish(&team.h[step % 2], h_out, cols, part, part_rs, batch);
            sync(team, &mut pace);
            read_shared(&team.h[step % 2], &mut h_prev);
        }
        if let Some(leader) = leader.as_mut() {
            write_rows(&mut leader.rows, t, batch, &h_prev);
        }

        // Every member reads the same decision after the same barrier.
        if !solo && team.barrier.dissolving() && step + 1 < steps {
            if is_lstm {
                work.publish_c(&geom, team);
            }
            team.barrier.wait();
            if leader.is_none() {
                return;
            }
            // The leader takes over every unit from the next step on.
            note_contention();
            if is_lstm {
                let cs = work.unit_stride();
                for (row, shared) in work.c.chunks_exact_mut(cs).zip(team.c.chunks_exact(hidden)) {
                    read_shared(shared, &mut row[..hidden]);
                }
            }
            work.take_all::<FMA>(&geom, job);
            solo = true;
        }
    }

    // Only the leader goes on: everything it reads was published before the
    // last barrier.
    let Some(leader) = leader else { return };
    leader.h_n.copy_from_slice(&h_prev);
    if let Some(c_n) = leader.c_n {
        if solo {
            let cs = work.unit_stride();
            for (dst, src) in c_n.chunks_exact_mut(hidden).zip(work.c.chunks_exact(cs)) {
                dst.copy_from_slice(&src[..hidden]);
            }
        } else {
            read_shared(&team.c, c_n);
        }
    }
}

/// A team member's barrier: the leader's keeps its [`Pace`].
fn sync<T: Float>(team: &Team<T>, pace: &mut Option<Pace>) {
    match pace {
        Some(pace) => pace.wait(&team.barrier),
        None => team.barrier.wait(),
    }
}

/// Writes `h` (`(B, H_out)`) into the output rows of time index `t`.
#[inline(always)]
fn write_rows<T: Float>(rows: &mut [&mut [T]], t: usize, batch: usize, h: &[T]) {
    let width = h.len() / batch.max(1);
    for (b, row) in rows[t * batch..(t + 1) * batch].iter_mut().enumerate() {
        row.copy_from_slice(&h[b * width..(b + 1) * width]);
    }
}
