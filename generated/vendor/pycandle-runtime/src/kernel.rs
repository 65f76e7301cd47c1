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
//!   memory, read linearly by a register-blocked micro-kernel (AVX-512 or
//!   AVX2 + FMA intrinsics on x86-64);
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
//! On x86-64 the hot loops are compiled once more for each of AVX-512F and
//! AVX2 + FMA, and the fastest the CPU has is selected at run time
//! ([`kernel_path`], which [`KERNEL_ENV`] can force); elsewhere portable
//! Rust runs. For `f32`, `sigmoid` and `tanh` use branch-free polynomial
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
//!   per instruction set; `isa`: the instruction sets as the type parameter
//!   the time loop and the products are generic over;
//! * `gates`: the activations and the elementwise cell updates;
//! * `layer`: the public entry point [`recurrent_layer`], its checks and the
//!   sizes of a run;
//! * `schedule`: directions and teams over the available threads;
//! * `team`: the spinning barrier, the shared buffers and the rules by which
//!   a team forms and dissolves; `task` and `affinity`: the pool tasks
//!   members run as (a pool thread that ran one lingers briefly for the
//!   next), and keeping a member off its leader's core;
//! * `timeloop`: one team member's walk over the steps, and `work`: its
//!   buffers and the computation of one step for each cell kind;
//! * `tokens`: an embedding folded into a layer's input projection
//!   ([`TokenTable`]), for a layer whose input is token ids
//!   ([`recurrent_layer_from_tokens`]);
//! * `dense`: the same products for a dense layer ([`crate::Linear`]), and
//!   `task::in_parallel`, which splits work between the calling thread and
//!   pool tasks (also for [`crate::Conv1d`]).

mod affinity;
mod dense;
// Runs on the x86-64 SIMD paths only.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod direct;
mod float;
mod gates;
mod isa;
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
mod tokens;
mod weights;
mod work;

use std::error::Error;
use std::fmt;

pub(crate) use dense::dense;
pub(crate) use direct::{conv1d, direct_lanes, ConvGeometry};
pub use float::Float;
pub use layer::{recurrent_layer, recurrent_layer_from_tokens, Direction, RecurrentShape};
pub(crate) use task::{in_parallel, SPLIT_WORK};
pub use tokens::TokenTable;
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

/// `n` split into equal parts of at most `max` (at least 1): the size of
/// each. (A depth of 300 in passes of at most 256 makes two of 150, not 256
/// and a short one of 44; 32 rows in tiles of at most 12, three of 11.)
fn balanced(n: usize, max: usize) -> usize {
    let max = max.clamp(1, n.max(1));
    n.div_ceil(n.div_ceil(max).max(1)).max(1)
}

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
    /// AVX-512F with 512-bit registers, when the CPU has it (the default on
    /// such CPUs).
    Avx512,
    /// AVX2 with FMA, when the CPU has them (the default on CPUs with AVX2
    /// but not AVX-512).
    Avx2,
    /// Plain Rust that the compiler vectorises for the baseline target: every
    /// CPU. (`scalar` names it too: it has no hand-written SIMD.)
    Portable,
}

impl KernelPath {
    /// Every path, fastest first.
    pub const ALL: [KernelPath; 3] = [KernelPath::Avx512, KernelPath::Avx2, KernelPath::Portable];

    /// The value of [`KERNEL_ENV`] that forces this path.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Avx512 => "avx512",
            KernelPath::Avx2 => "avx2",
            KernelPath::Portable => "portable",
        }
    }

    /// The CPU features the path needs, as `is_x86_feature_detected!` names
    /// them.
    fn features(self) -> &'static str {
        match self {
            KernelPath::Avx512 => "avx512f, avx2 and fma",
            KernelPath::Avx2 => "avx2 and fma",
            KernelPath::Portable => "nothing",
        }
    }

    /// Whether this CPU can run the path.
    pub fn is_available(self) -> bool {
        match self {
            KernelPath::Portable => true,
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The paths this CPU can run, fastest first.
    pub fn available() -> impl Iterator<Item = KernelPath> {
        Self::ALL.into_iter().filter(|p| p.is_available())
    }
}

impl fmt::Display for KernelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The environment variable that forces a [`KernelPath`] by its
/// [name](KernelPath::name): `avx512`, `avx2`, or `portable` (also
/// `scalar`), to compare the paths on one machine; unset, the fastest path
/// the CPU has runs. A path the CPU lacks is refused: reported on stderr,
/// and the default runs instead.
pub const KERNEL_ENV: &str = "PYCANDLE_KERNEL";

/// The kernel path a value of [`KERNEL_ENV`] asks for (`None`: the fastest
/// the CPU has), or why the value is not one.
pub fn kernel_path_for(value: Option<&str>) -> std::result::Result<Option<KernelPath>, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some("avx512") => Ok(Some(KernelPath::Avx512)),
        Some("avx2") => Ok(Some(KernelPath::Avx2)),
        Some("portable") | Some("scalar") => Ok(Some(KernelPath::Portable)),
        Some(other) => Err(format!(
            "{KERNEL_ENV}={other:?} is not a kernel path (avx512, avx2, portable or scalar)"
        )),
    }
}

