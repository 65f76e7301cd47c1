//! Direct CPU kernels for the time loop of recurrent layers.
//!
//! A recurrent layer spends its time in a strictly sequential loop: every step
//! multiplies the previous hidden state by `W_hh^T` and applies a handful of
//! elementwise gate operations. Expressed with generic tensor ops, each step
//! pays for several small allocations, kernel launches and thread-pool round
//! trips, which dominate at the sizes speech and audio models use. The
//! functions here run that loop on plain contiguous buffers instead:
//!
//! * the input projection `x W_ih^T` for all steps is computed by the caller
//!   beforehand (one large matmul, e.g. with Candle) and passed in as `gx`,
//!   the input biases separately (they are added on the fly);
//! * each step does one small matrix product into a reused scratch buffer,
//!   followed by one fused gate loop, without allocating. For batch 1 the
//!   product streams the weights in place (it is bound by reading them); for
//!   larger batches the weights are first copied, once per call, into
//!   column panels that a register-blocked micro-kernel (AVX2 + FMA
//!   intrinsics on x86-64) walks linearly;
//! * the directions of a bidirectional layer run concurrently, and a single
//!   direction can be split by hidden units over a small team of threads
//!   that meet at a spinning barrier once per step (twice with a
//!   projection). The calling thread starts alone and hands the other
//!   members their units as soon as their threads are running; a team that
//!   waits too long for a member that lost its core (an oversubscribed
//!   machine) dissolves, and the calling thread finishes alone.
//!
//! The kernels are independent of any layer struct: they take slices laid out
//! as PyTorch lays out its tensors (time-major `(T, B, F)`, weights
//! transposed to `(in, gates * H)` with PyTorch's gate order) and write the
//! layer output with the directions concatenated on the last axis, exactly
//! like the `output`, `h_n` (and `c_n`) of `torch.nn.LSTM` / `torch.nn.GRU`.
//!
//! On x86-64 CPUs with AVX2 and FMA the hot loops are compiled a second time
//! with those features and selected at run time; elsewhere portable Rust
//! runs. For `f32`, `sigmoid` and `tanh` use branch-free polynomial
//! approximations (within about 2e-7 of the exact values) so that the gate
//! loop vectorises; `f64` uses the standard library functions. Products are
//! accumulated in a different order than a BLAS would, so results match
//! PyTorch to rounding, not bit for bit.

use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::ops::{Add, Div, Mul, Range, Sub};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
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

    /// Rows per micro-tile of [`gemm_packed`] (12 vector accumulators).
    const TILE_ROWS: usize;

    /// One micro-tile of [`gemm_packed`]: with `FMA`, the AVX2 + FMA
    /// version (only instantiated in code that checked the CPU has both).
    fn tile<const FMA: bool, const R: usize>(
        dst: &mut [Self],
        lhs: &[Self],
        panel: &[Self],
        tile: Tile,
    );
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
        1.0 / (1.0 + exp_f32(-x))
    }

    #[inline(always)]
    fn tanh(x: Self) -> Self {
        tanh_f32(x)
    }

    const TILE_ROWS: usize = 6;

    #[inline(always)]
    fn tile<const FMA: bool, const R: usize>(
        dst: &mut [Self],
        lhs: &[Self],
        panel: &[Self],
        tile: Tile,
    ) {
        #[cfg(target_arch = "x86_64")]
        if FMA {
            tile.check(dst, lhs, panel, R);
            // SAFETY: `FMA` code only runs after AVX2 and FMA were detected,
            // and `check` verified every index the tile touches.
            unsafe { x86::tile_f32::<R>(dst, lhs, panel, tile) };
            return;
        }
        tile_portable::<Self, FMA, R>(dst, lhs, panel, tile);
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

    const TILE_ROWS: usize = 3;

    #[inline(always)]
    fn tile<const FMA: bool, const R: usize>(
        dst: &mut [Self],
        lhs: &[Self],
        panel: &[Self],
        tile: Tile,
    ) {
        #[cfg(target_arch = "x86_64")]
        if FMA {
            tile.check(dst, lhs, panel, R);
            // SAFETY: as for f32.
            unsafe { x86::tile_f64::<R>(dst, lhs, panel, tile) };
            return;
        }
        tile_portable::<Self, FMA, R>(dst, lhs, panel, tile);
    }
}

/// `exp(x)` for `f32` without branches or calls, so that loops over it
/// vectorise.
///
/// Range reduction `x = n ln 2 + r` with `|r| <= ln 2 / 2` (`ln 2` split in
/// two parts so that `n ln 2` is exact), a degree-7 polynomial for `exp(r)`,
/// and the scale `2^n` built directly in the exponent bits. The input is
/// clamped to `[-87, 88]`, where `2^n` stays a normal number; NaN propagates.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let p = p * (r * r) + r + 1.0;
    let n_int = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    p * scale
}

/// `tanh(x)` for `f32` without branches or calls: an odd polynomial for
/// `|x| < 0.625`, `1 - 2 / (exp(2|x|) + 1)` with the sign of `x` beyond.
#[inline(always)]
fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let s = x * x;
    let mut p = -5.704_988_7e-3_f32;
    p = p * s + 2.063_909e-2;
    p = p * s - 5.373_971_6e-2;
    p = p * s + 1.333_144_2e-1;
    p = p * s - 3.333_328e-1;
    let small = p * s * x + x;
    let large = (1.0 - 2.0 / (exp_f32(a + a) + 1.0)).copysign(x);
    if a < 0.625 {
        small
    } else {
        large
    }
}

/// Sizes shared by every direction of one recurrent layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecurrentShape {
    /// Number of timesteps `T`.
    pub steps: usize,
    /// Batch size `B`.
    pub batch: usize,
    /// Hidden size `H` (the cell state size for an LSTM with projection).
    pub hidden: usize,
}

/// One direction of an LSTM layer.
///
/// With `H_out` the size of `h` (`hidden`, or the projection size when
/// `w_hr_t` is given):
#[derive(Debug, Clone, Copy)]
pub struct LstmDirection<'a, T> {
    /// The input projection `x_t W_ih^T` for every step, in time order
    /// (also for a reverse direction), `(T, B, 4H)`, gates in PyTorch's
    /// order `i, f, g, o`.
    pub gx: &'a [T],
    /// `(4H)`, added to `gx` at every step: `b_ih + b_hh`, or `None` when
    /// `gx` already includes the biases or the layer has none.
    pub bias: Option<&'a [T]>,
    /// `W_hh^T`, row-major `(H_out, 4H)`.
    pub w_hh_t: &'a [T],
    /// `W_hr^T`, row-major `(H, H_out)`, when the layer projects `h`.
    pub w_hr_t: Option<&'a [T]>,
    /// Initial hidden state `(B, H_out)`; `None` means zeros.
    pub h0: Option<&'a [T]>,
    /// Initial cell state `(B, H)`; `None` means zeros.
    pub c0: Option<&'a [T]>,
    /// Walk the sequence from the last step to the first.
    pub reverse: bool,
}

/// One direction of a GRU layer.
#[derive(Debug, Clone, Copy)]
pub struct GruDirection<'a, T> {
    /// The input projection `x_t W_ih^T` for every step, in time order,
    /// `(T, B, 3H)`, gates in PyTorch's order `r, z, n`.
    pub gx: &'a [T],
    /// `b_ih`, `(3H)`, added to `gx` at every step; `None` when `gx` already
    /// includes it or the layer has no biases. (`b_hh` cannot be folded into
    /// `gx`: its `n` part is scaled by the reset gate.)
    pub b_ih: Option<&'a [T]>,
    /// `W_hh^T`, row-major `(H, 3H)`.
    pub w_hh_t: &'a [T],
    /// `b_hh`, `(3H)`, or `None` for a layer without biases.
    pub b_hh: Option<&'a [T]>,
    /// Initial hidden state `(B, H)`; `None` means zeros.
    pub h0: Option<&'a [T]>,
    /// Walk the sequence from the last step to the first.
    pub reverse: bool,
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

