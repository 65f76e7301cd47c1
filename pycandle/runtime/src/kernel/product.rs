//! Packed weights and the matrix products of the kernels.
//!
//! Every weight matrix is copied once, when a layer's weights are packed,
//! into panels: panel `p` holds some columns of `W^T` (`(k, cols)`),
//! zero-padded to the panel width, as sub-panels of 16 columns, each all
//! `k` rows deep and row-major. A panel is one contiguous block of memory,
//! so a team member's share of the weights (a range of panels) streams from
//! memory in one pass, and a 16-column sub-panel is read linearly.
//!
//! For the gate matrices (`W_ih^T`, `W_hh^T`), panel `p` holds hidden units
//! `p * UNITS .. (p + 1) * UNITS` of every gate, gate after gate: its
//! columns are the gate pre-activations of one block of units, which the
//! gate loop then reads side by side.
//!
//! Two shapes of micro-kernel share one implementation ([`tile`]): for
//! several rows (a batch, or the input projection of many steps), `R` rows
//! by 16 columns accumulated in registers, over a slice of the depth that
//! stays in L1, with the rows of the left operand first copied side by side
//! for the tile; for one row (batch 1, where a step is bound by reading the
//! weights), up to 8 vectors of a panel at a time, so that the weights are
//! read once and the accumulators stay in registers.

use std::ops::Range;

use super::private::Strides;
use super::Float;

/// Hidden units per block of the gate matrices' panels.
pub(super) const UNITS: usize = 16;

/// Columns per micro-tile of the many-row product.
const TILE_COLS: usize = 16;

/// Depth of one pass of the many-row product, in bytes of a 16-column
/// sub-panel: the slice a pass reads stays in L1 or L2 while every row tile
/// reuses it. (Passes of 16 KiB or more measure alike; 8 KiB is slower.)
const KC_BYTES: usize = 32 * 1024;

/// A `(k, cols)` matrix stored as panels of `width` columns (see the module
/// documentation).
#[derive(Clone)]
pub(super) struct Panels<T> {
    data: Vec<T>,
    k: usize,
    width: usize,
    count: usize,
}

impl<T> std::fmt::Debug for Panels<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Panels")
            .field("k", &self.k)
            .field("width", &self.width)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl<T: Float> Panels<T> {
    /// Packs the row-major `(k, w_cols)` matrix `w`: column `c` of panel `p`
    /// is source column `src(p, c)`, or zero for `None`.
    fn pack(
        w: &[T],
        k: usize,
        w_cols: usize,
        count: usize,
        width: usize,
        src: impl Fn(usize, usize) -> Option<usize>,
    ) -> Self {
        assert!(w.len() == k * w_cols && width.is_multiple_of(TILE_COLS));
        let map: Vec<Option<usize>> = (0..count * width)
            .map(|i| src(i / width, i % width))
            .collect();
        let mut data = vec![T::ZERO; count * k * width];
        let subs = data.chunks_exact_mut(k * TILE_COLS);
        for (map, sub) in map.chunks_exact(TILE_COLS).zip(subs) {
            for (row, dst) in w.chunks_exact(w_cols).zip(sub.chunks_exact_mut(TILE_COLS)) {
                for (d, s) in dst.iter_mut().zip(map) {
                    if let Some(s) = *s {
                        *d = row[s];
                    }
                }
            }
        }
        Self {
            data,
            k,
            width,
            count,
        }
    }

    /// `W^T` of a gate matrix, row-major `(k, gates * hidden)` with the gates
    /// side by side: one panel per block of [`UNITS`] hidden units, its gates
    /// in the order `order` (indices into the source's gates).
    pub(super) fn gates(w_t: &[T], k: usize, order: &[usize], hidden: usize) -> Self {
        let (gates, blocks) = (order.len(), hidden.div_ceil(UNITS));
        Self::pack(w_t, k, gates * hidden, blocks, gates * UNITS, |p, c| {
            let unit = p * UNITS + c % UNITS;
            (unit < hidden).then_some(order[c / UNITS] * hidden + unit)
        })
    }

    /// A plain row-major `(k, cols)` matrix in panels of 16 columns.
    pub(super) fn plain(w_t: &[T], k: usize, cols: usize) -> Self {
        Self::pack(w_t, k, cols, cols.div_ceil(TILE_COLS), TILE_COLS, |p, c| {
            let col = p * TILE_COLS + c;
            (col < cols).then_some(col)
        })
    }

    pub(super) fn count(&self) -> usize {
        self.count
    }

    fn panel(&self, p: usize) -> &[T] {
        &self.data[p * self.k * self.width..(p + 1) * self.k * self.width]
    }
}

