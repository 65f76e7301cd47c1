//! The elementwise part of a step: activations and the cell updates of one
//! batch row of a member's units.
//!
//! For `f32`, `sigmoid` and `tanh` are branch-free polynomial
//! approximations built on one `exp`: `sigmoid(x) = 1 / (1 + exp(-x))`, and
//! `tanh(x) = 1 - 2 / (1 + exp(2|x|))` with the sign of `x` (an odd
//! polynomial near 0, where that loses precision). The activations of a
//! block of units run in lockstep over fixed-size arrays ([`activate_f32`]):
//! each step of the computation is one loop over all lanes, which the
//! compiler turns into several independent vector instructions, so that
//! the long chain of one evaluation (polynomial, division) overlaps with the
//! others. One loop per element instead is latency-bound and about 1.8 times
//! slower.

use super::isa::Isa;
use super::panels::UNITS;
use super::Float;

/// `a * b + c` in `f32`, fused when `FMA` (code compiled with the `fma`
/// feature).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    f32::madd::<FMA>(a, b, c)
}

// 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
const ROUND: f32 = 12_582_912.0;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];
const TANH_POLY: [f32; 5] = [
    -5.704_988_7e-3,
    2.063_909e-2,
    -5.373_971_6e-2,
    1.333_144_2e-1,
    -3.333_328e-1,
];
/// Below this `|x|`, `tanh` uses its polynomial.
const TANH_SMALL: f32 = 0.625;

/// `exp(x)` for `f32` without branches or calls.
///
/// Range reduction `x = n ln 2 + r` with `|r| <= ln 2 / 2` (`ln 2` split in
/// two parts so that `n ln 2` is exact), a degree-7 polynomial for `exp(r)`,
/// and the scale `2^n` built directly in the exponent bits. The input is
/// clamped to `[-87, 88]`, where `2^n` stays a normal number; NaN propagates.
#[cfg(test)]
pub(super) fn exp_f32<const FMA: bool>(x: f32) -> f32 {
    let mut v = [x];
    exp_lanes::<FMA, 1>(&mut v);
    v[0]
}

