//! The kernels against a plain step-by-step reference, over every option,
//! thread count and team path.

use std::sync::atomic::Ordering;

use super::gates;
use super::layer::Geometry;
use super::panels::UNITS;
use super::schedule::{split_range, team_size};
use super::team::{
    SpinBarrier, ALWAYS, DISSOLVE_AT, INVITATIONS, LATE_AFTER, NEVER, PENDING, START_MODE,
};
use super::*;

/// Runs `f` in a thread pool with room for the largest team and both
/// directions of the tests (the global pool has as many threads as cores,
/// and `START_MODE = ALWAYS` waits for every member to start).
fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(16)
            .build()
            .expect("a thread pool")
    })
    .install(f)
}

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

/// `(M, K) @ (K, N)`, both row-major.
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

/// One direction's parameters and initial state, unpacked.
struct Params<T> {
    w_ih_t: Vec<T>,
    w_hh_t: Vec<T>,
    b_ih: Option<Vec<T>>,
    b_hh: Option<Vec<T>>,
    w_hr_t: Option<Vec<T>>,
    h0: Option<Vec<T>>,
    c0: Option<Vec<T>>,
    reverse: bool,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    steps: usize,
    batch: usize,
    input: usize,
    hidden: usize,
    proj: usize,
    bidirectional: bool,
    reverse: bool,
    with_state: bool,
    /// Which biases exist: `(b_ih, b_hh)`.
    bias: (bool, bool),
    threads: usize,
}

impl Case {
    fn new(steps: usize, batch: usize, hidden: usize) -> Self {
        Self {
            steps,
            batch,
            input: 7,
            hidden,
            proj: 0,
            bidirectional: false,
            reverse: false,
            with_state: false,
            bias: (true, true),
            threads: 1,
        }
    }

    fn dirs(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    fn h_out(&self) -> usize {
        if self.proj > 0 {
            self.proj
        } else {
            self.hidden
        }
    }

    fn shape(&self) -> RecurrentShape {
        RecurrentShape {
            steps: self.steps,
            batch: self.batch,
            batch_first_in: false,
            batch_first_out: false,
        }
    }

    /// Random input and parameters for `gates` gates.
    fn data<T: Exact>(&self, gates: usize, seed: u64) -> (Vec<T>, Vec<Params<T>>) {
        let mut rng =
            Rng(seed ^ (self.hidden as u64 * 31 + self.batch as u64 * 7 + self.input as u64));
        let (h, p, b, t) = (self.hidden, self.h_out(), self.batch, self.steps);
        let g = gates * h;
        let x = rng.vec::<T>(t * b * self.input, 1.5);
        let params = (0..self.dirs())
            .map(|i| Params {
                w_ih_t: rng.vec(self.input * g, 1.5 / (self.input as f32).sqrt()),
                w_hh_t: rng.vec(p * g, 2.0 / (p as f32).sqrt()),
                b_ih: self.bias.0.then(|| rng.vec(g, 1.0)),
                b_hh: self.bias.1.then(|| rng.vec(g, 1.0)),
                w_hr_t: (self.proj > 0).then(|| rng.vec(h * p, 1.5 / (h as f32).sqrt())),
                h0: self.with_state.then(|| rng.vec(b * p, 0.5)),
                c0: (self.with_state && gates == 4).then(|| rng.vec(b * h, 0.5)),
                reverse: i == 1 || self.reverse,
            })
            .collect();
        (x, params)
    }
}

/// `x W_ih^T + b_ih [+ b_hh]` for every step: `(T * B, G * H)`.
fn projection<T: Exact>(
    case: &Case,
    x: &[T],
    p: &Params<T>,
    gates: usize,
    with_b_hh: bool,
) -> Vec<T> {
    let g = gates * case.hidden;
    let mut gx = matmul(x, &p.w_ih_t, case.steps * case.batch, case.input, g);
    for row in gx.chunks_exact_mut(g) {
        for (j, v) in row.iter_mut().enumerate() {
            if let Some(b) = &p.b_ih {
                *v = *v + b[j];
            }
            if let (true, Some(b)) = (with_b_hh, &p.b_hh) {
                *v = *v + b[j];
            }
        }
    }
    gx
}

/// One LSTM direction, step by step: `(out (T, B, P), h_n, c_n)`.
fn lstm_reference<T: Exact>(case: &Case, x: &[T], p: &Params<T>) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (hs, batch, steps, po) = (case.hidden, case.batch, case.steps, case.h_out());
    let gx = projection(case, x, p, 4, true);
    let mut h = p.h0.clone().unwrap_or(vec![T::ZERO; batch * po]);
    let mut c = p.c0.clone().unwrap_or(vec![T::ZERO; batch * hs]);
    let mut out = vec![T::ZERO; steps * batch * po];
    for step in 0..steps {
        let t = if p.reverse { steps - 1 - step } else { step };
        let hh = matmul(&h, &p.w_hh_t, batch, po, 4 * hs);
        let mut full = vec![T::ZERO; batch * hs];
        for b in 0..batch {
            for j in 0..hs {
                let pre = |g: usize| {
                    gx[(t * batch + b) * 4 * hs + g * hs + j] + hh[b * 4 * hs + g * hs + j]
                };
                let (i, f, g, o) = (sig(pre(0)), sig(pre(1)), pre(2).tanh_exact(), sig(pre(3)));
                let cn = f * c[b * hs + j] + i * g;
                c[b * hs + j] = cn;
                full[b * hs + j] = o * cn.tanh_exact();
            }
        }
        h = match &p.w_hr_t {
            Some(w) => matmul(&full, w, batch, hs, po),
            None => full,
        };
        out[t * batch * po..(t + 1) * batch * po].copy_from_slice(&h);
    }
    (out, h, c)
}