/// The path a value of [`KERNEL_ENV`] selects on this CPU: the one it asks
/// for if the CPU has it, else the fastest one, with the reason the value
/// was refused.
pub fn resolve_kernel_path(value: Option<&str>) -> (KernelPath, Option<String>) {
    let best = fastest_kernel_path();
    match kernel_path_for(value) {
        Ok(None) => (best, None),
        Ok(Some(path)) if path.is_available() => (path, None),
        Ok(Some(path)) => (
            best,
            Some(format!(
                "{KERNEL_ENV}={path} needs {}, which this CPU lacks",
                path.features()
            )),
        ),
        Err(e) => (best, Some(e)),
    }
}

/// The path [`KERNEL_ENV`] selects, read once; a value that is not a path,
/// or names one the CPU lacks, is reported on stderr and the default used.
pub fn requested_kernel_path() -> KernelPath {
    env_kernel_path().unwrap_or_else(fastest_kernel_path)
}

/// The fastest path the CPU has: AVX-512, then AVX2, then portable.
fn fastest_kernel_path() -> KernelPath {
    KernelPath::available()
        .next()
        .unwrap_or(KernelPath::Portable)
}

/// The path [`KERNEL_ENV`] forces, read once (`None` when unset or refused;
/// a refusal is reported on stderr).
fn env_kernel_path() -> Option<KernelPath> {
    static PATH: std::sync::OnceLock<Option<KernelPath>> = std::sync::OnceLock::new();
    *PATH.get_or_init(|| {
        let value = std::env::var(KERNEL_ENV).ok();
        let (path, refused) = resolve_kernel_path(value.as_deref());
        if let Some(why) = &refused {
            eprintln!("pycandle-runtime: {why}; using {path}");
        }
        (value.is_some_and(|v| !v.trim().is_empty()) && refused.is_none()).then_some(path)
    })
}

thread_local! {
    /// The path [`with_kernel_path`] sets for the calls on this thread.
    static FORCED: std::cell::Cell<Option<KernelPath>> = const { std::cell::Cell::new(None) };
}

/// The path the recurrent kernels take for a call on this thread: the one
/// [`with_kernel_path`] sets, else [`requested_kernel_path`] (by default the
/// fastest the CPU has: AVX-512, then AVX2, then portable). A layer run on
/// a single sequence may take AVX2 instead (see [`kernel_path_for_batch`]).
pub fn kernel_path() -> KernelPath {
    FORCED.get().unwrap_or_else(requested_kernel_path)
}

/// The path a layer over `batch` sequences takes on this thread: the one
/// [`with_kernel_path`] or [`KERNEL_ENV`] forces, else the fastest the CPU
/// has, except that a single sequence runs on AVX2 on a CPU with AVX-512.
///
/// Batch 1 is bound by reading `W_hh` from cache once per step, where the
/// wider registers gain nothing: measured with `cargo bench --bench
/// recurrent -- --paths` (2 threads), AVX2 took 0.87 to 0.95 times as long
/// as AVX-512 on 5 of 6 batch-1 shapes on an Intel Xeon with AVX-512 and
/// AMX (within the noise on the sixth, a 64-unit LSTM), and the two were
/// within the noise on an AMD EPYC (Zen 4). With a batch (4 to 16),
/// AVX-512 is the faster: AVX2 took 1.15 to 1.42 times as long on the Xeon,
/// 1.08 to 1.16 on Zen 4.
pub fn kernel_path_for_batch(batch: usize) -> KernelPath {
    if let Some(path) = FORCED.get().or_else(env_kernel_path) {
        return path;
    }
    match fastest_kernel_path() {
        KernelPath::Avx512 if batch == 1 => KernelPath::Avx2,
        path => path,
    }
}

/// Runs `f` with the recurrent kernels called on this thread taking `path`
/// (the threads a layer's call uses follow its calling thread), to compare
/// or test the paths within one process. Refuses a path the CPU lacks.
pub fn with_kernel_path<R>(
    path: KernelPath,
    f: impl FnOnce() -> R,
) -> std::result::Result<R, String> {
    if !path.is_available() {
        return Err(format!(
            "the {path} kernel path needs {}, which this CPU lacks",
            path.features()
        ));
    }
    struct Restore(Option<KernelPath>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.set(self.0);
        }
    }
    let _restore = Restore(FORCED.replace(Some(path)));
    Ok(f())
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
