//! SIMD micro-kernels, one module per instruction set (x86-64 only; the
//! portable tile in `product` serves elsewhere).
//!
//! Both instruction sets run the same register-blocked tile: only the
//! register type and the features the code is compiled with differ. The
//! register types implement [`Simd`], and [`micro_kernels!`] writes the tile
//! and its table of instantiations into each instruction set's module, under
//! that module's `#[target_feature]` (an attribute cannot be generic, and
//! code passing `__m512` values must itself be compiled with AVX-512).

pub(super) mod avx2;
pub(super) mod avx512;

/// One SIMD register of [`Self::Elem`]s.
// `pub` in a private module: the bound of `Float`'s register types.
pub trait Simd: Copy {
    type Elem: Copy;
    const LANES: usize;
    /// # Safety
    /// The CPU has the register's instruction set (as for every method).
    unsafe fn zero() -> Self;
    /// # Safety
    /// `p` is valid for reading `LANES` elements.
    unsafe fn load(p: *const Self::Elem) -> Self;
    /// # Safety
    /// `p` is valid for writing `LANES` elements.
    unsafe fn store(p: *mut Self::Elem, v: Self);
    /// # Safety
    /// `p` is valid for reading one element.
    unsafe fn splat(p: *const Self::Elem) -> Self;
    /// `a * b + c` with one rounding.
    ///
    /// # Safety
    /// The CPU has the register's instruction set.
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
}

/// Depth steps ahead of the one it multiplies at which the many-row tile
/// prefetches the weights. (On a 2-core AVX-512 Xeon, single-threaded,
/// rows of 32 by depth 512 by 1024 columns, the shape of a tagger member's
/// step: 2-8 % faster at 16 steps; 4 steps gains less, 32 and 64 no more.)
pub(super) const PREFETCH_ROWS: usize = 16;

/// Asks for the cache line holding `p` to be brought into L1. A hint: it
/// never faults, wherever `p` points.
#[inline(always)]
pub(super) fn prefetch<T>(p: *const T) {
    // SAFETY: a prefetch reads nothing and cannot fault; SSE is part of
    // x86-64.
    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast()) }
}

