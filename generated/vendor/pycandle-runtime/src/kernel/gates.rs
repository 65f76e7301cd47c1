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

/// The GRU update of one block of units of one batch row, in PyTorch's
/// formulation: `hh` holds `h W_hh^T + b_hh` and `x` the input projection
/// (foldable biases included), each gate `r, z, n` at `g * UNITS ..`;
/// `h_prev` holds the previous state of the block's `n <= UNITS` real units
/// and `h` receives their new one. `hh` is overwritten.
#[inline(always)]
pub(super) fn gru_block<T: Float, I: Isa>(hh: &mut [T], x: &[T], h_prev: &[T], h: &mut [T]) {
    let (hrz, hn) = hh[..3 * UNITS].split_at_mut(2 * UNITS);
    let (xrz, xn) = x[..3 * UNITS].split_at(2 * UNITS);
    let rz: &mut [T; 2 * UNITS] = hrz.try_into().expect("two gates");
    for (v, &x) in rz.iter_mut().zip(xrz) {
        *v = x + *v;
    }
    I::activate::<T, { 2 * UNITS }>(rz, 2 * UNITS);
    let (r, z) = rz.split_at(UNITS);
    let mut n = [T::ZERO; UNITS];
    for (((n, &x), &r), &hn) in n.iter_mut().zip(xn).zip(r).zip(hn.iter()) {
        *n = x + r * hn;
    }
    I::activate::<T, UNITS>(&mut n, 0);
    // Into `n` first, as `c` in `lstm_row`.
    for ((n, &hp), &z) in n.iter_mut().zip(h_prev).zip(z) {
        *n = *n + z * (hp - *n);
    }
    h.copy_from_slice(&n[..h.len()]);
}