/// Runs the time loop of one LSTM layer (one or two directions).
///
/// * `dirs`: one [`LstmDirection`] per direction, forward first (PyTorch's
///   order); all must agree on whether they project.
/// * `out`: `(T, B, D * H_out)`, the directions concatenated on the last
///   axis like `torch.nn.LSTM`'s `output`.
/// * `h_n`: `(D, B, H_out)` and `c_n`: `(D, B, H)`, the final states (for a
///   reverse direction, after consuming step 0).
/// * `threads`: how many threads the call may use, including the caller's
///   (e.g. [`default_threads`]). Directions run concurrently when there are
///   at least as many threads as directions; spare threads split a
///   direction's hidden units when the step is large enough to pay for the
///   per-step synchronisation.
///
/// Per step and direction:
///
/// ```text
/// i, f, g, o = split(gx_t + h_{t-1} W_hh^T)
/// c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
/// h_t = (sigmoid(o) * tanh(c_t)) [W_hr^T]
/// ```
pub fn lstm_recurrence<T: Float>(
    shape: RecurrentShape,
    dirs: &[LstmDirection<'_, T>],
    out: &mut [T],
    h_n: &mut [T],
    c_n: &mut [T],
    threads: usize,
) -> Result<(), ShapeError> {
    let RecurrentShape {
        steps,
        batch,
        hidden,
    } = shape;
    if dirs.is_empty() || hidden == 0 {
        return Err(ShapeError(format!(
            "recurrent kernel: need at least one direction and a positive hidden size, got {} and {hidden}",
            dirs.len()
        )));
    }
    let h_out = match dirs[0].w_hr_t {
        Some(w) if w.len() % hidden == 0 && !w.is_empty() => w.len() / hidden,
        Some(w) => {
            return Err(ShapeError(format!(
                "recurrent kernel: w_hr_t has {} elements, not a positive multiple of hidden ({hidden})",
                w.len()
            )))
        }
        None => hidden,
    };
    let d = dirs.len();
    for dir in dirs {
        check_len("gx", dir.gx, steps * batch * 4 * hidden)?;
        check_len("w_hh_t", dir.w_hh_t, h_out * 4 * hidden)?;
        if let Some(b) = dir.bias {
            check_len("bias", b, 4 * hidden)?;
        }
        match dir.w_hr_t {
            Some(w) => check_len("w_hr_t", w, hidden * h_out)?,
            None if h_out != hidden => {
                return Err(ShapeError(
                    "recurrent kernel: directions disagree on the projection".into(),
                ))
            }
            None => {}
        }
        if let Some(h0) = dir.h0 {
            check_len("h0", h0, batch * h_out)?;
        }
        if let Some(c0) = dir.c0 {
            check_len("c0", c0, batch * hidden)?;
        }
    }
    check_len("out", out, steps * batch * d * h_out)?;
    check_len("h_n", h_n, d * batch * h_out)?;
    check_len("c_n", c_n, d * batch * hidden)?;

    let jobs: Vec<Job<'_, T>> = dirs
        .iter()
        .map(|dir| Job {
            cell: Cell::Lstm {
                w_hr_t: dir.w_hr_t,
                c0: dir.c0,
            },
            gx: dir.gx,
            x_bias: dir.bias,
            w_hh_t: dir.w_hh_t,
            h0: dir.h0,
            reverse: dir.reverse,
        })
        .collect();
    let geom = Geometry {
        steps,
        batch,
        hidden,
        h_out,
        gates: 4,
    };
    run_layer(geom, &jobs, out, h_n, Some(c_n), threads);
    Ok(())
}

/// Runs the time loop of one GRU layer (one or two directions).
///
/// Same conventions as [`lstm_recurrence`], with `out`: `(T, B, D * H)` and
/// `h_n`: `(D, B, H)`. Per step and direction, in PyTorch's formulation:
///
/// ```text
/// hr, hz, hn = split(h_{t-1} W_hh^T + b_hh)
/// xr, xz, xn = split(gx_t)
/// r = sigmoid(xr + hr);  z = sigmoid(xz + hz)
/// n = tanh(xn + r * hn)
/// h_t = (1 - z) * n + z * h_{t-1}
/// ```
pub fn gru_recurrence<T: Float>(
    shape: RecurrentShape,
    dirs: &[GruDirection<'_, T>],
    out: &mut [T],
    h_n: &mut [T],
    threads: usize,
) -> Result<(), ShapeError> {
    let RecurrentShape {
        steps,
        batch,
        hidden,
    } = shape;
    if dirs.is_empty() || hidden == 0 {
        return Err(ShapeError(format!(
            "recurrent kernel: need at least one direction and a positive hidden size, got {} and {hidden}",
            dirs.len()
        )));
    }
    let d = dirs.len();
    for dir in dirs {
        check_len("gx", dir.gx, steps * batch * 3 * hidden)?;
        check_len("w_hh_t", dir.w_hh_t, hidden * 3 * hidden)?;
        for b in [dir.b_ih, dir.b_hh].into_iter().flatten() {
            check_len("b_ih/b_hh", b, 3 * hidden)?;
        }
        if let Some(h0) = dir.h0 {
            check_len("h0", h0, batch * hidden)?;
        }
    }
    check_len("out", out, steps * batch * d * hidden)?;
    check_len("h_n", h_n, d * batch * hidden)?;

    let jobs: Vec<Job<'_, T>> = dirs
        .iter()
        .map(|dir| Job {
            cell: Cell::Gru { b_hh: dir.b_hh },
            gx: dir.gx,
            x_bias: dir.b_ih,
            w_hh_t: dir.w_hh_t,
            h0: dir.h0,
            reverse: dir.reverse,
        })
        .collect();
    let geom = Geometry {
        steps,
        batch,
        hidden,
        h_out: hidden,
        gates: 3,
    };
    run_layer(geom, &jobs, out, h_n, None, threads);
    Ok(())
}

// ---------------------------------------------------------------------------
// Scheduling

/// Validated sizes of one layer.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    steps: usize,
    batch: usize,
    hidden: usize,
    h_out: usize,
    /// 4 for an LSTM, 3 for a GRU.
    gates: usize,
}

/// What differs between the cells.
#[derive(Debug, Clone, Copy)]
enum Cell<'a, T> {
    Lstm {
        w_hr_t: Option<&'a [T]>,
        c0: Option<&'a [T]>,
    },
    Gru {
        b_hh: Option<&'a [T]>,
    },
}

/// One direction's inputs.
#[derive(Debug, Clone, Copy)]
struct Job<'a, T> {
    cell: Cell<'a, T>,
    gx: &'a [T],
    /// `(gates * H)`, added to `gx`.
    x_bias: Option<&'a [T]>,
    w_hh_t: &'a [T],
    h0: Option<&'a [T]>,
    reverse: bool,
}

/// Multiply-adds per step below which a direction is not split over threads:
/// the per-step barrier would cost more than it saves.
const MIN_SPLIT_WORK: usize = 64 * 1024;
/// Fewest hidden units a team member handles.
const MIN_UNITS_PER_MEMBER: usize = 32;

/// How many threads work on each direction.
fn team_size(geom: &Geometry, threads_for_dir: usize) -> usize {
    let work = geom.batch * geom.h_out * geom.gates * geom.hidden;
    if threads_for_dir <= 1 || work < MIN_SPLIT_WORK {
        return 1;
    }
    threads_for_dir
        .min(geom.hidden / MIN_UNITS_PER_MEMBER)
        .min(geom.h_out.div_ceil(8))
        .max(1)
}