/// One GRU direction, step by step: `(out (T, B, H), h_n)`.
fn gru_reference<T: Exact>(case: &Case, x: &[T], p: &Params<T>) -> (Vec<T>, Vec<T>) {
    let (hs, batch, steps) = (case.hidden, case.batch, case.steps);
    let gx = projection(case, x, p, 3, false);
    let mut h = p.h0.clone().unwrap_or(vec![T::ZERO; batch * hs]);
    let mut out = vec![T::ZERO; steps * batch * hs];
    for step in 0..steps {
        let t = if p.reverse { steps - 1 - step } else { step };
        let hh = matmul(&h, &p.w_hh_t, batch, hs, 3 * hs);
        let mut next = vec![T::ZERO; batch * hs];
        for b in 0..batch {
            for j in 0..hs {
                let xg = |g: usize| gx[(t * batch + b) * 3 * hs + g * hs + j];
                let hg = |g: usize| {
                    hh[b * 3 * hs + g * hs + j]
                        + p.b_hh.as_ref().map_or(T::ZERO, |bias| bias[g * hs + j])
                };
                let r = sig(xg(0) + hg(0));
                let z = sig(xg(1) + hg(1));
                let n = (xg(2) + r * hg(2)).tanh_exact();
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

fn check_lstm<T: Exact>(case: Case, tol: f64) {
    check::<T>(true, case, tol);
}

fn check_gru<T: Exact>(case: Case, tol: f64) {
    check::<T>(false, case, tol);
}

/// Runs `case` through the kernels (an LSTM when `lstm`, else a GRU) and
/// compares the outputs, `h_n` and `c_n` with the step-by-step reference.
fn check<T: Exact>(lstm: bool, case: Case, tol: f64) {
    let (gates, seed) = if lstm {
        (4, 0x9e37_79b9_7f4a_7c15)
    } else {
        (3, 0x2545_f491_4f6c_dd1d)
    };
    let (x, params) = case.data::<T>(gates, seed);
    let packed: Vec<_> = params
        .iter()
        .map(|p| {
            let (w_ih_t, w_hh_t) = (&p.w_ih_t[..], &p.w_hh_t[..]);
            let (b_ih, b_hh) = (p.b_ih.as_deref(), p.b_hh.as_deref());
            let packed = if lstm {
                let w_hr_t = p.w_hr_t.as_deref();
                let w = LstmWeights {
                    w_ih_t,
                    w_hh_t,
                    b_ih,
                    b_hh,
                    w_hr_t,
                };
                PackedWeights::lstm(case.input, case.hidden, w)
            } else {
                let w = GruWeights {
                    w_ih_t,
                    w_hh_t,
                    b_ih,
                    b_hh,
                };
                PackedWeights::gru(case.input, case.hidden, w)
            };
            packed.unwrap()
        })
        .collect();
    let dirs: Vec<_> = params
        .iter()
        .zip(&packed)
        .map(|(p, w)| Direction {
            weights: w,
            h0: p.h0.as_deref(),
            c0: p.c0.as_deref(),
            reverse: p.reverse,
        })
        .collect();
    let (d, b, t, po) = (case.dirs(), case.batch, case.steps, case.h_out());
    let (shape, threads) = (case.shape(), case.threads);
    // Every path this CPU has, each from a fresh output.
    let runs: Vec<_> = KernelPath::available()
        .map(|path| {
            let mut out = vec![T::ZERO; t * b * d * po];
            let mut h_n = vec![T::ZERO; d * b * po];
            let mut c_n = vec![T::ZERO; if lstm { d * b * case.hidden } else { 0 }];
            let c_out = lstm.then_some(&mut c_n[..]);
            in_pool(|| {
                with_kernel_path(path, || {
                    recurrent_layer(shape, &x, &dirs, &mut out, &mut h_n, c_out, threads)
                })
            })
            .unwrap()
            .unwrap();
            (path, out, h_n, c_n)
        })
        .collect();
    // Batch first in and out, on the path the CPU runs by default.
    let mut out_bf = vec![T::ZERO; t * b * d * po];
    let mut h_n_bf = vec![T::ZERO; d * b * po];
    let mut c_n_bf = vec![T::ZERO; if lstm { d * b * case.hidden } else { 0 }];
    let shape_bf = RecurrentShape {
        batch_first_in: true,
        batch_first_out: true,
        ..shape
    };
    let x_bf = to_batch_first(&x, t, b);
    in_pool(|| {
        let c_out = lstm.then_some(&mut c_n_bf[..]);
        recurrent_layer(
            shape_bf,
            &x_bf,
            &dirs,
            &mut out_bf,
            &mut h_n_bf,
            c_out,
            threads,
        )
    })
    .unwrap();

    // Token ids into an embedding whose rows are the steps' inputs, in
    // reverse order after two rows no id names: the same layer, its
    // projection read from tables. Time first, then batch first.
    let (input, n) = (case.input, t * b);
    let vocab = n + 2;
    let mut embedding = Rng(seed).vec::<T>(vocab * input, 1.0);
    for (i, row) in x.chunks_exact(input.max(1)).enumerate() {
        let id = vocab - 1 - i;
        embedding[id * input..(id + 1) * input].copy_from_slice(row);
    }
    let ids: Vec<u32> = (0..n).map(|i| (vocab - 1 - i) as u32).collect();
    let ids_bf: Vec<u32> = (0..n).map(|i| ids[(i % t) * b + i / t]).collect();
    let tables: Vec<_> = packed
        .iter()
        .map(|w| TokenTable::new(w, &embedding, vocab, threads).unwrap())
        .collect();
    let tables: Vec<_> = tables.iter().collect();
    let token_runs: Vec<_> = [(shape, &ids), (shape_bf, &ids_bf)]
        .into_iter()
        .map(|(shape, ids)| {
            let mut out = vec![T::ZERO; t * b * d * po];
            let mut h_n = vec![T::ZERO; d * b * po];
            let mut c_n = vec![T::ZERO; if lstm { d * b * case.hidden } else { 0 }];
            let c_out = lstm.then_some(&mut c_n[..]);
            in_pool(|| {
                recurrent_layer_from_tokens(
                    shape, ids, &dirs, &tables, &mut out, &mut h_n, c_out, threads,
                )
            })
            .unwrap();
            (shape.batch_first_out, out, h_n, c_n)
        })
        .collect();

    let refs: Vec<_> = params
        .iter()
        .map(|p| {
            if lstm {
                lstm_reference(&case, &x, p)
            } else {
                let (out, h) = gru_reference(&case, &x, p);
                (out, h, Vec::new())
            }
        })
        .collect();
    let want_out = interleave(&refs.iter().map(|r| r.0.clone()).collect::<Vec<_>>(), po);
    let want_h: Vec<T> = refs.iter().flat_map(|r| r.1.clone()).collect();
    let want_c: Vec<T> = refs.iter().flat_map(|r| r.2.clone()).collect();
    let want_bf = to_batch_first(&want_out, t, b);
    assert_close(
        &format!("batch first: {case:?} out"),
        &out_bf,
        &want_bf,
        tol,
    );
    assert_close(&format!("batch first: {case:?} h_n"), &h_n_bf, &want_h, tol);
    assert_close(&format!("batch first: {case:?} c_n"), &c_n_bf, &want_c, tol);
    for (batch_first, out, h_n, c_n) in token_runs {
        let what = format!("tokens, batch first {batch_first}: {case:?}");
        let want = if batch_first { &want_bf } else { &want_out };
        assert_close(&format!("{what} out"), &out, want, tol);
        assert_close(&format!("{what} h_n"), &h_n, &want_h, tol);
        assert_close(&format!("{what} c_n"), &c_n, &want_c, tol);
    }
    for (path, out, h_n, c_n) in runs {
        assert_close(&format!("{path}: {case:?} out"), &out, &want_out, tol);
        assert_close(&format!("{path}: {case:?} h_n"), &h_n, &want_h, tol);
        assert_close(&format!("{path}: {case:?} c_n"), &c_n, &want_c, tol);
    }
}

/// `(T, B, F)` to `(B, T, F)`.
fn to_batch_first<T: Float>(x: &[T], t: usize, b: usize) -> Vec<T> {
    let width = x.len() / (t * b).max(1);
    let mut out = vec![T::ZERO; x.len()];
    for (i, row) in x.chunks_exact(width.max(1)).enumerate() {
        let (step, item) = (i / b, i % b);
        out[(item * t + step) * width..][..width].copy_from_slice(row);
    }
    out
}

/// Small cases (single-threaded teams), B = 1 (matrix-vector product) and
/// B > 1 (tiles), with every option; hidden sizes below, at and above one
/// block of units.
fn small_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for batch in [1, 3, 7] {
        for hidden in [5, 16, 24] {
            for proj in [0, 3] {
                for (bidirectional, reverse) in [(false, false), (false, true), (true, false)] {
                    for with_state in [false, true] {
                        for threads in [1, 2] {
                            let bias = match (hidden + proj + threads) % 4 {
                                0 => (false, false),
                                1 => (true, false),
                                2 => (false, true),
                                _ => (true, true),
                            };
                            cases.push(Case {
                                proj,
                                bidirectional,
                                reverse,
                                with_state,
                                threads,
                                bias,
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

/// Cases large enough that one direction is split over 2 to 4 threads.
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
                    input: 19,
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
fn long_sequences_stay_close() {
    // Several chunks of the input projection, in both directions.
    for batch in [1, 2, 50] {
        let case = Case {
            bidirectional: true,
            threads: 2,
            ..Case::new(200, batch, 32)
        };
        check_lstm::<f32>(case, 1e-5);
        check_gru::<f32>(case, 1e-5);
    }
}

#[test]
fn gru_matches_reference_f32() {
    for case in small_cases().into_iter().filter(|c| c.proj == 0) {
        check_gru::<f32>(case, 1e-5);
    }
}

#[test]
fn gru_matches_reference_f64() {
    for case in small_cases().into_iter().filter(|c| c.proj == 0) {
        check_gru::<f64>(case, 1e-12);
    }
}

/// The GRU update four blocks of units at a time (`gates::gru_blocks`),
/// the last of them partial (60 units: 12 in the fourth block), then block
/// by block after a group (100 units: seven blocks), alone and in teams.
#[test]
fn gru_block_groups_match_reference() {
    for hidden in [60, 64, 100] {
        for threads in [1, 2] {
            let case = Case {
                bidirectional: true,
                with_state: true,
                threads,
                ..Case::new(5, 3, hidden)
            };
            check_gru::<f32>(case, 1e-5);
            check_gru::<f64>(case, 1e-12);
        }
    }
}

#[test]
fn gru_teams_match_reference() {
    for case in team_cases().into_iter().filter(|c| c.proj == 0) {
        check_gru::<f32>(case, 1e-5);
        check_gru::<f64>(case, 1e-12);
    }
}

/// Every path this CPU has runs in `check`; this test says which they are
/// (`cargo test -- --nocapture`), and that the portable one is among them.
#[test]
fn every_available_path_is_checked() {
    let paths: Vec<_> = KernelPath::available().collect();
    println!("recurrent kernel paths on this CPU: {paths:?}");
    assert!(paths.contains(&KernelPath::Portable));
    assert_eq!(paths[0], requested_kernel_path_default());
}

/// The path chosen with [`KERNEL_ENV`] unset.
fn requested_kernel_path_default() -> KernelPath {
    resolve_kernel_path(None).0
}

/// Teams whose members always or never start, teams that dissolve
/// part-way (barrier 1 ends the first team step, or its first half with a
/// projection; the leader then finishes alone), and teams whose members
/// join a leader that went ahead alone, after its first step or a later
/// one (within the first chunk, or past it), dissolving again or not. The
/// hooks are global, so other tests running meanwhile may take these paths
/// too (they check results, which do not depend on the path).
#[test]
fn every_team_path_matches_reference() {
    let modes = [
        (ALWAYS, 0),
        (NEVER, 0),
        (ALWAYS, 1),
        (ALWAYS, 2),
        (ALWAYS, 5),
        (ALWAYS, 9),
        (LATE_AFTER, 0),
        (LATE_AFTER + 1, 0),
        (LATE_AFTER + 3, 0),
        (LATE_AFTER + 1, 2),
        (LATE_AFTER + 20, 0),
    ];
    for (mode, dissolve_at) in modes {
        START_MODE.store(mode, Ordering::Relaxed);
        DISSOLVE_AT.store(dissolve_at, Ordering::Relaxed);
        let invited = INVITATIONS.load(Ordering::Relaxed);
        for case in team_cases() {
            check_lstm::<f32>(case, 1e-5);
            if case.proj == 0 {
                check_gru::<f64>(case, 1e-12);
            }
        }
        // Dissolving within a chunk of several steps.
        let long = Case {
            threads: 2,
            ..Case::new(30, 1, 136)
        };
        check_lstm::<f64>(long, 1e-12);
        check_gru::<f32>(long, 1e-5);
        if super::team::late_after(mode).is_some() {
            // The leaders did invite their members (if only in the long case).
            assert!(INVITATIONS.load(Ordering::Relaxed) > invited, "mode {mode}");
        }
    }
    START_MODE.store(PENDING, Ordering::Relaxed);
    DISSOLVE_AT.store(0, Ordering::Relaxed);
}

/// A host that takes a core away once is not reason enough to dissolve a
/// team; a second stall is. Members that waited through the same stall
/// count it once.
#[test]
fn the_second_stall_is_too_many() {
    let barrier = SpinBarrier::new(3);
    barrier.record_stall(4);
    barrier.record_stall(4);
    assert!(!barrier.stalled_too_often());
    barrier.record_stall(7);
    assert!(barrier.stalled_too_often());
}

#[test]
fn team_cases_really_split() {
    let geom = |batch, hidden: usize, h_out| Geometry {
        steps: 1,
        batch,
        input: 1,
        hidden,
        h_out,
        gates: 4,
        blocks: hidden.div_ceil(UNITS),
        width: 4 * UNITS,
        proj_panels: 0,
        chunk: 1,
        batch_first_in: false,
        batch_first_out: false,
    };
    assert_eq!(team_size(&geom(1, 136, 136), 2), 2);
    assert_eq!(team_size(&geom(1, 136, 136), 4), 4);
    assert_eq!(team_size(&geom(4, 128, 40), 3), 3);
    assert_eq!(team_size(&geom(5, 64, 64), 4), 2);
    assert_eq!(team_size(&geom(1, 24, 24), 2), 1);
}

#[test]
fn zero_steps_return_the_initial_state() {
    let shape = RecurrentShape {
        steps: 0,
        batch: 2,
        batch_first_in: true,
        batch_first_out: true,
    };
    let w = PackedWeights::lstm(
        2,
        3,
        LstmWeights {
            w_ih_t: &[0.5f32; 2 * 12],
            w_hh_t: &[0.5; 3 * 12],
            b_ih: None,
            b_hh: None,
            w_hr_t: None,
        },
    )
    .unwrap();
    let h0 = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let dirs = [Direction {
        weights: &w,
        h0: Some(&h0),
        c0: None,
        reverse: false,
    }; 2];
    let (mut h_n, mut c_n) = (vec![9.0f32; 12], vec![9.0f32; 12]);
    recurrent_layer(shape, &[], &dirs, &mut [], &mut h_n, Some(&mut c_n), 2).unwrap();
    assert_eq!(h_n[..6], h0);
    assert_eq!(h_n[6..], h0);
    assert!(c_n.iter().all(|&v| v == 0.0));
}

#[test]
fn wrong_lengths_are_reported() {
    let shape = RecurrentShape {
        steps: 2,
        batch: 1,
        batch_first_in: false,
        batch_first_out: false,
    };
    let lstm = |w_hh: &[f32]| {
        PackedWeights::lstm(
            3,
            2,
            LstmWeights {
                w_ih_t: &[0.0; 3 * 8],
                w_hh_t: w_hh,
                b_ih: None,
                b_hh: None,
                w_hr_t: None,
            },
        )
    };
    let err = lstm(&[0.0; 15]).unwrap_err();
    assert!(
        err.to_string()
            .contains("w_hh_t has 15 elements, expected 16"),
        "{err}"
    );
    let w = lstm(&[0.0; 16]).unwrap();
    let dir = Direction {
        weights: &w,
        h0: None,
        c0: None,
        reverse: false,
    };
    let x = [0.0f32; 6];
    let (mut h_n, mut c_n) = (vec![0.0f32; 2], vec![0.0f32; 2]);
    let mut run = |x: &[f32], out: &mut [f32], c_n: Option<&mut [f32]>| {
        recurrent_layer(shape, x, &[dir], out, &mut h_n, c_n, 1)
    };
    let err = run(&x, &mut [0.0; 3], Some(&mut c_n)).unwrap_err();
    assert!(
        err.to_string().contains("out has 3 elements, expected 4"),
        "{err}"
    );
    let err = run(&x[1..], &mut [0.0; 4], Some(&mut c_n)).unwrap_err();
    assert!(
        err.to_string().contains("x has 5 elements, expected 6"),
        "{err}"
    );
    assert!(run(&x, &mut [0.0; 4], None).is_err());
    let gru = PackedWeights::gru(
        3,
        2,
        GruWeights {
            w_ih_t: &[0.0f32; 3 * 6],
            w_hh_t: &[0.0; 2 * 6],
            b_ih: None,
            b_hh: None,
        },
    )
    .unwrap();
    let mixed = [
        dir,
        Direction {
            weights: &gru,
            ..dir
        },
    ];
    let err = recurrent_layer(
        shape,
        &x,
        &mixed,
        &mut [0.0; 8],
        &mut [0.0; 4],
        Some(&mut [0.0; 4]),
        1,
    )
    .unwrap_err();
    assert!(err.to_string().contains("disagree"), "{err}");

    // Token ids: one table per direction, built for its weights, and ids
    // inside its vocabulary.
    let table = TokenTable::new(&w, &[0.0; 4 * 3], 4, 1).unwrap();
    let gru_table = TokenTable::new(&gru, &[0.0; 4 * 3], 4, 1).unwrap();
    let mut tokens = |ids: &[u32], tables: &[&TokenTable<f32>]| {
        let c_n = Some(&mut c_n[..]);
        recurrent_layer_from_tokens(shape, ids, &[dir], tables, &mut [0.0; 4], &mut h_n, c_n, 1)
    };
    tokens(&[0, 3], &[&table]).unwrap();
    let err = tokens(&[0, 4], &[&table]).unwrap_err();
    assert!(
        err.to_string()
            .contains("token id 4 is outside the vocabulary of 4"),
        "{err}"
    );
    let err = tokens(&[0], &[&table]).unwrap_err();
    assert!(
        err.to_string().contains("ids has 1 elements, expected 2"),
        "{err}"
    );
    let err = tokens(&[0, 1], &[&table, &table]).unwrap_err();
    assert!(err.to_string().contains("2 token tables"), "{err}");
    let err = tokens(&[0, 1], &[&gru_table]).unwrap_err();
    assert!(err.to_string().contains("other sizes"), "{err}");
    let err = TokenTable::new(&w, &[0.0; 11], 4, 1).unwrap_err();
    assert!(
        err.to_string()
            .contains("embeddings has 11 elements, expected 12"),
        "{err}"
    );
}

/// The `f32` activations as the kernels evaluate them, lanes in lockstep,
/// with and without fused multiply-adds.
fn lockstep<const FMA: bool>(xs: &[f32], s: usize) -> Vec<f32> {
    xs.chunks(64)
        .flat_map(|chunk| {
            let mut v = [0f32; 64];
            v[..chunk.len()].copy_from_slice(chunk);
            // The first `s` lanes (or none) through the logistic function.
            gates::activate_f32::<FMA, 64>(&mut v, s);
            v[..chunk.len()].to_vec()
        })
        .collect()
}

fn check_f32_activations<const FMA: bool>() {
    let mut xs = Vec::new();
    let mut x = -90.0f32;
    while x <= 90.0 {
        xs.push(x);
        // Fine steps where the functions curve, coarse in the tails.
        x += if x.abs() < 10.0 {
            1.0 / 1024.0
        } else {
            1.0 / 16.0
        };
    }
    let sig = lockstep::<FMA>(&xs, 64);
    let tanh = lockstep::<FMA>(&xs, 0);
    let (mut worst_exp, mut worst_sig, mut worst_tanh) = (0.0f64, 0.0f64, 0.0f64);
    for ((&x, &s), &t) in xs.iter().zip(&sig).zip(&tanh) {
        if (-87.0..=88.0).contains(&x) {
            let want = f64::from(x).exp();
            let got = f64::from(gates::exp_f32::<FMA>(x));
            worst_exp = worst_exp.max(((got - want) / want).abs());
        }
        let sig_want = 1.0 / (1.0 + (-f64::from(x)).exp());
        worst_sig = worst_sig.max((f64::from(s) - sig_want).abs());
        let tanh_want = f64::from(x).tanh();
        worst_tanh = worst_tanh.max((f64::from(t) - tanh_want).abs() / tanh_want.abs().max(1.0));
        assert!((0.0..=1.0).contains(&s) && (-1.0..=1.0).contains(&t), "{x}");
    }
    assert!(worst_exp < 3e-7, "exp relative error {worst_exp:e}");
    assert!(worst_sig < 2e-7, "sigmoid absolute error {worst_sig:e}");
    assert!(worst_tanh < 2e-7, "tanh error {worst_tanh:e}");
    // Relative accuracy near zero, where tanh(x) ~ x, and odd symmetry.
    let small: Vec<f32> = (1..2000).map(|i| i as f32 * 3e-4).collect();
    let neg: Vec<f32> = small.iter().map(|x| -x).collect();
    for ((&x, &t), &tn) in small
        .iter()
        .zip(&lockstep::<FMA>(&small, 0))
        .zip(&lockstep::<FMA>(&neg, 0))
    {
        let want = f64::from(x).tanh();
        assert!(((f64::from(t) - want) / want).abs() < 3e-7, "tanh({x})");
        assert_eq!(tn, -t);
    }
    let special = lockstep::<FMA>(&[f32::NAN, 100.0, -100.0, -200.0, 200.0], 0);
    assert!(special[0].is_nan() && special[1] == 1.0 && special[2] == -1.0);
    let special = lockstep::<FMA>(&[f32::NAN, -200.0, 200.0], 64);
    assert!(special[0].is_nan() && special[1] < 1e-30 && special[2] == 1.0);
    // The scalar functions are the same computation.
    for &x in &xs {
        assert_eq!(
            <f32 as Float>::sigmoid(x).to_bits(),
            lockstep::<false>(&[x], 64)[0].to_bits()
        );
        assert_eq!(
            <f32 as Float>::tanh(x).to_bits(),
            lockstep::<false>(&[x], 0)[0].to_bits()
        );
    }
}

#[test]
fn f32_activations_are_accurate() {
    check_f32_activations::<false>();
    check_f32_activations::<true>();
}

#[test]
fn split_range_covers_everything() {
    for total in 0..100 {
        for parts in 1..6 {
            let ranges = split_range(total, parts);
            assert_eq!(ranges.len(), parts);
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges.last().unwrap().end, total);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
            }
            let (min, max) = ranges
                .iter()
                .map(|r| r.len())
                .fold((usize::MAX, 0), |(a, b), n| (a.min(n), b.max(n)));
            assert!(max - min <= 1, "{total} {parts}");
        }
    }
}

#[test]
fn the_kernel_path_variable_is_read_strictly() {
    assert_eq!(kernel_path_for(None), Ok(None));
    assert_eq!(kernel_path_for(Some("")), Ok(None));
    assert_eq!(
        kernel_path_for(Some("avx512")),
        Ok(Some(KernelPath::Avx512))
    );
    assert_eq!(kernel_path_for(Some("avx2")), Ok(Some(KernelPath::Avx2)));
    assert_eq!(
        kernel_path_for(Some(" portable ")),
        Ok(Some(KernelPath::Portable))
    );
    assert_eq!(
        kernel_path_for(Some("scalar")),
        Ok(Some(KernelPath::Portable))
    );
    let err = kernel_path_for(Some("avx512bw")).unwrap_err();
    assert!(
        err.contains("PYCANDLE_KERNEL=\"avx512bw\" is not a kernel path"),
        "{err}"
    );
    for path in KernelPath::ALL {
        assert_eq!(kernel_path_for(Some(path.name())), Ok(Some(path)));
    }
}

#[test]
fn a_path_the_cpu_lacks_is_refused() {
    // The default is the fastest path the CPU has.
    let best = KernelPath::available().next().unwrap();
    assert_eq!(resolve_kernel_path(None), (best, None));
    assert_eq!(resolve_kernel_path(Some("nonsense")).0, best);
    for path in KernelPath::ALL {
        let (got, refused) = resolve_kernel_path(Some(path.name()));
        let forced = with_kernel_path(path, kernel_path);
        if path.is_available() {
            assert_eq!((got, refused), (path, None));
            assert_eq!(forced, Ok(path));
        } else {
            assert_eq!(got, best);
            let why = refused.unwrap();
            assert!(why.contains("which this CPU lacks"), "{why}");
            assert!(forced.unwrap_err().contains("which this CPU lacks"));
        }
    }
    // The override ends with the closure.
    let outside = kernel_path();
    let _ = with_kernel_path(KernelPath::Portable, || {
        assert_eq!(kernel_path(), KernelPath::Portable)
    });
    assert_eq!(kernel_path(), outside);
}

/// A forced path holds at every batch; by default a single sequence runs on
/// AVX2 where the CPU has AVX-512, and a batch on the fastest path.
#[test]
fn batch_one_prefers_avx2_unless_forced() {
    for path in KernelPath::available() {
        let _ = with_kernel_path(path, || {
            assert_eq!(kernel_path_for_batch(1), path);
            assert_eq!(kernel_path_for_batch(7), path);
        });
    }
    if std::env::var(KERNEL_ENV).is_ok() {
        return;
    }
    let best = requested_kernel_path_default();
    assert_eq!(kernel_path_for_batch(2), best);
    let single = if best == KernelPath::Avx512 {
        KernelPath::Avx2
    } else {
        best
    };
    assert_eq!(kernel_path_for_batch(1), single);
}

/// `mul_acc` on `isa` against the plain product, for `m` rows of every count
/// up to three AVX-512 tiles and more, depths across the slices of a pass,
/// and panels of one sub-panel (plain), three and four (GRU and LSTM gates);
/// and `mul_acc_in_place` on the same rows spaced apart in a matrix. Each
/// product either adds to what the destination holds or starts from a bias
/// (the destination then holds NaN, which must not be read).
fn check_products<I: super::isa::Isa>() {
    use super::panels::Panels;
    use super::product::{mul_acc, mul_acc_in_place, Rows};
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    for k in [1, 37, 700, 1500] {
        for (gates, hidden) in [(1, 40), (3, 16), (4, 40)] {
            let n = gates * hidden;
            let w_t: Vec<f32> = rng.vec(k * n, 1.0);
            let order: Vec<usize> = (0..gates).collect();
            let panels = if gates == 1 {
                Panels::plain(&w_t, k, n)
            } else {
                Panels::gates(&w_t, k, &order, hidden)
            };
            // Column `c` of the packed product is source column `col(c)`.
            let width = panels.width();
            let col = |c: usize| -> Option<usize> {
                if gates == 1 {
                    (c < n).then_some(c)
                } else {
                    let (p, c) = (c / width, c % width);
                    let unit = p * UNITS + c % UNITS;
                    (unit < hidden).then_some(c / UNITS * hidden + unit)
                }
            };
            for m in (1..=26).chain([37, 64]) {
                let lhs: Vec<f32> = rng.vec(m * k, 1.0);
                let want = matmul(&lhs, &w_t, m, k, n);
                // The same rows read in place by `mul_acc_in_place`, `k + 3` apart.
                let spaced_rs = k + 3;
                let mut spaced = vec![0f32; m * spaced_rs];
                for (r, row) in lhs.chunks_exact(k).enumerate() {
                    spaced[r * spaced_rs..][..k].copy_from_slice(row);
                }
                let cols = panels.count() * width;
                let start: Vec<f32> = rng.vec(cols, 1.0);
                // The destination before the product: `start` in every row to
                // add to, or NaN under a bias.
                let before = |bias: bool| -> Vec<f32> {
                    if bias {
                        vec![f32::NAN; m * cols]
                    } else {
                        start.repeat(m)
                    }
                };
                let biased = m % 3 == 0;
                let mut dst = before(biased);
                let mut scratch = Vec::new();
                let all = 0..panels.count();
                // An even count reads its rows as the steps of a batch-first
                // input of two items.
                let (lhs, rows) = if m % 2 == 0 {
                    let steps = m / 2;
                    let mut bf = vec![0f32; m * k];
                    for (r, row) in lhs.chunks_exact(k).enumerate() {
                        bf[(r % 2 * steps + r / 2) * k..][..k].copy_from_slice(row);
                    }
                    let rows = Rows {
                        stride: steps * k,
                        group: 2,
                        group_stride: k,
                    };
                    (bf, rows)
                } else {
                    (lhs, Rows::plain(k))
                };
                mul_acc::<f32, I>(
                    &mut dst,
                    cols,
                    &lhs,
                    rows,
                    m,
                    &panels,
                    all,
                    biased.then_some(&start[..]),
                    m % 2 == 1,
                    &mut scratch,
                );
                let mut in_place = before(!biased);
                let bias = (!biased).then_some(&start[..]);
                mul_acc_in_place::<f32, I>(
                    &mut in_place,
                    cols,
                    &spaced,
                    spaced_rs,
                    m,
                    &panels,
                    bias,
                );
                for (how, dst) in [("copied", &dst), ("in place", &in_place)] {
                    for r in 0..m {
                        for c in 0..cols {
                            let got = dst[r * cols + c];
                            let expected = start[c] + col(c).map_or(0.0, |j| want[r * n + j]);
                            let tol = 1e-5 * (k as f32).sqrt() * 4.0;
                            assert!(
                                (got - expected).abs() <= tol,
                                "k {k}, {gates} gates, {m} rows {how}: [{r}, {c}] {got} != {expected}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A product over no depth is its bias, or what the destination held.
#[test]
fn products_of_no_depth_start_from_the_bias() {
    use super::isa::Portable;
    use super::panels::Panels;
    use super::product::mul_acc_in_place;
    let panels = Panels::of_rows(&[], 3, 0);
    let bias: Vec<f32> = (0..panels.width()).map(|c| c as f32 + 0.5).collect();
    let mut dst = vec![f32::NAN; 2 * panels.width()];
    mul_acc_in_place::<f32, Portable>(&mut dst, panels.width(), &[], 0, 2, &panels, Some(&bias));
    assert_eq!(dst, bias.repeat(2));
    let mut dst = vec![7f32; 2 * panels.width()];
    mul_acc_in_place::<f32, Portable>(&mut dst, panels.width(), &[], 0, 2, &panels, None);
    assert!(dst.iter().all(|&v| v == 7.0));
}

#[test]
fn products_match_reference_on_every_path() {
    check_products::<super::isa::Portable>();
    #[cfg(target_arch = "x86_64")]
    {
        if KernelPath::Avx2.is_available() {
            // SAFETY: the CPU has the instruction set.
            unsafe { products_avx2() };
        }
        if KernelPath::Avx512.is_available() {
            // SAFETY: as above.
            unsafe { products_avx512() };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn products_avx2() {
    check_products::<super::isa::Avx2>();
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn products_avx512() {
    check_products::<super::isa::Avx512>();
}

/// The row tiles of the many-row product cover every row once, in order,
/// as few as `max` allows, their heights differing by at most 1.
#[test]
fn row_tiles_split_evenly() {
    use super::product::row_tiles;
    for max in [1, 4, 6, 12] {
        for m in 1..=60 {
            let tiles: Vec<_> = row_tiles(m, max).collect();
            assert_eq!(tiles.len(), m.div_ceil(max), "m {m} max {max}");
            let mut next = 0;
            for &(row, rows) in &tiles {
                assert!(
                    row == next && (1..=max).contains(&rows),
                    "m {m} max {max}: {tiles:?}"
                );
                next += rows;
            }
            assert_eq!(next, m);
            let heights = tiles.iter().map(|t| t.1);
            assert!(heights.clone().max().unwrap() - heights.min().unwrap() <= 1);
        }
    }
    assert_eq!(
        row_tiles(32, 6).map(|t| t.1).collect::<Vec<_>>(),
        [6, 6, 5, 5, 5, 5]
    );
}