/// [`exp_f32`] on every lane, in lockstep.
#[inline(always)]
fn exp_lanes<const FMA: bool, const N: usize>(z: &mut [f32; N]) {
    let mut shifted = [0f32; N];
    let mut r = [0f32; N];
    for j in 0..N {
        let x = z[j].clamp(-87.0, 88.0);
        shifted[j] = madd::<FMA>(x, std::f32::consts::LOG2_E, ROUND);
        let n = shifted[j] - ROUND;
        r[j] = madd::<FMA>(n, -LN2_LO, madd::<FMA>(n, -LN2_HI, x));
    }
    let mut p = [EXP_POLY[0]; N];
    for &coef in &EXP_POLY[1..] {
        for j in 0..N {
            p[j] = madd::<FMA>(p[j], r[j], coef);
        }
    }
    for j in 0..N {
        let p = madd::<FMA>(p[j], r[j] * r[j], r[j]) + 1.0;
        let n = (shifted[j].to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
        z[j] = p * f32::from_bits(((n + 127) as u32) << 23);
    }
}

/// `tanh(x)` for `f32` without branches or calls (see [`activate_f32`]).
#[inline(always)]
pub(super) fn tanh_f32<const FMA: bool>(x: f32) -> f32 {
    let mut v = [x];
    activate_f32::<FMA, 1>(&mut v, 0);
    v[0]
}

/// `1 / (1 + exp(-x))` for `f32` without branches or calls.
#[inline(always)]
pub(super) fn sigmoid_f32<const FMA: bool>(x: f32) -> f32 {
    let mut v = [x];
    activate_f32::<FMA, 1>(&mut v, 1);
    v[0]
}

/// The logistic function on `v[..s]` and `tanh` on `v[s..]`, all lanes in
/// lockstep through one `exp` and one division.
#[inline(always)]
pub(super) fn activate_f32<const FMA: bool, const N: usize>(v: &mut [f32; N], s: usize) {
    let mut e = [0f32; N];
    for j in 0..N {
        e[j] = if j < s { -v[j] } else { 2.0 * v[j].abs() };
    }
    exp_lanes::<FMA, N>(&mut e);
    for e in e.iter_mut() {
        *e = 1.0 / (1.0 + *e);
    }
    v[..s].copy_from_slice(&e[..s]);
    for (v, &e) in v[s..].iter_mut().zip(&e[s..]) {
        let x = *v;
        let sq = x * x;
        let mut p = TANH_POLY[0];
        for &coef in &TANH_POLY[1..] {
            p = madd::<FMA>(p, sq, coef);
        }
        let small = madd::<FMA>(p * sq, x, x);
        let large = madd::<FMA>(-2.0, e, 1.0).copysign(x);
        *v = if x.abs() < TANH_SMALL { small } else { large };
    }
}

/// The logistic function on `v[..s]` and `tanh` on `v[s..]`, for `f64`
/// with the standard library's functions (`FMA` makes no difference).
#[inline(always)]
pub(super) fn activate_f64<const FMA: bool, const N: usize>(v: &mut [f64; N], s: usize) {
    for x in &mut v[..s] {
        *x = sigmoid_f64::<FMA>(*x);
    }
    for x in &mut v[s..] {
        *x = tanh_f64::<FMA>(*x);
    }
}

/// `1 / (1 + exp(-x))` for `f64`.
#[inline(always)]
pub(super) fn sigmoid_f64<const FMA: bool>(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `tanh(x)` for `f64`.
#[inline(always)]
pub(super) fn tanh_f64<const FMA: bool>(x: f64) -> f64 {
    x.tanh()
}

/// Units per lockstep evaluation of `tanh(c)`: four blocks.
const CHUNK: usize = 4 * UNITS;

/// The LSTM update of one batch row of whole blocks of units: `pre` holds
/// the pre-activations, block after block, each in the kernels' gate order
/// `i, f, o, g` ([`UNITS`] each), and is overwritten by the activations;
/// `c` (one entry per unit, padding units included) is updated in place and
/// `h` written.
#[inline(always)]
pub(super) fn lstm_row<T: Float, I: Isa>(pre: &mut [T], c: &mut [T], h: &mut [T]) {
    let width = 4 * UNITS;
    for (blk, c) in pre.chunks_exact_mut(width).zip(c.chunks_exact_mut(UNITS)) {
        let blk: &mut [T; 4 * UNITS] = blk.try_into().expect("whole blocks");
        I::activate::<T, { 4 * UNITS }>(blk, 3 * UNITS);
        let (ifo, g) = blk.split_at(3 * UNITS);
        let (i, f) = (&ifo[..UNITS], &ifo[UNITS..2 * UNITS]);
        // Into an array first: written straight into `c`, which the
        // compiler cannot prove apart from the gates, the loop stays scalar.
        let mut next = [T::ZERO; UNITS];
        for ((((n, &c), &i), &f), &g) in next.iter_mut().zip(&*c).zip(i).zip(f).zip(g) {
            *n = f * c + i * g;
        }
        c.copy_from_slice(&next);
    }
    // h = o * tanh(c), several blocks in lockstep.
    let o = |block: usize| &pre[block * width + 2 * UNITS..block * width + 3 * UNITS];
    let full = c.len() / CHUNK * CHUNK;
    for (k, (c, h)) in c[..full]
        .chunks_exact(CHUNK)
        .zip(h[..full].chunks_exact_mut(CHUNK))
        .enumerate()
    {
        let mut t: [T; CHUNK] = c.try_into().expect("CHUNK units");
        I::activate::<T, CHUNK>(&mut t, 0);
        for (q, t) in t.chunks_exact_mut(UNITS).enumerate() {
            for (t, &o) in t.iter_mut().zip(o(k * CHUNK / UNITS + q)) {
                *t = o * *t;
            }
        }
        h.copy_from_slice(&t);
    }
    let rest = c[full..]
        .chunks_exact(UNITS)
        .zip(h[full..].chunks_exact_mut(UNITS));
    for (q, (c, h)) in rest.enumerate() {
        let mut t: [T; UNITS] = c.try_into().expect("whole blocks");
        I::activate::<T, UNITS>(&mut t, 0);
        for (t, &o) in t.iter_mut().zip(o(full / UNITS + q)) {
            *t = o * *t;
        }
        h.copy_from_slice(&t);
    }
}

/// Blocks of units per lockstep GRU update ([`gru_blocks`]): 64 units.
pub(super) const GRU_BLOCKS: usize = 4;

/// The GRU update of `N / UNITS` consecutive blocks of units of one batch
/// row, in PyTorch's formulation, all blocks' activations in lockstep (one
/// block alone is two chains of registers, which wait on each other's
/// latency): `hh` holds `h W_hh^T + b_hh` and `x` the input projection
/// (foldable biases included), block after block, each gate `r, z, n` at
/// `g * UNITS ..` of its block; `h_prev` holds the previous state of the
/// blocks' real units (the last block may have fewer than `UNITS`) and `h`
/// receives their new one. `RZ` is `2 * N`, the lanes of the gates `r` and
/// `z` (an array length cannot be computed from `N` on stable Rust).
#[inline(always)]
pub(super) fn gru_blocks<T: Float, I: Isa, const RZ: usize, const N: usize>(
    hh: &[T],
    x: &[T],
    h_prev: &[T],
    h: &mut [T],
) {
    const WIDTH: usize = 3 * UNITS;
    const { assert!(RZ == 2 * N && N.is_multiple_of(UNITS)) };
    assert!(
        hh.len() >= N / UNITS * WIDTH
            && x.len() >= N / UNITS * WIDTH
            && h.len() == h_prev.len()
            && h.len() <= N
    );
    let mut rz = [T::ZERO; RZ];
    for (k, rz) in rz.chunks_exact_mut(2 * UNITS).enumerate() {
        let (hh, x) = (&hh[k * WIDTH..][..2 * UNITS], &x[k * WIDTH..][..2 * UNITS]);
        for ((v, &x), &hh) in rz.iter_mut().zip(x).zip(hh) {
            *v = x + hh;
        }
    }
    I::activate::<T, RZ>(&mut rz, RZ);
    let mut n = [T::ZERO; N];
    for (k, n) in n.chunks_exact_mut(UNITS).enumerate() {
        let r = &rz[2 * k * UNITS..][..UNITS];
        let at = k * WIDTH + 2 * UNITS;
        let (xn, hn) = (&x[at..at + UNITS], &hh[at..at + UNITS]);
        for (((n, &x), &r), &hn) in n.iter_mut().zip(xn).zip(r).zip(hn) {
            *n = x + r * hn;
        }
    }
    I::activate::<T, N>(&mut n, 0);
    // Into `n` first, as `c` in `lstm_row`; the padding units of a last
    // partial block are left as they are, and not written.
    for (k, (n, hp)) in n
        .chunks_exact_mut(UNITS)
        .zip(h_prev.chunks(UNITS))
        .enumerate()
    {
        let z = &rz[(2 * k + 1) * UNITS..][..UNITS];
        for ((n, &hp), &z) in n.iter_mut().zip(hp).zip(z) {
            *n = *n + z * (hp - *n);
        }
    }
    h.copy_from_slice(&n[..h.len()]);
}