/// Splits `0..total` into exactly `parts` contiguous ranges of nearly equal
/// length whose inner boundaries are multiples of `align` (ranges may be
/// empty when `total` is small).
fn split_range(total: usize, parts: usize, align: usize) -> Vec<Range<usize>> {
    let parts = parts.max(1);
    let bound = |k: usize| {
        if k == parts {
            total
        } else {
            ((total * k / parts + align / 2) / align * align).min(total)
        }
    };
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

    if geom.steps == 0 {
        for (job, leader) in jobs.iter().zip(&mut leaders) {
            copy_or_zero(leader.h_n, job.h0);
            if let (Some(c_n), Cell::Lstm { c0, .. }) = (leader.c_n.as_deref_mut(), job.cell) {
                copy_or_zero(c_n, c0);
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
    std::thread::scope(|scope| {
        let mut leaders = leaders.into_iter().zip(jobs);
        let first = leaders.next();
        for (leader, job) in leaders {
            scope.spawn(move || run_direction(geom, job, leader, per_dir));
        }
        if let Some((leader, job)) = first {
            run_direction(geom, job, leader, per_dir);
        }
    });
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
    let size = team_size(&geom, threads);
    let units = split_range(geom.hidden, size, 8);
    let projects = matches!(
        job.cell,
        Cell::Lstm {
            w_hr_t: Some(_),
            ..
        }
    );
    let cols = if projects {
        split_range(geom.h_out, size, 8)
    } else {
        units.clone()
    };
    let team = Team::new(geom, units, cols, projects);
    if team.size == 1 {
        member_dispatch(geom, job, &team, 0, Some(leader));
        return;
    }
    let team = &team;
    std::thread::scope(|scope| {
        for member in 1..team.size {
            scope.spawn(move || member_dispatch(geom, job, team, member, None));
        }
        member_dispatch(geom, job, team, 0, Some(leader));
    });
}

// ---------------------------------------------------------------------------
// Teams

/// A barrier for a few threads that spins (then yields) instead of sleeping:
/// a step takes microseconds, far less than a futex wake-up.
///
/// Spinning teams suffer when the machine is oversubscribed: a member that
/// loses its core stalls its partners for a whole scheduler time slice. The
/// barrier counts such stalls (waits longer than [`SLOW_WAIT`]); after
/// [`SLOW_WAITS_TO_DISSOLVE`] of them it tells the team to dissolve, and the
/// leader finishes the sequence alone.
struct SpinBarrier {
    size: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    poisoned: AtomicBool,
    slow_waits: AtomicUsize,
    dissolve: AtomicBool,
}

/// Spins before a waiting thread starts watching the clock.
const SPINS_BEFORE_CLOCK: u32 = 1 << 10;
/// Spinning time before a waiting thread starts yielding its core.
const SPIN_TIME: Duration = Duration::from_micros(50);
/// A wait this long means a partner lost its core.
const SLOW_WAIT: Duration = Duration::from_micros(300);
/// Stalls after which a team dissolves.
const SLOW_WAITS_TO_DISSOLVE: usize = 1;

impl SpinBarrier {
    fn new(size: usize) -> Self {
        Self {
            size,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
            slow_waits: AtomicUsize::new(0),
            dissolve: AtomicBool::new(false),
        }
    }

    fn wait(&self) {
        if self.size == 1 {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.size {
            // Last to arrive: every member's earlier `slow_waits` increments
            // are visible through `arrived`; publish the decision with the
            // new generation.
            self.arrived.store(0, Ordering::Relaxed);
            if self.slow_waits.load(Ordering::Relaxed) >= SLOW_WAITS_TO_DISSOLVE
                || forced_dissolve(generation)
            {
                self.dissolve.store(true, Ordering::Relaxed);
            }
            self.generation
                .store(generation.wrapping_add(1), Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        let mut clock: Option<Instant> = None;
        let mut yielding = false;
        while self.generation.load(Ordering::Acquire) == generation {
            if self.poisoned.load(Ordering::Relaxed) {
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
        if clock.is_some_and(|start| start.elapsed() > SLOW_WAIT) {
            self.slow_waits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the team should dissolve; the same answer for every member
    /// between two barriers.
    fn dissolving(&self) -> bool {
        self.dissolve.load(Ordering::Relaxed)
    }
}

/// Tests set this to `n > 0` to dissolve every team at its `n`-th barrier.
#[cfg(test)]
static DISSOLVE_AT: AtomicUsize = AtomicUsize::new(0);

/// Tests set this to `1 + s` (leaders wait for their members, however long
/// they take to start, and hand over at step `s`) or to [`NEVER`] (leaders
/// always work alone).
#[cfg(test)]
static START_MODE: AtomicUsize = AtomicUsize::new(PENDING);

const NEVER: usize = usize::MAX;

/// Whether the leader, at `step`, should send its members away.
fn too_late(step: usize, steps: usize) -> bool {
    match start_mode() {
        PENDING => steps - step < MIN_JOIN_STEPS,
        mode => mode == NEVER,
    }
}

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

/// The threads working on one direction and the buffers they exchange.
///
/// The leader (the calling thread) starts the sequence alone; the members,
/// freshly spawned, report in [`Team::join`] and the leader hands them their
/// units at the next step boundary, or sends them away if they start too
/// late.
///
/// Member `k` owns hidden units `units[k]` (all gates of those units, and
/// their cell state) and the output columns `cols[k]` (the same units
/// without projection, a slice of the projection otherwise). Each step it
/// publishes its columns of `h` for the whole batch; after the barrier every
/// member gathers the full `h` for the next step. The published buffers are
/// double-buffered by step parity so that one barrier per step suffices.
/// The locks are never contended: the barrier orders writers and readers.
struct Team<T> {
    size: usize,
    barrier: SpinBarrier,
    units: Vec<Range<usize>>,
    cols: Vec<Range<usize>>,
    /// `[parity][member]`: `(B, cols[member].len())`.
    h_pub: [Vec<Mutex<Vec<T>>>; 2],
    /// With projection, `[member]`: the unprojected `h`, `(B, units[member].len())`.
    hid_pub: Vec<Mutex<Vec<T>>>,
    /// LSTM final cell state, `[member]`: `(B, units[member].len())`.
    c_pub: Vec<Mutex<Vec<T>>>,
    /// Members (other than the leader) that have started.
    joined: AtomicUsize,
    /// The leader's decision for the waiting members: [`PENDING`],
    /// [`CANCELLED`], or `1 + s` to start at step `s`.
    start: AtomicUsize,
}

const PENDING: usize = 0;
const CANCELLED: usize = usize::MAX;

/// Fewest remaining steps for which the leader still hands work over to
/// members that started late: the hand-over repacks the leader's weights.
const MIN_JOIN_STEPS: usize = 8;

impl<T: Float> Team<T> {
    fn new(
        geom: Geometry,
        units: Vec<Range<usize>>,
        cols: Vec<Range<usize>>,
        projects: bool,
    ) -> Self {
        let size = units.len();
        debug_assert_eq!(size, cols.len());
        let b = geom.batch;
        let bufs = |ranges: &[Range<usize>]| -> Vec<Mutex<Vec<T>>> {
            ranges
                .iter()
                .map(|r| Mutex::new(vec![T::ZERO; b * r.len()]))
                .collect()
        };
        let many = size > 1;
        Self {
            size,
            barrier: SpinBarrier::new(size),
            h_pub: [
                if many { bufs(&cols) } else { Vec::new() },
                if many { bufs(&cols) } else { Vec::new() },
            ],
            hid_pub: if many && projects {
                bufs(&units)
            } else {
                Vec::new()
            },
            c_pub: if many { bufs(&units) } else { Vec::new() },
            units,
            cols,
            joined: AtomicUsize::new(0),
            start: AtomicUsize::new(PENDING),
        }
    }

    /// The leader, before step `step` (which it would run alone): whether
    /// every member has started and the team should take over from here.
    fn ready(&self, step: usize, steps: usize) -> bool {
        match start_mode() {
            NEVER => false,
            PENDING => {
                steps - step >= MIN_JOIN_STEPS
                    && self.joined.load(Ordering::Acquire) + 1 == self.size
            }
            // Tests: wait for the members at exactly this step.
            mode if mode == step + 1 => {
                while self.joined.load(Ordering::Acquire) + 1 < self.size {
                    std::thread::yield_now();
                }
                true
            }
            _ => false,
        }
    }

    /// The leader: lets the waiting members start at `step`.
    fn go(&self, step: usize) {
        self.start.store(step + 1, Ordering::Release);
    }

    /// The leader: sends members that start (or started) too late away.
    fn cancel(&self) {
        self.start.store(CANCELLED, Ordering::Release);
    }

    /// A member: reports for work and waits for the leader's decision, the
    /// step to start at or `None`.
    fn join(&self) -> Option<usize> {
        self.joined.fetch_add(1, Ordering::AcqRel);
        let mut spins = 0u32;
        loop {
            match self.start.load(Ordering::Acquire) {
                PENDING => {
                    spins = spins.saturating_add(1);
                    if spins < SPINS_BEFORE_CLOCK {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
                CANCELLED => return None,
                go => return Some(go - 1),
            }
        }
    }
}

/// Copies `src` (`(B, width)`, this member's columns) into `buf`.
fn publish<T: Float>(buf: &Mutex<Vec<T>>, src: &[T]) {
    lock(buf).copy_from_slice(src);
}

/// Assembles the full `(B, total)` matrix from every member's columns.
fn gather<T: Float>(
    bufs: &[Mutex<Vec<T>>],
    ranges: &[Range<usize>],
    batch: usize,
    total: usize,
    dst: &mut [T],
) {
    for (buf, range) in bufs.iter().zip(ranges) {
        let buf = lock(buf);
        let w = range.len();
        for b in 0..batch {
            dst[b * total + range.start..b * total + range.end]
                .copy_from_slice(&buf[b * w..(b + 1) * w]);
        }
    }
}

/// The inverse of [`gather`]: hands every member its columns of the full
/// `(B, total)` matrix `src`.
fn scatter<T: Float>(
    bufs: &[Mutex<Vec<T>>],
    ranges: &[Range<usize>],
    batch: usize,
    total: usize,
    src: &[T],
) {
    for (buf, range) in bufs.iter().zip(ranges) {
        let mut buf = lock(buf);
        let w = range.len();
        for b in 0..batch {
            buf[b * w..(b + 1) * w]
                .copy_from_slice(&src[b * total + range.start..b * total + range.end]);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a partner panicked; the barrier reports that.
    m.lock().unwrap_or_else(|e| e.into_inner())
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

/// A member's share of the work: its units and output columns, its part of
/// the weights and its buffers, allocated once per call.
struct Share<'w, T: Float> {
    units: Range<usize>,
    w_hh: Weights<'w, T>,
    w_hr: Option<Weights<'w, T>>,
    /// Gate pre-activations of the units, `(B, gates * n)`.
    gates: Vec<T>,
    /// The units' new `h` (LSTM: before projection), `(B, n)`.
    h_units: Vec<T>,
    /// LSTM cell state of the units, `(B, n)`.
    c: Vec<T>,
    /// With projection: the projected columns, `(B, cols)`.
    h_cols: Vec<T>,
}

impl<'w, T: Float> Share<'w, T> {
    /// `c_full`: the `(B, H)` cell state to start from (LSTM), `None` for zeros.
    fn new(
        geom: Geometry,
        job: &Job<'w, T>,
        units: Range<usize>,
        cols: Range<usize>,
        c_full: Option<&[T]>,
    ) -> Self {
        let Geometry {
            batch,
            hidden,
            h_out,
            gates,
            ..
        } = geom;
        let n = units.len();
        let (w_hr_t, is_lstm) = match job.cell {
            Cell::Lstm { w_hr_t, .. } => (w_hr_t, true),
            Cell::Gru { .. } => (None, false),
        };
        let mut c = vec![T::ZERO; if is_lstm { batch * n } else { 0 }];
        if let (true, Some(c_full)) = (is_lstm, c_full) {
            for b in 0..batch {
                c[b * n..(b + 1) * n]
                    .copy_from_slice(&c_full[b * hidden + units.start..b * hidden + units.end]);
            }
        }
        Self {
            w_hh: Weights::new(
                job.w_hh_t,
                h_out,
                gates * hidden,
                gates,
                hidden,
                units.start,
                n,
                batch,
            ),
            w_hr: w_hr_t
                .map(|w| Weights::new(w, hidden, h_out, 1, 0, cols.start, cols.len(), batch)),
            gates: vec![T::ZERO; batch * gates * n],
            h_units: vec![T::ZERO; batch * n],
            c,
            h_cols: vec![
                T::ZERO;
                if w_hr_t.is_some() {
                    batch * cols.len()
                } else {
                    0
                }
            ],
            units,
        }
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
        gates,
    } = geom;
    let (projects, c0, b_hh) = match job.cell {
        Cell::Lstm { w_hr_t, c0 } => (w_hr_t.is_some(), c0, None),
        Cell::Gru { b_hh } => (false, None, b_hh),
    };
    let is_lstm = matches!(job.cell, Cell::Lstm { .. });
    // The leader starts alone, without waiting for the members' threads: it
    // hands their units over at the first step boundary after they have all
    // started (see `Team::ready`). A member waits for that step.
    let (first, mut sh) = if id == 0 {
        (0, Share::new(geom, job, 0..hidden, 0..h_out, c0))
    } else {
        let Some(first) = team.join() else { return };
        let mut sh = Share::new(
            geom,
            job,
            team.units[id].clone(),
            team.cols[id].clone(),
            None,
        );
        if is_lstm {
            sh.c.copy_from_slice(&lock(&team.c_pub[id]));
        }
        (first, sh)
    };
    // Working alone: the leader until the members take over, and after the
    // team dissolved.
    let mut solo = id == 0;
    // The leader may still hand over.
    let mut waiting = id == 0 && team.size > 1;

    // The full previous `h`, `(B, H_out)`, and with projection the full
    // unprojected `h`, `(B, H)`.
    let mut h_prev = vec![T::ZERO; batch * h_out];
    let mut hid_full = vec![T::ZERO; if projects { batch * hidden } else { 0 }];
    if let Some(h0) = job.h0 {
        h_prev.copy_from_slice(h0);
    }
    let zeros;
    let x_bias = match job.x_bias {
        Some(bias) => bias,
        None => {
            zeros = vec![T::ZERO; gates * hidden];
            &zeros
        }
    };

    let time = |step: usize| if job.reverse { steps - 1 - step } else { step };
    let gx_width = gates * hidden;
    for step in first..steps {
        if step > 0 {
            if !solo {
                gather(
                    &team.h_pub[(step - 1) % 2],
                    &team.cols,
                    batch,
                    h_out,
                    &mut h_prev,
                );
            }
            if let Some(leader) = leader.as_mut() {
                write_rows(&mut leader.rows, time(step - 1), batch, &h_prev);
            }
        }
        if waiting && team.ready(step, steps) {
            // Hand over: every member's columns of `h` (where the members
            // gather them) and its cell states; the leader keeps its share.
            if step > 0 {
                scatter(
                    &team.h_pub[(step - 1) % 2],
                    &team.cols,
                    batch,
                    h_out,
                    &h_prev,
                );
            }
            if is_lstm {
                scatter(&team.c_pub, &team.units, batch, hidden, &sh.c);
            }
            team.go(step);
            let c_full = std::mem::take(&mut sh.c);
            sh = Share::new(
                geom,
                job,
                team.units[0].clone(),
                team.cols[0].clone(),
                Some(&c_full),
            );
            solo = false;
            waiting = false;
        } else if waiting && too_late(step, steps) {
            team.cancel();
            waiting = false;
        }
        let t = time(step);
        let gx_t = &job.gx[t * batch * gx_width..(t + 1) * batch * gx_width];
        let units = sh.units.clone();
        let n = units.len();

        // Pre-activations: the input part (LSTM) or b_hh (GRU), plus h W_hh^T.
        for b in 0..batch {
            for g in 0..gates {
                let dst = &mut sh.gates[(b * gates + g) * n..(b * gates + g + 1) * n];
                let src = g * hidden + units.start..g * hidden + units.end;
                match (is_lstm, b_hh) {
                    (true, _) => {
                        let x = &gx_t[b * gx_width..][src.clone()];
                        for ((d, &x), &bias) in dst.iter_mut().zip(x).zip(&x_bias[src]) {
                            *d = x + bias;
                        }
                    }
                    (false, Some(bias)) => dst.copy_from_slice(&bias[src]),
                    (false, None) => dst.fill(T::ZERO),
                }
            }
        }
        // Every other step walks the weights backwards: what the previous
        // step read last is still in cache when a share is a little too
        // large for L2 (5 to 10% faster for batch 1).
        let zigzag = step % 2 == 1;
        sh.w_hh
            .mul_acc::<FMA>(&mut sh.gates, &h_prev, batch, h_out, zigzag);

        if is_lstm {
            for b in 0..batch {
                lstm_gates(
                    &mut sh.gates[b * 4 * n..(b + 1) * 4 * n],
                    &mut sh.c[b * n..(b + 1) * n],
                    &mut sh.h_units[b * n..(b + 1) * n],
                );
            }
        } else {
            for b in 0..batch {
                let x = &gx_t[b * gx_width..(b + 1) * gx_width];
                let part = |g: usize| g * hidden + units.start..g * hidden + units.end;
                gru_gates(
                    &mut sh.gates[b * 3 * n..(b + 1) * 3 * n],
                    [&x[part(0)], &x[part(1)], &x[part(2)]],
                    [&x_bias[part(0)], &x_bias[part(1)], &x_bias[part(2)]],
                    &h_prev[b * h_out + units.start..b * h_out + units.end],
                    &mut sh.h_units[b * n..(b + 1) * n],
                );
            }
        }

        if !solo && is_lstm && step + 1 == steps {
            publish(&team.c_pub[id], &sh.c);
        }
        match &sh.w_hr {
            None if solo => h_prev.copy_from_slice(&sh.h_units),
            None => publish(&team.h_pub[step % 2][id], &sh.h_units),
            Some(w_hr) => {
                if solo {
                    hid_full.copy_from_slice(&sh.h_units);
                } else {
                    publish(&team.hid_pub[id], &sh.h_units);
                    team.barrier.wait();
                    gather(&team.hid_pub, &team.units, batch, hidden, &mut hid_full);
                }
                sh.h_cols.fill(T::ZERO);
                w_hr.mul_acc::<FMA>(&mut sh.h_cols, &hid_full, batch, hidden, zigzag);
                if solo {
                    h_prev.copy_from_slice(&sh.h_cols);
                } else {
                    publish(&team.h_pub[step % 2][id], &sh.h_cols);
                }
            }
        }
        if solo {
            continue;
        }
        team.barrier.wait();

        // Every member reads the same decision after the same barrier.
        if team.barrier.dissolving() && step + 1 < steps {
            if is_lstm {
                publish(&team.c_pub[id], &sh.c);
            }
            team.barrier.wait();
            if leader.is_none() {
                return;
            }
            // The leader takes over every unit from the next step on.
            gather(&team.h_pub[step % 2], &team.cols, batch, h_out, &mut h_prev);
            let mut c_full = vec![T::ZERO; if is_lstm { batch * hidden } else { 0 }];
            if is_lstm {
                gather(&team.c_pub, &team.units, batch, hidden, &mut c_full);
            }
            sh = Share::new(geom, job, 0..hidden, 0..h_out, Some(&c_full));
            solo = true;
        }
    }

    if waiting {
        team.cancel();
    }
    // Only the leader goes on: everything it reads was published before the
    // last barrier.
    let Some(mut leader) = leader else { return };
    if !solo {
        gather(
            &team.h_pub[(steps - 1) % 2],
            &team.cols,
            batch,
            h_out,
            &mut h_prev,
        );
    }
    write_rows(&mut leader.rows, time(steps - 1), batch, &h_prev);
    leader.h_n.copy_from_slice(&h_prev);
    if let Some(c_n) = leader.c_n {
        if solo {
            c_n.copy_from_slice(&sh.c);
        } else {
            gather(&team.c_pub, &team.units, batch, hidden, c_n);
        }
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

/// The LSTM update for one batch row of `n` units: `pre` holds the
/// pre-activations `[i | f | g | o]` (overwritten by the activations), `c`
/// is updated in place, `h` written.
///
/// Two passes: the four activations first, each a loop of independent
/// elements, then the cell update. One fused loop is about 1.5 times slower:
/// each element's chain of exponentials and divisions is too long for the
/// CPU to overlap enough elements.
#[inline(always)]
fn lstm_gates<T: Float>(pre: &mut [T], c: &mut [T], h: &mut [T]) {
    let n = c.len();
    let (ifg, po) = pre.split_at_mut(3 * n);
    let (pif, pg) = ifg.split_at_mut(2 * n);
    // Separate loops: `chain`ed iterators do not vectorise.
    for v in pif.iter_mut() {
        *v = T::sigmoid(*v);
    }
    for v in po.iter_mut() {
        *v = T::sigmoid(*v);
    }
    for v in pg.iter_mut() {
        *v = T::tanh(*v);
    }
    let (pi, pf) = pif.split_at(n);
    let gates = pi.iter().zip(pf).zip(pg.iter().zip(po.iter()));
    for ((c, h), ((&i, &f), (&g, &o))) in c.iter_mut().zip(h.iter_mut()).zip(gates) {
        let c_new = f * *c + i * g;
        *c = c_new;
        *h = o * T::tanh(c_new);
    }
}

/// The GRU update for one batch row of `n` units: `hh` holds
/// `h W_hh^T + b_hh` as `[r | z | n]` (its `r` and `z` parts are overwritten
/// by the gates), `x` and `xb` the input parts and their biases, `h_prev`
/// this member's units of the previous state. Two passes, as for the LSTM.
#[inline(always)]
fn gru_gates<T: Float>(hh: &mut [T], x: [&[T]; 3], xb: [&[T]; 3], h_prev: &[T], h: &mut [T]) {
    let n = h.len();
    let (hrz, hn) = hh.split_at_mut(2 * n);
    let (r, z) = hrz.split_at_mut(n);
    let [xr, xz, xn] = x;
    let [br, bz, bn] = xb;
    for (gate, x, b) in [(&mut *r, xr, br), (&mut *z, xz, bz)] {
        for ((v, &x), &b) in gate.iter_mut().zip(x).zip(b) {
            *v = T::sigmoid(x + b + *v);
        }
    }
    let gates = r.iter().zip(z.iter()).zip(hn.iter().zip(xn.iter().zip(bn)));
    for ((h, &hp), ((&r, &z), (&hn, (&xn, &bn)))) in h.iter_mut().zip(h_prev).zip(gates) {
        let cand = T::tanh(xn + bn + r * hn);
        *h = cand + z * (hp - cand);
    }
}

// ---------------------------------------------------------------------------
// The per-step product

/// Columns per packed panel: two AVX registers of `f32`.
const NR: usize = 16;

/// Some columns of a row-major `(k, w_rs)` matrix, copied once per call into
/// panels of [`NR`] columns: panel `p` holds rows `0..k` of its columns
/// contiguously, `NR` elements per row (zero-padded), so that the
/// micro-kernel streams it linearly and the copy is reused by every step.
struct Packed<T> {
    data: Vec<T>,
    k: usize,
    /// Number of real columns (`gates * n`).
    cols: usize,
}

impl<T: Float> Packed<T> {
    /// Packs column `g * gate_stride + col0 + j` of `w` as column `g * n + j`
    /// (for `g < gates`, `j < n`): a member's columns in scratch order.
    fn new(
        w: &[T],
        w_rs: usize,
        k: usize,
        gates: usize,
        gate_stride: usize,
        col0: usize,
        n: usize,
    ) -> Self {
        let cols = gates * n;
        let panels = cols.div_ceil(NR);
        let mut data = vec![T::ZERO; panels * k * NR];
        for kk in 0..k {
            let row = &w[kk * w_rs..];
            for g in 0..gates {
                let src = &row[g * gate_stride + col0..][..n];
                for (j, &v) in src.iter().enumerate() {
                    let c = g * n + j;
                    data[((c / NR) * k + kk) * NR + c % NR] = v;
                }
            }
        }
        Self { data, k, cols }
    }
}

/// `dst[b, c] += sum_kk lhs[b, kk] * packed[kk, c]` for `b < m`, all packed
/// columns `c`; `dst` rows are `dst_rs` apart, `lhs` is `(m, k)`.
#[inline(always)]
fn gemm_packed<T: Float, const FMA: bool>(
    dst: &mut [T],
    dst_rs: usize,
    lhs: &[T],
    m: usize,
    packed: &Packed<T>,
    reverse: bool,
) {
    let k = packed.k;
    assert!(lhs.len() >= m * k && (m == 0 || dst.len() >= (m - 1) * dst_rs + packed.cols));
    let max_rows = T::TILE_ROWS;
    let panels = packed.cols.div_ceil(NR);
    for i in 0..panels {
        let p = if reverse { panels - 1 - i } else { i };
        let panel = &packed.data[p * k * NR..(p + 1) * k * NR];
        let c0 = p * NR;
        let width = NR.min(packed.cols - c0);
        let mut row = 0;
        while row < m {
            let rows = max_rows.min(m - row);
            let tile = Tile {
                dst_rs,
                c0,
                width,
                row,
                k,
            };
            match rows {
                6 => T::tile::<FMA, 6>(dst, lhs, panel, tile),
                5 => T::tile::<FMA, 5>(dst, lhs, panel, tile),
                4 => T::tile::<FMA, 4>(dst, lhs, panel, tile),
                3 => T::tile::<FMA, 3>(dst, lhs, panel, tile),
                2 => T::tile::<FMA, 2>(dst, lhs, panel, tile),
                _ => T::tile::<FMA, 1>(dst, lhs, panel, tile),
            }
            row += rows;
        }
    }
}

/// Where a micro-tile sits: rows `row..row + R` of `dst` and `lhs`, columns
/// `c0..c0 + width` of `dst`, with the `(k, NR)` panel of packed columns.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Tile {
    dst_rs: usize,
    c0: usize,
    width: usize,
    row: usize,
    k: usize,
}

impl Tile {
    /// Panics unless every element an `rows x NR` tile reads or writes is in
    /// bounds; the SIMD tiles rely on it.
    #[inline(always)]
    fn check<T>(&self, dst: &[T], lhs: &[T], panel: &[T], rows: usize) {
        assert!(
            rows > 0
                && self.width <= NR
                && panel.len() == self.k * NR
                && lhs.len() >= (self.row + rows) * self.k
                && dst.len() >= (self.row + rows - 1) * self.dst_rs + self.c0 + self.width
        );
    }
}

/// One `R x NR` tile in plain Rust: the reference for the SIMD versions.
#[inline(always)]
fn tile_portable<T: Float, const FMA: bool, const R: usize>(
    dst: &mut [T],
    lhs: &[T],
    panel: &[T],
    tile: Tile,
) {
    let Tile {
        dst_rs,
        c0,
        width,
        row,
        k,
    } = tile;
    let mut acc = [[T::ZERO; NR]; R];
    for (r, acc) in acc.iter_mut().enumerate() {
        let start = (row + r) * dst_rs + c0;
        acc[..width].copy_from_slice(&dst[start..start + width]);
    }
    let a: [&[T]; R] = std::array::from_fn(|r| &lhs[(row + r) * k..(row + r + 1) * k]);
    for (kk, w) in panel.chunks_exact(NR).enumerate() {
        let w: &[T; NR] = w.try_into().expect("panel rows have NR elements");
        for r in 0..R {
            let x = a[r][kk];
            for j in 0..NR {
                acc[r][j] = T::madd::<FMA>(x, w[j], acc[r][j]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let start = (row + r) * dst_rs + c0;
        dst[start..start + width].copy_from_slice(&acc[..width]);
    }
}

/// The micro-tiles with AVX2 + FMA intrinsics: `R` rows by [`NR`] columns,
/// accumulated in 12 or fewer registers over the whole `k` loop; each packed
/// panel row is loaded once and used for all `R` rows.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Tile, NR};
    use std::arch::x86_64::*;

    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA, and `tile.check(dst, lhs, panel, R)`
    /// must hold.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_f32<const R: usize>(
        dst: &mut [f32],
        lhs: &[f32],
        panel: &[f32],
        tile: Tile,
    ) {
        const L: usize = 8;
        let Tile {
            dst_rs,
            c0,
            width,
            row,
            k,
        } = tile;
        let mut buf = [0f32; NR];
        let mut acc = [[_mm256_setzero_ps(); NR / L]; R];
        for (r, acc) in acc.iter_mut().enumerate() {
            let d = dst.as_ptr().add((row + r) * dst_rs + c0);
            if width == NR {
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(d.add(v * L));
                }
            } else {
                buf[..width].copy_from_slice(std::slice::from_raw_parts(d, width));
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(buf.as_ptr().add(v * L));
                }
            }
        }
        let a = lhs.as_ptr().add(row * k);
        let mut w = panel.as_ptr();
        for kk in 0..k {
            let w0 = _mm256_loadu_ps(w);
            let w1 = _mm256_loadu_ps(w.add(L));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a.add(r * k + kk));
                acc[0] = _mm256_fmadd_ps(x, w0, acc[0]);
                acc[1] = _mm256_fmadd_ps(x, w1, acc[1]);
            }
            w = w.add(NR);
        }
        for (r, acc) in acc.iter().enumerate() {
            let d = dst.as_mut_ptr().add((row + r) * dst_rs + c0);
            if width == NR {
                for (v, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(d.add(v * L), *a);
                }
            } else {
                for (v, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(buf.as_mut_ptr().add(v * L), *a);
                }
                std::slice::from_raw_parts_mut(d, width).copy_from_slice(&buf[..width]);
            }
        }
    }

    /// # Safety
    ///
    /// As for [`tile_f32`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_f64<const R: usize>(
        dst: &mut [f64],
        lhs: &[f64],
        panel: &[f64],
        tile: Tile,
    ) {
        const L: usize = 4;
        let Tile {
            dst_rs,
            c0,
            width,
            row,
            k,
        } = tile;
        let mut buf = [0f64; NR];
        let mut acc = [[_mm256_setzero_pd(); NR / L]; R];
        for (r, acc) in acc.iter_mut().enumerate() {
            let d = dst.as_ptr().add((row + r) * dst_rs + c0);
            if width == NR {
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_loadu_pd(d.add(v * L));
                }
            } else {
                buf[..width].copy_from_slice(std::slice::from_raw_parts(d, width));
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_loadu_pd(buf.as_ptr().add(v * L));
                }
            }
        }
        let a = lhs.as_ptr().add(row * k);
        let mut w = panel.as_ptr();
        for kk in 0..k {
            let wv = [
                _mm256_loadu_pd(w),
                _mm256_loadu_pd(w.add(L)),
                _mm256_loadu_pd(w.add(2 * L)),
                _mm256_loadu_pd(w.add(3 * L)),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_sd(&*a.add(r * k + kk));
                for (a, wv) in acc.iter_mut().zip(wv) {
                    *a = _mm256_fmadd_pd(x, wv, *a);
                }
            }
            w = w.add(NR);
        }
        for (r, acc) in acc.iter().enumerate() {
            let d = dst.as_mut_ptr().add((row + r) * dst_rs + c0);
            if width == NR {
                for (v, a) in acc.iter().enumerate() {
                    _mm256_storeu_pd(d.add(v * L), *a);
                }
            } else {
                for (v, a) in acc.iter().enumerate() {
                    _mm256_storeu_pd(buf.as_mut_ptr().add(v * L), *a);
                }
                std::slice::from_raw_parts_mut(d, width).copy_from_slice(&buf[..width]);
            }
        }
    }
}

/// `dst[g * n + j] += sum_kk x[kk] * w[kk * w_rs + g * gate_stride + col0 + j]`
/// for `g < gates`, `j < n`: one row times some columns of the unpacked,
/// row-major `w`. Streams `w` once, four rows at a time (the last row first
/// when `reverse`), into the `gates * n` accumulators (which stay in L1).
/// For batch 1, where the step is bound by reading `w`, this beats packing
/// a copy.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn matvec_acc<T: Float, const FMA: bool>(
    dst: &mut [T],
    x: &[T],
    k: usize,
    w: &[T],
    w_rs: usize,
    gates: usize,
    gate_stride: usize,
    col0: usize,
    n: usize,
    reverse: bool,
) {
    let quads = k / 4;
    for q in 0..quads {
        let kk = if reverse { quads - 1 - q } else { q } * 4;
        let (a0, a1, a2, a3) = (x[kk], x[kk + 1], x[kk + 2], x[kk + 3]);
        for g in 0..gates {
            let off = g * gate_stride + col0;
            let r0 = &w[kk * w_rs + off..][..n];
            let r1 = &w[(kk + 1) * w_rs + off..][..n];
            let r2 = &w[(kk + 2) * w_rs + off..][..n];
            let r3 = &w[(kk + 3) * w_rs + off..][..n];
            let acc = &mut dst[g * n..(g + 1) * n];
            for ((((acc, &w0), &w1), &w2), &w3) in acc.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3) {
                let mut v = T::madd::<FMA>(a0, w0, *acc);
                v = T::madd::<FMA>(a1, w1, v);
                v = T::madd::<FMA>(a2, w2, v);
                *acc = T::madd::<FMA>(a3, w3, v);
            }
        }
    }
    for kk in quads * 4..k {
        let a = x[kk];
        for g in 0..gates {
            let r = &w[kk * w_rs + g * gate_stride + col0..][..n];
            for (acc, &wv) in dst[g * n..(g + 1) * n].iter_mut().zip(r) {
                *acc = T::madd::<FMA>(a, wv, *acc);
            }
        }
    }
}

/// A member's share of a weight matrix: its columns, used as rows (batch 1)
/// or packed into panels (larger batches).
enum Weights<'a, T: Float> {
    /// Row-major `(k, w_rs)`; the share is columns
    /// `g * gate_stride + col0 .. + n` for `g < gates`.
    Rows {
        w: Cow<'a, [T]>,
        w_rs: usize,
        gates: usize,
        gate_stride: usize,
        col0: usize,
        n: usize,
    },
    Panels(Packed<T>),
}

impl<'a, T: Float> Weights<'a, T> {
    /// Columns `g * gate_stride + col0 .. + n` (`g < gates`) of the
    /// row-major `(k, w_rs)` matrix `w`, multiplied by `batch` rows.
    ///
    /// For batch 1 the product is bound by reading the weights: they are
    /// used in place when the share is one contiguous block per row, and
    /// copied into one otherwise (a team member's share of the gate blocks),
    /// since streaming many short row segments is far slower.
    #[allow(clippy::too_many_arguments)]
    fn new(
        w: &'a [T],
        k: usize,
        w_rs: usize,
        gates: usize,
        gate_stride: usize,
        col0: usize,
        n: usize,
        batch: usize,
    ) -> Self {
        assert!(
            k == 0 || n == 0 || w.len() >= (k - 1) * w_rs + (gates - 1) * gate_stride + col0 + n
        );
        if batch != 1 {
            return Weights::Panels(Packed::new(w, w_rs, k, gates, gate_stride, col0, n));
        }
        if gates == 1 || gate_stride == n {
            return Weights::Rows {
                w: Cow::Borrowed(&w[col0..]),
                w_rs,
                gates: 1,
                gate_stride: 0,
                col0: 0,
                n: gates * n,
            };
        }
        let mut rows = Vec::with_capacity(k * gates * n);
        for kk in 0..k {
            for g in 0..gates {
                rows.extend_from_slice(&w[kk * w_rs + g * gate_stride + col0..][..n]);
            }
        }
        Weights::Rows {
            w: Cow::Owned(rows),
            w_rs: gates * n,
            gates: 1,
            gate_stride: 0,
            col0: 0,
            n: gates * n,
        }
    }

    /// `dst (m, gates * n) += lhs (m, k) @ these columns`, walking the
    /// weights backwards when `reverse` (see [`matvec_acc`]).
    #[inline(always)]
    fn mul_acc<const FMA: bool>(
        &self,
        dst: &mut [T],
        lhs: &[T],
        m: usize,
        k: usize,
        reverse: bool,
    ) {
        match self {
            Weights::Rows {
                w,
                w_rs,
                gates,
                gate_stride,
                col0,
                n,
            } => {
                for b in 0..m {
                    let cols = gates * n;
                    matvec_acc::<T, FMA>(
                        &mut dst[b * cols..(b + 1) * cols],
                        &lhs[b * k..(b + 1) * k],
                        k,
                        w,
                        *w_rs,
                        *gates,
                        *gate_stride,
                        *col0,
                        *n,
                        reverse,
                    );
                }
            }
            Weights::Panels(p) => gemm_packed::<T, FMA>(dst, p.cols, lhs, m, p, reverse),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic uniform numbers in `[-scale, scale]` (xorshift).
    struct Rng(u64);

    impl Rng {
        fn vec<T: Float + From<f32>>(&mut self, len: usize, scale: f32) -> Vec<T> {
            (0..len)
                .map(|_| {
                    self.0 ^= self.0 << 13;
                    self.0 ^= self.0 >> 7;
                    self.0 ^= self.0 << 17;
                    let unit = (self.0 >> 40) as f32 / (1u64 << 24) as f32;
                    T::from((2.0 * unit - 1.0) * scale)
                })
                .collect()
        }
    }

    trait Exact: Float + From<f32> {
        fn exp(self) -> Self;
        fn tanh_exact(self) -> Self;
        fn to_f64(self) -> f64;
    }

    impl Exact for f32 {
        fn exp(self) -> Self {
            f32::exp(self)
        }
        fn tanh_exact(self) -> Self {
            f32::tanh(self)
        }
        fn to_f64(self) -> f64 {
            f64::from(self)
        }
    }

    impl Exact for f64 {
        fn exp(self) -> Self {
            f64::exp(self)
        }
        fn tanh_exact(self) -> Self {
            f64::tanh(self)
        }
        fn to_f64(self) -> f64 {
            self
        }
    }

    fn sig<T: Exact>(x: T) -> T {
        T::ONE / (T::ONE + T::exp(T::ZERO - x))
    }

    /// `(B, K) @ (K, N)`, both row-major.
    fn matmul<T: Exact>(a: &[T], b: &[T], m: usize, k: usize, n: usize) -> Vec<T> {
        let mut out = vec![T::ZERO; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = T::ZERO;
                for kk in 0..k {
                    acc = acc + a[i * k + kk] * b[kk * n + j];
                }
                out[i * n + j] = acc;
            }
        }
        out
    }

    /// One LSTM direction, step by step: `(out (T, B, P), h_n, c_n)`.
    fn lstm_reference<T: Exact>(
        shape: RecurrentShape,
        dir: &LstmDirection<'_, T>,
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let RecurrentShape {
            steps,
            batch,
            hidden: hs,
        } = shape;
        let p = dir.w_hr_t.map_or(hs, |w| w.len() / hs);
        let mut h = dir.h0.map_or(vec![T::ZERO; batch * p], <[T]>::to_vec);
        let mut c = dir.c0.map_or(vec![T::ZERO; batch * hs], <[T]>::to_vec);
        let mut out = vec![T::ZERO; steps * batch * p];
        for step in 0..steps {
            let t = if dir.reverse { steps - 1 - step } else { step };
            let hh = matmul(&h, dir.w_hh_t, batch, p, 4 * hs);
            let mut full = vec![T::ZERO; batch * hs];
            for b in 0..batch {
                for j in 0..hs {
                    let pre = |g: usize| {
                        let bias = dir.bias.map_or(T::ZERO, |bias| bias[g * hs + j]);
                        dir.gx[(t * batch + b) * 4 * hs + g * hs + j]
                            + bias
                            + hh[b * 4 * hs + g * hs + j]
                    };
                    let (i, f, g, o) = (sig(pre(0)), sig(pre(1)), pre(2).tanh_exact(), sig(pre(3)));
                    let cn = f * c[b * hs + j] + i * g;
                    c[b * hs + j] = cn;
                    full[b * hs + j] = o * cn.tanh_exact();
                }
            }
            h = match dir.w_hr_t {
                Some(w) => matmul(&full, w, batch, hs, p),
                None => full,
            };
            out[t * batch * p..(t + 1) * batch * p].copy_from_slice(&h);
        }
        (out, h, c)
    }

    /// One GRU direction, step by step: `(out (T, B, H), h_n)`.
    fn gru_reference<T: Exact>(
        shape: RecurrentShape,
        dir: &GruDirection<'_, T>,
    ) -> (Vec<T>, Vec<T>) {
        let RecurrentShape {
            steps,
            batch,
            hidden: hs,
        } = shape;
        let mut h = dir.h0.map_or(vec![T::ZERO; batch * hs], <[T]>::to_vec);
        let mut out = vec![T::ZERO; steps * batch * hs];
        for step in 0..steps {
            let t = if dir.reverse { steps - 1 - step } else { step };
            let hh = matmul(&h, dir.w_hh_t, batch, hs, 3 * hs);
            let mut next = vec![T::ZERO; batch * hs];
            for b in 0..batch {
                for j in 0..hs {
                    let x = |g: usize| {
                        let bias = dir.b_ih.map_or(T::ZERO, |bias| bias[g * hs + j]);
                        dir.gx[(t * batch + b) * 3 * hs + g * hs + j] + bias
                    };
                    let hg = |g: usize| {
                        hh[b * 3 * hs + g * hs + j]
                            + dir.b_hh.map_or(T::ZERO, |bias| bias[g * hs + j])
                    };
                    let r = sig(x(0) + hg(0));
                    let z = sig(x(1) + hg(1));
                    let n = (x(2) + r * hg(2)).tanh_exact();
                    next[b * hs + j] = (T::ONE - z) * n + z * h[b * hs + j];
                }
            }
            h = next;
            out[t * batch * hs..(t + 1) * batch * hs].copy_from_slice(&h);
        }
        (out, h)
    }

    /// Interleaves per-direction `(T, B, W)` outputs into `(T, B, D * W)`.
    fn interleave<T: Float>(outs: &[Vec<T>], width: usize) -> Vec<T> {
        let rows = outs[0].len() / width;
        let mut all = Vec::with_capacity(rows * width * outs.len());
        for r in 0..rows {
            for o in outs {
                all.extend_from_slice(&o[r * width..(r + 1) * width]);
            }
        }
        all
    }

    fn assert_close<T: Exact>(what: &str, got: &[T], want: &[T], tol: f64) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let worst = got
            .iter()
            .zip(want)
            .map(|(g, w)| (g.to_f64() - w.to_f64()).abs())
            .fold(0.0, f64::max);
        assert!(worst <= tol, "{what}: max abs error {worst:e} > {tol:e}");
    }

    #[derive(Debug, Clone, Copy)]
    struct Case {
        steps: usize,
        batch: usize,
        hidden: usize,
        proj: usize,
        bidirectional: bool,
        reverse: bool,
        with_state: bool,
        threads: usize,
    }

    impl Case {
        fn new(steps: usize, batch: usize, hidden: usize) -> Self {
            Self {
                steps,
                batch,
                hidden,
                proj: 0,
                bidirectional: false,
                reverse: false,
                with_state: false,
                threads: 1,
            }
        }
    }

    fn check_lstm<T: Exact>(case: Case, tol: f64) {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (case.hidden as u64 * 31 + case.batch as u64));
        let shape = RecurrentShape {
            steps: case.steps,
            batch: case.batch,
            hidden: case.hidden,
        };
        let (hs, b, t) = (case.hidden, case.batch, case.steps);
        let p = if case.proj > 0 { case.proj } else { hs };
        let d = if case.bidirectional { 2 } else { 1 };
        let scale = 1.0 / (p as f32).sqrt();
        let data: Vec<_> = (0..d)
            .map(|_| {
                (
                    rng.vec::<T>(t * b * 4 * hs, 2.0),
                    rng.vec::<T>(p * 4 * hs, 2.0 * scale),
                    rng.vec::<T>(hs * p, 1.5 / (hs as f32).sqrt()),
                    rng.vec::<T>(b * p, 0.5),
                    rng.vec::<T>(b * hs, 0.5),
                    rng.vec::<T>(4 * hs, 1.0),
                )
            })
            .collect();
        // Biases in some cases only, so that both code paths run.
        let with_bias = hs % 2 == 0;
        let dirs: Vec<_> = data
            .iter()
            .enumerate()
            .map(|(i, (gx, w_hh_t, w_hr_t, h0, c0, bias))| LstmDirection {
                gx,
                bias: with_bias.then_some(bias.as_slice()),
                w_hh_t,
                w_hr_t: (case.proj > 0).then_some(w_hr_t.as_slice()),
                h0: case.with_state.then_some(h0.as_slice()),
                c0: case.with_state.then_some(c0.as_slice()),
                reverse: i == 1 || case.reverse,
            })
            .collect();
        let mut out = vec![T::ZERO; t * b * d * p];
        let mut h_n = vec![T::ZERO; d * b * p];
        let mut c_n = vec![T::ZERO; d * b * hs];
        lstm_recurrence(shape, &dirs, &mut out, &mut h_n, &mut c_n, case.threads).unwrap();

        let refs: Vec<_> = dirs.iter().map(|dir| lstm_reference(shape, dir)).collect();
        let want_out = interleave(&refs.iter().map(|r| r.0.clone()).collect::<Vec<_>>(), p);
        let want_h: Vec<T> = refs.iter().flat_map(|r| r.1.clone()).collect();
        let want_c: Vec<T> = refs.iter().flat_map(|r| r.2.clone()).collect();
        assert_close(&format!("{case:?} out"), &out, &want_out, tol);
        assert_close(&format!("{case:?} h_n"), &h_n, &want_h, tol);
        assert_close(&format!("{case:?} c_n"), &c_n, &want_c, tol);
    }

    fn check_gru<T: Exact>(case: Case, bias: (bool, bool), tol: f64) {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ (case.hidden as u64 * 17 + case.batch as u64));
        let shape = RecurrentShape {
            steps: case.steps,
            batch: case.batch,
            hidden: case.hidden,
        };
        let (hs, b, t) = (case.hidden, case.batch, case.steps);
        let d = if case.bidirectional { 2 } else { 1 };
        let scale = 2.0 / (hs as f32).sqrt();
        let data: Vec<_> = (0..d)
            .map(|_| {
                (
                    rng.vec::<T>(t * b * 3 * hs, 2.0),
                    rng.vec::<T>(hs * 3 * hs, scale),
                    rng.vec::<T>(3 * hs, 0.5),
                    rng.vec::<T>(b * hs, 0.5),
                    rng.vec::<T>(3 * hs, 1.0),
                )
            })
            .collect();
        let dirs: Vec<_> = data
            .iter()
            .enumerate()
            .map(|(i, (gx, w_hh_t, b_hh, h0, b_ih))| GruDirection {
                gx,
                w_hh_t,
                b_ih: bias.0.then_some(b_ih.as_slice()),
                b_hh: bias.1.then_some(b_hh.as_slice()),
                h0: case.with_state.then_some(h0.as_slice()),
                reverse: i == 1 || case.reverse,
            })
            .collect();
        let mut out = vec![T::ZERO; t * b * d * hs];
        let mut h_n = vec![T::ZERO; d * b * hs];
        gru_recurrence(shape, &dirs, &mut out, &mut h_n, case.threads).unwrap();

        let refs: Vec<_> = dirs.iter().map(|dir| gru_reference(shape, dir)).collect();
        let want_out = interleave(&refs.iter().map(|r| r.0.clone()).collect::<Vec<_>>(), hs);
        let want_h: Vec<T> = refs.iter().flat_map(|r| r.1.clone()).collect();
        assert_close(&format!("{case:?} bias={bias:?} out"), &out, &want_out, tol);
        assert_close(&format!("{case:?} bias={bias:?} h_n"), &h_n, &want_h, tol);
    }

    /// Small cases (single-threaded teams), B = 1 (hand-written product) and
    /// B > 1 (gemm), with every option.
    fn small_cases() -> Vec<Case> {
        let mut cases = Vec::new();
        for batch in [1, 3] {
            for hidden in [5, 16, 24] {
                for proj in [0, 3] {
                    for (bidirectional, reverse) in [(false, false), (false, true), (true, false)] {
                        for with_state in [false, true] {
                            for threads in [1, 2] {
                                cases.push(Case {
                                    proj,
                                    bidirectional,
                                    reverse,
                                    with_state,
                                    threads,
                                    ..Case::new(7, batch, hidden)
                                });
                            }
                        }
                    }
                }
            }
        }
        cases
    }

    /// Cases large enough that one direction is split over 2 or 3 threads.
    fn team_cases() -> Vec<Case> {
        let mut cases = Vec::new();
        // The last one projects to as many features as it has units, which
        // PyTorch forbids but the kernel accepts.
        for (batch, hidden, proj) in [
            (1, 136, 0),
            (1, 256, 72),
            (5, 100, 0),
            (4, 128, 40),
            (5, 64, 64),
        ] {
            for threads in [2, 3, 4] {
                for (bidirectional, reverse) in [(false, false), (false, true), (true, false)] {
                    cases.push(Case {
                        proj,
                        bidirectional,
                        reverse,
                        with_state: batch != 1,
                        threads,
                        ..Case::new(6, batch, hidden)
                    });
                }
            }
        }
        cases
    }

    #[test]
    fn lstm_matches_reference_f32() {
        for case in small_cases() {
            check_lstm::<f32>(case, 1e-5);
        }
    }

    #[test]
    fn lstm_matches_reference_f64() {
        for case in small_cases() {
            check_lstm::<f64>(case, 1e-12);
        }
    }

    #[test]
    fn lstm_teams_match_reference() {
        for case in team_cases() {
            check_lstm::<f32>(case, 1e-5);
            check_lstm::<f64>(case, 1e-12);
        }
    }

    #[test]
    fn lstm_long_sequence_stays_close() {
        for batch in [1, 2] {
            check_lstm::<f32>(
                Case {
                    bidirectional: true,
                    threads: 2,
                    ..Case::new(200, batch, 32)
                },
                1e-5,
            );
        }
    }

    #[test]
    fn gru_matches_reference_f32() {
        for case in small_cases().into_iter().filter(|c| c.proj == 0) {
            for bias in [(false, false), (true, true), (false, true), (true, false)] {
                check_gru::<f32>(case, bias, 1e-5);
            }
        }
    }

    #[test]
    fn gru_matches_reference_f64() {
        for case in small_cases().into_iter().filter(|c| c.proj == 0) {
            for bias in [(false, false), (true, true), (false, true), (true, false)] {
                check_gru::<f64>(case, bias, 1e-12);
            }
        }
    }

    #[test]
    fn gru_teams_match_reference() {
        for case in team_cases().into_iter().filter(|c| c.proj == 0) {
            check_gru::<f32>(case, (true, true), 1e-5);
            check_gru::<f64>(case, (true, true), 1e-12);
        }
    }

    #[test]
    fn portable_code_matches_reference() {
        PORTABLE_ONLY.store(true, Ordering::Relaxed);
        let cases = [
            Case {
                proj: 3,
                with_state: true,
                ..Case::new(5, 1, 16)
            },
            Case {
                bidirectional: true,
                threads: 2,
                ..Case::new(5, 3, 24)
            },
            Case {
                proj: 40,
                threads: 2,
                ..Case::new(4, 4, 128)
            },
        ];
        for case in cases {
            check_lstm::<f32>(case, 1e-5);
            check_lstm::<f64>(case, 1e-12);
            if case.proj == 0 {
                check_gru::<f32>(case, (true, true), 1e-5);
            }
        }
        PORTABLE_ONLY.store(false, Ordering::Relaxed);
    }

    /// Teams whose members take over at the first step, or later, or never,
    /// and teams that dissolve part-way (barrier 1 ends the first team step,
    /// or its first half with a projection; the leader then finishes alone).
    /// The hooks are global, so other tests running meanwhile may take these
    /// paths too (they check results, which do not depend on the path).
    #[test]
    fn every_team_path_matches_reference() {
        let hand_over_at = |step: usize| step + 1;
        let modes = [
            (hand_over_at(0), 0),
            (hand_over_at(3), 0),
            (NEVER, 0),
            (hand_over_at(0), 1),
            (hand_over_at(0), 2),
            (hand_over_at(0), 5),
            (hand_over_at(2), 1),
        ];
        for (mode, dissolve_at) in modes {
            START_MODE.store(mode, Ordering::Relaxed);
            DISSOLVE_AT.store(dissolve_at, Ordering::Relaxed);
            for case in team_cases() {
                check_lstm::<f32>(case, 1e-5);
                if case.proj == 0 {
                    check_gru::<f64>(case, (true, false), 1e-12);
                }
            }
        }
        START_MODE.store(PENDING, Ordering::Relaxed);
        DISSOLVE_AT.store(0, Ordering::Relaxed);
    }

    #[test]
    fn team_cases_really_split() {
        let geom = |batch, hidden, h_out| Geometry {
            steps: 1,
            batch,
            hidden,
            h_out,
            gates: 4,
        };
        assert_eq!(team_size(&geom(1, 136, 136), 2), 2);
        assert_eq!(team_size(&geom(1, 136, 136), 4), 4);
        assert_eq!(team_size(&geom(4, 128, 40), 3), 3);
        assert_eq!(team_size(&geom(1, 24, 24), 2), 1);
    }

    #[test]
    fn zero_steps_return_the_initial_state() {
        let shape = RecurrentShape {
            steps: 0,
            batch: 2,
            hidden: 3,
        };
        let w = vec![0.5f32; 3 * 12];
        let h0 = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let dirs = [LstmDirection {
            gx: &[],
            bias: None,
            w_hh_t: &w,
            w_hr_t: None,
            h0: Some(&h0),
            c0: None,
            reverse: false,
        }; 2];
        let (mut h_n, mut c_n) = (vec![9.0f32; 12], vec![9.0f32; 12]);
        lstm_recurrence(shape, &dirs, &mut [], &mut h_n, &mut c_n, 2).unwrap();
        assert_eq!(h_n[..6], h0);
        assert_eq!(h_n[6..], h0);
        assert!(c_n.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn wrong_lengths_are_reported() {
        let shape = RecurrentShape {
            steps: 2,
            batch: 1,
            hidden: 2,
        };
        let gx = vec![0.0f32; 2 * 8];
        let w = vec![0.0f32; 2 * 8];
        let dir = LstmDirection {
            gx: &gx,
            bias: None,
            w_hh_t: &w,
            w_hr_t: None,
            h0: None,
            c0: None,
            reverse: false,
        };
        let (mut h_n, mut c_n) = (vec![0.0f32; 2], vec![0.0f32; 2]);
        let err = lstm_recurrence(shape, &[dir], &mut [0.0; 3], &mut h_n, &mut c_n, 1).unwrap_err();
        assert!(
            err.to_string().contains("out has 3 elements, expected 4"),
            "{err}"
        );
        let bad = LstmDirection {
            w_hh_t: &w[1..],
            ..dir
        };
        assert!(lstm_recurrence(shape, &[bad], &mut [0.0; 4], &mut h_n, &mut c_n, 1).is_err());
        let gru = GruDirection {
            gx: &gx,
            b_ih: None,
            w_hh_t: &w,
            b_hh: None,
            h0: None,
            reverse: false,
        };
        let err = gru_recurrence(shape, &[gru], &mut [0.0; 4], &mut h_n, 1).unwrap_err();
        assert!(
            err.to_string().contains("gx has 16 elements, expected 12"),
            "{err}"
        );
    }

    #[test]
    fn f32_activations_are_accurate() {
        let (mut worst_exp, mut worst_sig, mut worst_tanh) = (0.0f64, 0.0f64, 0.0f64);
        let mut x = -90.0f32;
        while x <= 90.0 {
            let want = f64::from(x).exp();
            if (-87.0..=88.0).contains(&x) {
                worst_exp = worst_exp.max(((f64::from(exp_f32(x)) - want) / want).abs());
            }
            let sig_want = 1.0 / (1.0 + (-f64::from(x)).exp());
            worst_sig = worst_sig.max((f64::from(<f32 as Float>::sigmoid(x)) - sig_want).abs());
            let tanh_want = f64::from(x).tanh();
            let tanh_err = (f64::from(tanh_f32(x)) - tanh_want).abs();
            worst_tanh = worst_tanh.max(tanh_err / tanh_want.abs().max(1.0));
            // Fine steps where the functions curve, coarse in the tails.
            x += if x.abs() < 10.0 {
                1.0 / 1024.0
            } else {
                1.0 / 16.0
            };
        }
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp:e}");
        assert!(worst_sig < 2e-7, "sigmoid absolute error {worst_sig:e}");
        assert!(worst_tanh < 2e-7, "tanh error {worst_tanh:e}");
        // Relative accuracy near zero, where tanh(x) ~ x.
        for i in 1..2000 {
            let x = i as f32 * 3e-4;
            let want = f64::from(x).tanh();
            assert!(
                ((f64::from(tanh_f32(x)) - want) / want).abs() < 3e-7,
                "tanh({x})"
            );
            assert_eq!(tanh_f32(-x), -tanh_f32(x));
        }
        assert!(exp_f32(f32::NAN).is_nan() && tanh_f32(f32::NAN).is_nan());
        assert_eq!(tanh_f32(100.0), 1.0);
        assert_eq!(tanh_f32(-100.0), -1.0);
        assert_eq!(
            <f32 as Float>::sigmoid(-200.0).min(1e-30),
            <f32 as Float>::sigmoid(-200.0)
        );
        assert_eq!(<f32 as Float>::sigmoid(200.0), 1.0);
    }

    #[test]
    fn split_range_covers_everything() {
        for total in 1..100 {
            for parts in 1..6 {
                let ranges = split_range(total, parts, 8);
                assert_eq!(ranges.len(), parts);
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges.last().unwrap().end, total);
                for pair in ranges.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                    assert!(pair[0].start <= pair[0].end);
                    assert_eq!(pair[0].end % 8 * (pair[0].end != total) as usize, 0);
                }
                if total >= 8 * parts {
                    assert!(ranges.iter().all(|r| !r.is_empty()), "{total} {parts}");
                }
            }
        }
    }
}