/// A gate vector `(gates * hidden)` (a bias) in the column order of
/// [`Panels::gates`], zeros for `None` and at padding.
pub(super) fn gate_vector<T: Float>(v: Option<&[T]>, order: &[usize], hidden: usize) -> Vec<T> {
    let (gates, blocks) = (order.len(), hidden.div_ceil(UNITS));
    let mut out = vec![T::ZERO; blocks * gates * UNITS];
    if let Some(v) = v {
        for (i, o) in out.iter_mut().enumerate() {
            let (p, c) = (i / (gates * UNITS), i % (gates * UNITS));
            let unit = p * UNITS + c % UNITS;
            if unit < hidden {
                *o = v[order[c / UNITS] * hidden + unit];
            }
        }
    }
    out
}

/// `dst[r, j] += sum_kk lhs[r, kk] * W[kk, j]` for rows `r < m` and the
/// columns `j` of `panels` (their columns side by side from `dst` column 0),
/// `kk < k`. Rows of `dst` are `dst_rs` apart, rows of `lhs` `lhs_rs`.
/// `reverse` walks the panels last to first (see the step loop). `scratch`
/// holds the left operand's rows rearranged for the tiles (several rows
/// only).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn mul_acc<T: Float, const FMA: bool>(
    dst: &mut [T],
    dst_rs: usize,
    lhs: &[T],
    lhs_rs: usize,
    m: usize,
    w: &Panels<T>,
    panels: Range<usize>,
    reverse: bool,
    scratch: &mut Vec<T>,
) {
    let (k, pw) = (w.k, w.width);
    if m == 0 || panels.is_empty() || k == 0 {
        return;
    }
    assert!(
        panels.end <= w.count
            && dst.len() >= (m - 1) * dst_rs + panels.len() * pw
            && lhs.len() >= (m - 1) * lhs_rs + k
    );
    let count = panels.len();
    let order = |i: usize| if reverse { count - 1 - i } else { i };
    let sub = k * TILE_COLS;
    if m == 1 {
        // One row: each panel row is read once, up to 8 vectors at a time.
        let max_cols = if FMA { 8 * T::LANES } else { TILE_COLS };
        let s = Strides {
            dst_rs,
            w_sub: sub,
            depth: k,
        };
        for i in 0..count {
            let p = order(i);
            let panel = w.panel(panels.start + p);
            let mut c = 0;
            while c < pw {
                let cols = max_cols.min(pw - c);
                tile::<T, FMA>(
                    1,
                    cols,
                    dst,
                    p * pw + c,
                    lhs,
                    0,
                    panel,
                    c / TILE_COLS * sub,
                    s,
                );
                c += cols;
            }
        }
        return;
    }
    // Many rows: `R x 16` tiles, in passes over slices of the depth. Each
    // pass first copies its slice of the left operand tile by tile, the
    // tile's rows interleaved, so that a tile reads it linearly.
    let kc = (KC_BYTES / (TILE_COLS * std::mem::size_of::<T>())).clamp(1, k);
    // `(first row, rows)` of every row tile.
    let tiles = || {
        (0..m)
            .step_by(T::TILE_ROWS)
            .map(move |row| (row, T::TILE_ROWS.min(m - row)))
    };
    if scratch.len() < m * kc {
        scratch.resize(m * kc, T::ZERO);
    }
    let mut k0 = 0;
    while k0 < k {
        let depth = kc.min(k - k0);
        for (row, rows) in tiles() {
            let packed = &mut scratch[row * depth..(row + rows) * depth];
            let src = |r: usize| &lhs[(row + r) * lhs_rs + k0..(row + r) * lhs_rs + k0 + depth];
            match rows {
                6 => interleave::<T, 6>(packed, std::array::from_fn(src)),
                4 => interleave::<T, 4>(packed, std::array::from_fn(src)),
                3 => interleave::<T, 3>(packed, std::array::from_fn(src)),
                _ => {
                    for r in 0..rows {
                        for (i, &v) in src(r).iter().enumerate() {
                            packed[i * rows + r] = v;
                        }
                    }
                }
            }
        }
        for i in 0..count {
            let p = order(i);
            let panel = w.panel(panels.start + p);
            for c in (0..pw).step_by(TILE_COLS) {
                let w0 = c / TILE_COLS * sub + k0 * TILE_COLS;
                let s = Strides {
                    dst_rs,
                    w_sub: sub,
                    depth,
                };
                for (row, rows) in tiles() {
                    let d0 = row * dst_rs + p * pw + c;
                    tile::<T, FMA>(rows, TILE_COLS, dst, d0, scratch, row * depth, panel, w0, s);
                }
            }
        }
        k0 += depth;
    }
}

/// `dst[i * R + r] = src[r][i]`: `R` rows side by side.
#[inline(always)]
fn interleave<T: Float, const R: usize>(dst: &mut [T], src: [&[T]; R]) {
    for (i, d) in dst.chunks_exact_mut(R).enumerate() {
        for (d, s) in d.iter_mut().zip(&src) {
            *d = s[i];
        }
    }
}