/// Implements [`Simd`] for the register type `$v` of `$t`, `$lanes` lanes
/// wide, with the intrinsics named after it, compiled with `$features`.
macro_rules! impl_simd {
    ($features:literal, $v:ty, $t:ty, $lanes:expr,
     $zero:ident, $load:ident, $store:ident, $splat:ident, $fmadd:ident) => {
        impl $crate::kernel::simd::Simd for $v {
            type Elem = $t;
            const LANES: usize = $lanes;
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn zero() -> $v {
                $zero()
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn load(p: *const $t) -> $v {
                $load(p)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn store(p: *mut $t, v: $v) {
                $store(p, v)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn splat(p: *const $t) -> $v {
                $splat(*p)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn fmadd(a: $v, b: $v, c: $v) -> $v {
                $fmadd(a, b, c)
            }
        }
    };
}
pub(super) use impl_simd;

/// Writes the micro-kernel compiled with `$features`: `tile` and the
/// `dispatch` over the `(rows, vecs)` shapes the products use on that
/// instruction set.
macro_rules! micro_kernels {
    ($features:literal, $(($rows:literal, $vecs:literal)),+ $(,)?) => {
        use $crate::kernel::float::Strides;
        use $crate::kernel::simd::{prefetch, Simd, PREFETCH_ROWS};

        /// `rows x vecs` registers of accumulators, for the shapes this
        /// instruction set's products use (see `Isa::tile_rows` and
        /// `Isa::tile_cols`; the one-row product's widest tiles are 8
        /// registers).
        ///
        /// # Safety
        ///
        /// As for [`tile`].
        pub(in crate::kernel) unsafe fn dispatch<S: Simd>(
            rows: usize,
            vecs: usize,
            dst: *mut S::Elem,
            init: *const S::Elem,
            lhs: *const S::Elem,
            w: *const S::Elem,
            s: Strides,
        ) {
            match (rows, vecs) {
                $(($rows, $vecs) => if s.lhs_rs == 0 {
                    tile::<S, $rows, $vecs, false>(dst, init, lhs, w, s)
                } else {
                    tile::<S, $rows, $vecs, true>(dst, init, lhs, w, s)
                },)+
                _ => unreachable!("no micro-tile of {rows} rows by {vecs} vectors"),
            }
        }

        /// `dst[r * dst_rs + j] = init[r * init_rs + j] + sum_{i < depth}
        /// lhs[i * R + r] * w[(j / 16) * w_sub + i * 16 + j % 16]` for
        /// `r < R`, `j < V * LANES`, accumulated in `R * V` registers; each
        /// row of `w` is loaded once for all `R` rows. `init` is `dst` itself
        /// (`init_rs` is `dst_rs`: a product accumulated in place) or a bias
        /// row that every row starts from (`init_rs` is 0).
        /// `STRIDED` (`lhs_rs` not 0) reads `lhs[r * lhs_rs + i]` instead.
        ///
        /// # Safety
        ///
        /// The CPU has the features the module is compiled with, and every
        /// index above is in bounds of the allocation its pointer points
        /// into.
        #[target_feature(enable = $features)]
        unsafe fn tile<S: Simd, const R: usize, const V: usize, const STRIDED: bool>(
            dst: *mut S::Elem,
            init: *const S::Elem,
            lhs: *const S::Elem,
            w: *const S::Elem,
            s: Strides,
        ) {
            let init_rs = if std::ptr::eq(init, dst) { s.dst_rs } else { 0 };
            let mut acc = [[S::zero(); V]; R];
            for (r, acc) in acc.iter_mut().enumerate() {
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = S::load(init.add(r * init_rs + v * S::LANES));
                }
            }
            // Per depth step, either the `V` weight vectors or the `R` broadcast
            // inputs are loaded first and held, whichever are fewer, so that they
            // and the accumulators fit in the registers.
            let w_at = |row: *const S::Elem, v: usize| {
                let col = v * S::LANES;
                row.add(col / 16 * s.w_sub + col % 16)
            };
            // Row `r` of the left operand at depth step `i` is at
            // `lhs + i * step + r * rs`: rows side by side, or rows of a
            // matrix read in place (`STRIDED`).
            let (step, rs) = if STRIDED { (1, s.lhs_rs) } else { (R, 1) };
            let mut row = w;
            let mut x = lhs;
            for _ in 0..s.depth {
                if V <= R {
                    // The first row tile of a pass reads this slice of the
                    // weights from L3 (a member's share of `W_hh` is larger
                    // than L2): ask for each cache line of it
                    // `PREFETCH_ROWS` depth steps ahead.
                    for v in 0..V {
                        if (v * S::LANES * std::mem::size_of::<S::Elem>()).is_multiple_of(64) {
                            let ahead = w_at(row, v).wrapping_add(PREFETCH_ROWS * 16);
                            prefetch(ahead);
                        }
                    }
                    let mut wv = [S::zero(); V];
                    for (v, wv) in wv.iter_mut().enumerate() {
                        *wv = S::load(w_at(row, v));
                    }
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let x = S::splat(x.add(r * rs));
                        for (a, &wv) in acc.iter_mut().zip(&wv) {
                            *a = S::fmadd(x, wv, *a);
                        }
                    }
                } else {
                    let mut xv = [S::zero(); R];
                    for (r, xv) in xv.iter_mut().enumerate() {
                        *xv = S::splat(x.add(r * rs));
                    }
                    for v in 0..V {
                        let wv = S::load(w_at(row, v));
                        for (acc, &x) in acc.iter_mut().zip(&xv) {
                            acc[v] = S::fmadd(x, wv, acc[v]);
                        }
                    }
                }
                row = row.add(16);
                x = x.add(step);
            }
            for (r, acc) in acc.iter().enumerate() {
                for (v, a) in acc.iter().enumerate() {
                    S::store(dst.add(r * s.dst_rs + v * S::LANES), *a);
                }
            }
        }
    };
}
pub(super) use micro_kernels;

/// Writes the direct convolution's micro-kernel compiled with `$features`:
/// `conv_tile` and the `conv_dispatch` over its shapes, up to `$rows`
/// output channels by 1 or 2 registers of output positions, with the taps'
/// loop unrolled for 3 and 5 taps one position apart.
macro_rules! conv_kernels {
    ($features:literal, $($rows:literal),+ $(,)?) => {
        /// The convolution tile of `rows` output channels by `vecs`
        /// registers of output positions.
        ///
        /// # Safety
        ///
        /// As for [`conv_tile`].
        pub(in crate::kernel) unsafe fn conv_dispatch<S: $crate::kernel::simd::Simd>(
            rows: usize,
            vecs: usize,
            dst: *mut S::Elem,
            x: *const S::Elem,
            w: *const S::Elem,
            s: $crate::kernel::float::ConvStrides,
        ) {
            let taps = if s.dilation == 1 { s.taps } else { 0 };
            match (rows, vecs, taps) {
                $(($rows, 1, 3) => conv_tile::<S, $rows, 1, 3>(dst, x, w, s),
                  ($rows, 2, 3) => conv_tile::<S, $rows, 2, 3>(dst, x, w, s),
                  ($rows, 1, 5) => conv_tile::<S, $rows, 1, 5>(dst, x, w, s),
                  ($rows, 2, 5) => conv_tile::<S, $rows, 2, 5>(dst, x, w, s),
                  ($rows, 1, _) => conv_tile::<S, $rows, 1, 0>(dst, x, w, s),
                  ($rows, 2, _) => conv_tile::<S, $rows, 2, 0>(dst, x, w, s),)+
                _ => unreachable!("no convolution tile of {rows} rows by {vecs} vectors"),
            }
        }

        /// `dst[r * dst_rs + j] += sum_{c < channels, k < taps}
        /// w[r * w_rs + c * taps + k] * x[c * x_rs + k * dilation + j]` for
        /// `r < R`, `j < V * LANES`, accumulated in `R * V` registers: per
        /// channel and tap, the `V` input vectors are loaded once for all
        /// `R` rows, each of which broadcasts its weight. `K` is the count
        /// of taps, one position apart, or 0 for the counts `s` gives.
        ///
        /// # Safety
        ///
        /// The CPU has the features the module is compiled with, and every
        /// index above is in bounds of the allocation its pointer points
        /// into.
        #[target_feature(enable = $features)]
        unsafe fn conv_tile<
            S: $crate::kernel::simd::Simd,
            const R: usize,
            const V: usize,
            const K: usize,
        >(
            dst: *mut S::Elem,
            x: *const S::Elem,
            w: *const S::Elem,
            s: $crate::kernel::float::ConvStrides,
        ) {
            let mut acc = [[S::zero(); V]; R];
            for (r, acc) in acc.iter_mut().enumerate() {
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = S::load(dst.add(r * s.dst_rs + v * S::LANES));
                }
            }
            let (taps, dilation) = if K > 0 { (K, 1) } else { (s.taps, s.dilation) };
            // Each row's weights from a pointer of its own, all indexed by
            // the same running offset: no address arithmetic per row.
            let rows: [*const S::Elem; R] = std::array::from_fn(|r| w.add(r * s.w_rs));
            let mut xc = x;
            let mut i = 0;
            for _ in 0..s.channels {
                for k in 0..taps {
                    let xk = xc.add(k * dilation);
                    let mut xv = [S::zero(); V];
                    for (v, xv) in xv.iter_mut().enumerate() {
                        *xv = S::load(xk.add(v * S::LANES));
                    }
                    for (acc, row) in acc.iter_mut().zip(&rows) {
                        let b = S::splat(row.add(i + k));
                        for (a, &xv) in acc.iter_mut().zip(&xv) {
                            *a = S::fmadd(b, xv, *a);
                        }
                    }
                }
                i += taps;
                xc = xc.add(s.x_rs);
            }
            for (r, acc) in acc.iter().enumerate() {
                for (v, a) in acc.iter().enumerate() {
                    S::store(dst.add(r * s.dst_rs + v * S::LANES), *a);
                }
            }
        }
    };
}
pub(super) use conv_kernels;
