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
//!
//! The code is laid out one job per file:
//!
//! * `float`: the element types (`f32`, `f64`) and their per-type plumbing;
//! * `weights`: PyTorch's parameters packed for the kernels
//!   ([`PackedWeights`]), on the panel layout of `panels`;
//! * `product` and `simd`: the matrix products, with the SIMD micro-kernels
//!   per instruction set;
//! * `gates`: the activations and the elementwise cell updates;
//! * `layer`: the public entry point [`recurrent_layer`], its checks and the
//!   sizes of a run;
//! * `schedule`: directions and teams over the available threads;
//! * `team`: the spinning barrier, the shared buffers and the rules by which
//!   a team forms and dissolves; `task` and `affinity`: the pool tasks
//!   members run as, and keeping a member off its leader's core;
//! * `timeloop`: one team member's walk over the steps, and `work`: its
//!   buffers and the computation of one step for each cell kind.

mod affinity;
mod float;
mod gates;
mod layer;
mod panels;
mod product;
mod schedule;
#[cfg(target_arch = "x86_64")]
mod simd;
mod task;
mod team;
#[cfg(test)]
mod tests;
mod timeloop;
mod weights;
mod work;

use std::error::Error;
use std::fmt;

pub use float::Float;
pub use layer::{recurrent_layer, Direction, RecurrentShape};
pub use weights::{GruWeights, LstmWeights, PackedWeights};

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

/// The instruction set the recurrent kernels run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// AVX2 with FMA, when the CPU has them (the default on such CPUs).
    Avx2,
    /// Plain Rust that the compiler vectorises: every CPU.
    Portable,
}

/// The environment variable that forces a [`KernelPath`]: `portable` (or `scalar`) runs the
/// plain-Rust kernels even where AVX2 is available, to compare the paths on one machine;
/// `avx2` or unset picks the fastest path the CPU has.
pub const KERNEL_ENV: &str = "PYCANDLE_KERNEL";

/// The kernel path a value of [`KERNEL_ENV`] asks for, or why the value is not one.
pub fn kernel_path_for(value: Option<&str>) -> std::result::Result<KernelPath, String> {
    match value.map(str::trim) {
        None | Some("") | Some("avx2") => Ok(KernelPath::Avx2),
        Some("portable") | Some("scalar") => Ok(KernelPath::Portable),
        Some(other) => Err(format!(
            "{KERNEL_ENV}={other:?} is not a kernel path (portable, scalar or avx2)"
        )),
    }
}

/// The path [`KERNEL_ENV`] asks for, read once; an unknown value is reported on stderr and
/// the default kept.
pub fn requested_kernel_path() -> KernelPath {
    static PATH: std::sync::OnceLock<KernelPath> = std::sync::OnceLock::new();
    *PATH.get_or_init(|| {
        let value = std::env::var(KERNEL_ENV).ok();
        kernel_path_for(value.as_deref()).unwrap_or_else(|e| {
            eprintln!("pycandle-runtime: {e}; using the default");
            KernelPath::Avx2
        })
    })
}

/// The path the recurrent kernels take on this CPU: [`KernelPath::Avx2`] when the CPU has
/// AVX2 and FMA and [`KERNEL_ENV`] does not ask for the portable one.
pub fn kernel_path() -> KernelPath {
    #[cfg(target_arch = "x86_64")]
    if requested_kernel_path() == KernelPath::Avx2
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
    {
        return KernelPath::Avx2;
    }
    KernelPath::Portable
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