/// One micro-tile: `dst[d0 + r * dst_rs + j] += sum_{i < depth}
/// lhs[l0 + i * rows + r] * W[i, j]` for `r < rows`, `j < cols` (the rows of
/// the left operand side by side), where row `i` of the 16-column sub-panel
/// `j / 16` starts at `w0 + (j / 16) * w_sub + i * 16`. `cols` is 16, or for
/// one row a multiple of 16 up to 8 vectors.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile<T: Float, const FMA: bool>(
    rows: usize,
    cols: usize,
    dst: &mut [T],
    d0: usize,
    lhs: &[T],
    l0: usize,
    w: &[T],
    w0: usize,
    s: Strides,
) {
    // Every element the tile touches is in bounds.
    let subs = cols.div_ceil(TILE_COLS);
    assert!(
        rows > 0
            && cols > 0
            && cols.is_multiple_of(TILE_COLS)
            && s.depth > 0
            && d0 + (rows - 1) * s.dst_rs + cols <= dst.len()
            && l0 + s.depth * rows <= lhs.len()
            && w0 + (subs - 1) * s.w_sub + s.depth * TILE_COLS <= w.len()
    );
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` code only runs after AVX2 and FMA were detected
        // (`member_dispatch`), and the assertion above covers every index the
        // tile reads or writes.
        unsafe {
            T::tile_avx2(
                rows,
                cols / T::LANES,
                dst.as_mut_ptr().add(d0),
                lhs.as_ptr().add(l0),
                w.as_ptr().add(w0),
                s,
            )
        };
        return;
    }
    for sp in 0..subs {
        let (d0, w0) = (d0 + sp * TILE_COLS, w0 + sp * s.w_sub);
        match rows {
            6 => tile_portable::<T, FMA, 6>(dst, d0, lhs, l0, w, w0, s),
            5 => tile_portable::<T, FMA, 5>(dst, d0, lhs, l0, w, w0, s),
            4 => tile_portable::<T, FMA, 4>(dst, d0, lhs, l0, w, w0, s),
            3 => tile_portable::<T, FMA, 3>(dst, d0, lhs, l0, w, w0, s),
            2 => tile_portable::<T, FMA, 2>(dst, d0, lhs, l0, w, w0, s),
            _ => tile_portable::<T, FMA, 1>(dst, d0, lhs, l0, w, w0, s),
        }
    }
}

/// An `R x 16` tile in plain Rust (the loops over the 16 columns
/// vectorise): the reference for the SIMD version.
#[inline(always)]
fn tile_portable<T: Float, const FMA: bool, const R: usize>(
    dst: &mut [T],
    d0: usize,
    lhs: &[T],
    l0: usize,
    w: &[T],
    w0: usize,
    s: Strides,
) {
    let mut acc = [[T::ZERO; TILE_COLS]; R];
    for (r, acc) in acc.iter_mut().enumerate() {
        let start = d0 + r * s.dst_rs;
        acc.copy_from_slice(&dst[start..start + TILE_COLS]);
    }
    for i in 0..s.depth {
        let row: &[T; TILE_COLS] = w[w0 + i * TILE_COLS..][..TILE_COLS]
            .try_into()
            .expect("a sub-panel row has TILE_COLS elements");
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = lhs[l0 + i * R + r];
            for (a, &wv) in acc.iter_mut().zip(row) {
                *a = T::madd::<FMA>(x, wv, *a);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let start = d0 + r * s.dst_rs;
        dst[start..start + TILE_COLS].copy_from_slice(acc);
    }
}

/// The micro-kernel with AVX2 + FMA intrinsics, generic over the element
/// type through [`Simd`](x86::Simd).
#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::Strides;
    use std::arch::x86_64::*;

    /// One AVX register of `Self`.
    pub(crate) trait Simd: Copy {
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

    impl Simd for f32 {
        type V = __m256;
        const LANES: usize = 8;
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn splat(p: *const f32) -> __m256 {
            _mm256_broadcast_ss(&*p)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
    }

    impl Simd for f64 {
        type V = __m256d;
        const LANES: usize = 4;
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn zero() -> __m256d {
            _mm256_setzero_pd()
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load(p: *const f64) -> __m256d {
            _mm256_loadu_pd(p)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn store(p: *mut f64, v: __m256d) {
            _mm256_storeu_pd(p, v)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn splat(p: *const f64) -> __m256d {
            _mm256_broadcast_sd(&*p)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fmadd(a: __m256d, b: __m256d, c: __m256d) -> __m256d {
            _mm256_fmadd_pd(a, b, c)
        }
    }

    /// `rows x vecs` registers of accumulators: the instantiations the
    /// products use.
    ///
    /// # Safety
    ///
    /// As for [`tile`].
    pub(crate) unsafe fn dispatch<S: Simd>(
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
}
