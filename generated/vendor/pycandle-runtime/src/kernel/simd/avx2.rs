//! The micro-kernel with AVX2 + FMA intrinsics, generic over the element
//! type through [`Simd`].

use std::arch::x86_64::*;

use crate::kernel::float::Strides;

/// One AVX register of `Self`.
pub(in crate::kernel) trait Simd: Copy {
    type V: Copy;
    const LANES: usize;
    /// # Safety
    /// AVX2 and FMA are available (as for every method).
    unsafe fn zero() -> Self::V;
    /// # Safety
    /// `p` is valid for reading `LANES` elements.
    unsafe fn load(p: *const Self) -> Self::V;
    /// # Safety
    /// `p` is valid for writing `LANES` elements.
    unsafe fn store(p: *mut Self, v: Self::V);
    /// # Safety
    /// `p` is valid for reading one element.
    unsafe fn splat(p: *const Self) -> Self::V;
    /// # Safety
    /// AVX2 and FMA are available.
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
}

/// Implements [`Simd`] for `$t` with the register type `$v`, `$lanes`
/// lanes wide, and the intrinsics named after it.
macro_rules! impl_simd {
    ($t:ty, $v:ty, $lanes:expr, $zero:ident, $load:ident, $store:ident, $splat:ident, $fmadd:ident) => {
        impl Simd for $t {
            type V = $v;
            const LANES: usize = $lanes;
            #[inline]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn zero() -> $v {
                $zero()
            }
            #[inline]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn load(p: *const $t) -> $v {
                $load(p)
            }
            #[inline]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn store(p: *mut $t, v: $v) {
                $store(p, v)
            }
            #[inline]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn splat(p: *const $t) -> $v {
                $splat(&*p)
            }
            #[inline]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn fmadd(a: $v, b: $v, c: $v) -> $v {
                $fmadd(a, b, c)
            }
        }
    };
}

impl_simd!(
    f32,
    __m256,
    8,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_broadcast_ss,
    _mm256_fmadd_ps
);
impl_simd!(
    f64,
    __m256d,
    4,
    _mm256_setzero_pd,
    _mm256_loadu_pd,
    _mm256_storeu_pd,
    _mm256_broadcast_sd,
    _mm256_fmadd_pd
);

/// `rows x vecs` registers of accumulators: the instantiations the
/// products use.
///
/// # Safety
///
/// As for [`tile`].
pub(in crate::kernel) unsafe fn dispatch<S: Simd>(
    rows: usize,
    vecs: usize,
    dst: *mut S,
    lhs: *const S,
    w: *const S,
    s: Strides,
) {
    match (rows, vecs) {
        (1, 8) => tile::<S, 1, 8>(dst, lhs, w, s),
        (1, 6) => tile::<S, 1, 6>(dst, lhs, w, s),
        (1, 4) => tile::<S, 1, 4>(dst, lhs, w, s),
        (1, 2) => tile::<S, 1, 2>(dst, lhs, w, s),
        (6, 2) => tile::<S, 6, 2>(dst, lhs, w, s),
        (5, 2) => tile::<S, 5, 2>(dst, lhs, w, s),
        (4, 2) => tile::<S, 4, 2>(dst, lhs, w, s),
        (3, 2) => tile::<S, 3, 2>(dst, lhs, w, s),
        (2, 2) => tile::<S, 2, 2>(dst, lhs, w, s),
        (3, 4) => tile::<S, 3, 4>(dst, lhs, w, s),
        (2, 4) => tile::<S, 2, 4>(dst, lhs, w, s),
        _ => unreachable!("no micro-tile of {rows} rows by {vecs} vectors"),
    }
}

/// `dst[r * dst_rs + j] += sum_{i < depth} lhs[i * R + r] *
/// w[(j / 16) * w_sub + i * 16 + j % 16]` for `r < R`, `j < V * LANES`,
/// accumulated in `R * V` registers; each row of `w` is loaded once for
/// all `R` rows.
///
/// # Safety
///
/// The CPU supports AVX2 and FMA, and every index above is in bounds of
/// the allocation its pointer points into.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<S: Simd, const R: usize, const V: usize>(
    dst: *mut S,
    lhs: *const S,
    w: *const S,
    s: Strides,
) {
    let mut acc = [[S::zero(); V]; R];
    for (r, acc) in acc.iter_mut().enumerate() {
        for (v, a) in acc.iter_mut().enumerate() {
            *a = S::load(dst.add(r * s.dst_rs + v * S::LANES));
        }
    }
    // Per depth step, either the `V` weight vectors or the `R`
    // broadcast inputs are loaded first and held, whichever are fewer, so
    // that they and the accumulators fit in the 16 registers.
    let w_at = |row: *const S, v: usize| {
        let col = v * S::LANES;
        row.add(col / 16 * s.w_sub + col % 16)
    };
    let mut row = w;
    let mut x = lhs;
    for _ in 0..s.depth {
        if V <= R {
            let mut wv = [S::zero(); V];
            for (v, wv) in wv.iter_mut().enumerate() {
                *wv = S::load(w_at(row, v));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = S::splat(x.add(r));
                for (a, &wv) in acc.iter_mut().zip(&wv) {
                    *a = S::fmadd(x, wv, *a);
                }
            }
        } else {
            let mut xv = [S::zero(); R];
            for (r, xv) in xv.iter_mut().enumerate() {
                *xv = S::splat(x.add(r));
            }
            for v in 0..V {
                let wv = S::load(w_at(row, v));
                for (acc, &x) in acc.iter_mut().zip(&xv) {
                    acc[v] = S::fmadd(x, wv, acc[v]);
                }
            }
        }
        row = row.add(16);
        x = x.add(R);
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, a) in acc.iter().enumerate() {
            S::store(dst.add(r * s.dst_rs + v * S::LANES), *a);
        }
    }
}
