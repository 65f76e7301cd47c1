//! The matrix products of the kernels, on weights packed in panels (see
//! the `panels` module).
//!
//! Two shapes of micro-kernel share one implementation ([`tile`]): for
//! several rows (a batch, or the input projection of many steps), `R` rows
//! by 16 columns (32 on AVX-512) accumulated in registers, the rows shared
//! out evenly between the tiles, over a slice of the depth that
//! stays in L1, with the rows of the left operand first copied side by side
//! for the tile; for one row (batch 1, where a step is bound by reading the
//! weights), up to 8 vectors of a panel at a time, so that the weights are
//! read once and the accumulators stay in registers. On x86-64 the tile runs
//! on the SIMD micro-kernel of the `simd` module for the instruction set the
//! code is compiled for ([`Isa`]); [`tile_portable`] is the plain-Rust
//! reference.

use std::ops::Range;

use super::float::Strides;
use super::isa::Isa;
use super::panels::{Panels, TILE_COLS};
use super::{balanced, Float};

/// Depth of one pass of the many-row product, in bytes of a 16-column
/// sub-panel: the slice a pass reads stays in L1 or L2 while every row tile
/// reuses it. (Passes of 16 KiB or more measure alike; 8 KiB is slower.)
const KC_BYTES: usize = 32 * 1024;

/// Where the rows of a product's left operand start: row `r` at
/// `r / group * group_stride + r % group * stride`. A matrix is one group
/// ([`Rows::plain`]); the steps of a batch-first input `(B, T, I)` are
/// groups of `B` rows, `I` apart, whose batch items are `T * I` apart.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rows {
    pub(super) stride: usize,
    pub(super) group: usize,
    pub(super) group_stride: usize,
}

impl Rows {
    /// Rows `stride` apart.
    pub(super) fn plain(stride: usize) -> Self {
        Self {
            stride,
            group: usize::MAX,
            group_stride: 0,
        }
    }

    /// Where row `r` starts.
    #[inline(always)]
    pub(super) fn start(&self, r: usize) -> usize {
        r / self.group * self.group_stride + r % self.group * self.stride
    }
}

/// `dst[r, j] += sum_kk lhs[r, kk] * W[kk, j]` for rows `r < m` and the
/// columns `j` of `panels` (their columns side by side from `dst` column 0),
/// `kk < k`; with a `bias` (one row, its columns as `dst`'s), `dst[r, j] =
/// bias[j] + ...`, what `dst` held before unread. Rows of `dst` are `dst_rs`
/// apart; rows of `lhs` start where `lhs_rows` says.
/// `reverse` walks the panels last to first (see the step loop). `scratch`
/// holds the left operand's rows rearranged for the tiles (several rows
/// only).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn mul_acc<T: Float, I: Isa>(
    dst: &mut [T],
    dst_rs: usize,
    lhs: &[T],
    lhs_rows: Rows,
    m: usize,
    w: &Panels<T>,
    panels: Range<usize>,
    bias: Option<&[T]>,
    reverse: bool,
    scratch: &mut Vec<T>,
) {
    let (k, pw) = (w.depth(), w.width());
    if m == 0 || panels.is_empty() {
        return;
    }
    // (Every row of `lhs` is bounds-checked again where it is read.)
    assert!(
        panels.end <= w.count()
            && dst.len() >= (m - 1) * dst_rs + panels.len() * pw
            && (k == 0 || lhs.len() >= lhs_rows.start(m - 1) + k)
            && bias.is_none_or(|b| b.len() >= panels.len() * pw)
    );
    if k == 0 {
        start_from(dst, dst_rs, m, panels.len() * pw, bias);
        return;
    }
    let count = panels.len();
    let order = |i: usize| if reverse { count - 1 - i } else { i };
    let sub = k * TILE_COLS;
    if m == 1 {
        // One row: each panel row is read once, up to 8 vectors at a time.
        let max_cols = I::max_row_cols::<T>();
        let s = Strides {
            dst_rs,
            w_sub: sub,
            depth: k,
            lhs_rs: 0,
        };
        for i in 0..count {
            let p = order(i);
            let panel = w.panel(panels.start + p);
            let mut c = 0;
            while c < pw {
                let cols = max_cols.min(pw - c);
                tile::<T, I>(
                    1,
                    cols,
                    dst,
                    p * pw + c,
                    bias.map(|b| (b, p * pw + c)),
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
    // Many rows: tiles of up to `I::tile_rows` rows (see `row_tiles`) by
    // `I::tile_cols` columns, in passes over slices of the depth. Each pass
    // first copies its slice of the left operand tile by tile, the tile's
    // rows interleaved, so that a tile reads it linearly.
    let kc = pass_depth::<T, I>(k);
    let tiles = || row_tiles(m, I::tile_rows::<T>());
    if scratch.len() < m * kc {
        scratch.resize(m * kc, T::ZERO);
    }
    let mut k0 = 0;
    while k0 < k {
        let depth = kc.min(k - k0);
        for (row, rows) in tiles() {
            let packed = &mut scratch[row * depth..(row + rows) * depth];
            let src = |r: usize| {
                let at = lhs_rows.start(row + r) + k0;
                &lhs[at..at + depth]
            };
            // Every tile height the instruction sets use has its own copy
            // loop: the general one below is several times slower (a
            // batch of 10 or 32 makes tiles of 10 or 11 rows).
            macro_rules! heights {
                ($($r:literal)*) => {
                    match rows {
                        $($r => interleave::<T, $r>(packed, std::array::from_fn(src)),)*
                        _ => interleave_any(packed, rows, src),
                    }
                };
            }
            heights!(2 3 4 5 6 7 8 9 10 11 12);
        }
        let s = Strides {
            dst_rs,
            w_sub: sub,
            depth,
            lhs_rs: 0,
        };
        let at = |row: usize| row * depth;
        pass::<T, I>(
            dst,
            scratch,
            at,
            m,
            w,
            panels.clone(),
            bias.filter(|_| k0 == 0),
            reverse,
            k0,
            s,
        );
        k0 += depth;
    }
}

/// [`mul_acc`] over all the panels of `w`, for the `m` rows of a row-major
/// matrix `lhs_rs` apart, which the tiles read in place. [`mul_acc`] copies
/// the rows side by side first, a pass over the left operand that a product
/// of few columns (a dense layer's narrow output) spends about as long on
/// as on its multiply-adds.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn mul_acc_in_place<T: Float, I: Isa>(
    dst: &mut [T],
    dst_rs: usize,
    lhs: &[T],
    lhs_rs: usize,
    m: usize,
    w: &Panels<T>,
    bias: Option<&[T]>,
) {
    let (k, pw) = (w.depth(), w.width());
    if m == 0 || w.count() == 0 {
        return;
    }
    assert!(
        lhs_rs >= k
            && dst.len() >= (m - 1) * dst_rs + w.count() * pw
            && (k == 0 || lhs.len() >= (m - 1) * lhs_rs + k)
            && bias.is_none_or(|b| b.len() >= w.count() * pw)
    );
    if k == 0 {
        start_from(dst, dst_rs, m, w.count() * pw, bias);
        return;
    }
    let kc = pass_depth::<T, I>(k);
    let mut k0 = 0;
    while k0 < k {
        let depth = kc.min(k - k0);
        let s = Strides {
            dst_rs,
            w_sub: k * TILE_COLS,
            depth,
            lhs_rs,
        };
        let at = |row: usize| row * lhs_rs + k0;
        let bias = bias.filter(|_| k0 == 0);
        pass::<T, I>(dst, lhs, at, m, w, 0..w.count(), bias, false, k0, s);
        k0 += depth;
    }
}

/// The depth of each pass of the many-row product over `k`. Passes are of
/// equal depth: a depth of 300 makes two passes of 150, not 256 and a short
/// one of 44 whose tiles spend their time loading and storing accumulators
/// (5 % of the tagger's input projection).
#[inline(always)]
fn pass_depth<T: Float, I: Isa>(k: usize) -> usize {
    let kc = KC_BYTES / (I::tile_cols::<T>() * std::mem::size_of::<T>());
    balanced(k, kc)
}

/// `(first row, rows)` of the row tiles of `m` rows, at most `max` rows
/// each: as few tiles as that allows, their heights differing by at most 1.
/// A short tile has too few accumulators to hide the multiply-adds'
/// latency: on AVX2 (one thread, rows by depth 256 by 1024 columns) tiles
/// of 6, 5, 4, 3 and 2 rows run 108, 107, 92, 81 and 58 GFLOP/s, so that
/// 32 rows run 3-6 % faster as 6, 6, 5, 5, 5, 5 than as 6, 6, 6, 6, 6, 2.
#[inline(always)]
pub(super) fn row_tiles(m: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let count = m.div_ceil(max.max(1));
    let (base, extra) = (m / count.max(1), m % count.max(1));
    (0..count).map(move |i| (i * base + i.min(extra), base + usize::from(i < extra)))
}

/// One pass of the many-row product, over depth `s.depth` from `k0`: every
/// tile of [`row_tiles`] by `I::tile_cols` columns across the
/// panels `panels` of `w` (last to first for `reverse`; their columns side
/// by side from `dst` column 0), starting from `bias` when given, else from
/// `dst`. The tile's left operand from row `row` on starts at
/// `lhs[at(row)]`, laid out as `s.lhs_rs` says.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pass<T: Float, I: Isa>(
    dst: &mut [T],
    lhs: &[T],
    at: impl Fn(usize) -> usize,
    m: usize,
    w: &Panels<T>,
    panels: Range<usize>,
    bias: Option<&[T]>,
    reverse: bool,
    k0: usize,
    s: Strides,
) {
    let (pw, count, tile_cols) = (w.width(), panels.len(), I::tile_cols::<T>());
    for i in 0..count {
        let p = if reverse { count - 1 - i } else { i };
        let panel = w.panel(panels.start + p);
        let mut c = 0;
        while c < pw {
            let cols = tile_cols.min(pw - c);
            let w0 = c / TILE_COLS * s.w_sub + k0 * TILE_COLS;
            for (row, rows) in row_tiles(m, I::tile_rows::<T>()) {
                let d0 = row * s.dst_rs + p * pw + c;
                let init = bias.map(|b| (b, p * pw + c));
                tile::<T, I>(rows, cols, dst, d0, init, lhs, at(row), panel, w0, s);
            }
            c += cols;
        }
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

/// [`interleave`] for any number of rows.
fn interleave_any<'a, T: Float>(dst: &mut [T], rows: usize, src: impl Fn(usize) -> &'a [T]) {
    for r in 0..rows {
        for (d, &v) in dst[r..].iter_mut().step_by(rows).zip(src(r)) {
            *d = v;
        }
    }
}

/// One micro-tile: `dst[d0 + r * dst_rs + j] += sum_{i < depth}
/// lhs[l0 + i * rows + r] * W[i, j]` for `r < rows`, `j < cols`, or with
/// `init` `(bias, b0)`, `dst[..] = bias[b0 + j] + sum ...` (the rows of
/// the left operand side by side; `lhs[l0 + r * lhs_rs + i]` for a
/// `lhs_rs` other than 0), where row `i` of the 16-column sub-panel
/// `j / 16` starts at `w0 + (j / 16) * w_sub + i * 16`. `cols` is 16, or for
/// one row a multiple of 16 up to 8 vectors.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile<T: Float, I: Isa>(
    rows: usize,
    cols: usize,
    dst: &mut [T],
    d0: usize,
    init: Option<(&[T], usize)>,
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
            && if s.lhs_rs == 0 {
                l0 + s.depth * rows <= lhs.len()
            } else {
                l0 + (rows - 1) * s.lhs_rs + s.depth <= lhs.len()
            }
            && w0 + (subs - 1) * s.w_sub + s.depth * TILE_COLS <= w.len()
            && init.is_none_or(|(b, b0)| b0 + cols <= b.len())
    );
    if I::SIMD {
        // SAFETY: SIMD code only runs after its instruction set was detected
        // (`member_dispatch`, `dense`), and the assertion above covers every index the
        // tile reads or writes.
        unsafe {
            let dst = dst.as_mut_ptr().add(d0);
            let init = init.map_or(dst.cast_const(), |(b, b0)| b.as_ptr().add(b0));
            I::tile::<T>(
                rows,
                cols,
                dst,
                init,
                lhs.as_ptr().add(l0),
                w.as_ptr().add(w0),
                s,
            )
        };
        return;
    }
    for sp in 0..subs {
        let (d0, w0) = (d0 + sp * TILE_COLS, w0 + sp * s.w_sub);
        let init = init.map(|(b, b0)| (b, b0 + sp * TILE_COLS));
        match rows {
            6 => tile_portable::<T, 6>(dst, d0, init, lhs, l0, w, w0, s),
            5 => tile_portable::<T, 5>(dst, d0, init, lhs, l0, w, w0, s),
            4 => tile_portable::<T, 4>(dst, d0, init, lhs, l0, w, w0, s),
            3 => tile_portable::<T, 3>(dst, d0, init, lhs, l0, w, w0, s),
            2 => tile_portable::<T, 2>(dst, d0, init, lhs, l0, w, w0, s),
            1 => tile_portable::<T, 1>(dst, d0, init, lhs, l0, w, w0, s),
            _ => unreachable!("no portable tile of {rows} rows"),
        }
    }
}

/// `dst`'s first `cols` columns of `m` rows set to `bias`, or left as they
/// are: a product over no depth.
fn start_from<T: Float>(dst: &mut [T], dst_rs: usize, m: usize, cols: usize, bias: Option<&[T]>) {
    if let Some(bias) = bias {
        for r in 0..m {
            dst[r * dst_rs..r * dst_rs + cols].copy_from_slice(&bias[..cols]);
        }
    }
}

/// An `R x 16` tile in plain Rust (the loops over the 16 columns
/// vectorise): the reference for the SIMD version.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile_portable<T: Float, const R: usize>(
    dst: &mut [T],
    d0: usize,
    init: Option<(&[T], usize)>,
    lhs: &[T],
    l0: usize,
    w: &[T],
    w0: usize,
    s: Strides,
) {
    let mut acc = [[T::ZERO; TILE_COLS]; R];
    for (r, acc) in acc.iter_mut().enumerate() {
        acc.copy_from_slice(match init {
            Some((b, b0)) => &b[b0..b0 + TILE_COLS],
            None => &dst[d0 + r * s.dst_rs..][..TILE_COLS],
        });
    }
    for i in 0..s.depth {
        let row: &[T; TILE_COLS] = w[w0 + i * TILE_COLS..][..TILE_COLS]
            .try_into()
            .expect("a sub-panel row has TILE_COLS elements");
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = if s.lhs_rs == 0 {
                lhs[l0 + i * R + r]
            } else {
                lhs[l0 + r * s.lhs_rs + i]
            };
            for (a, &wv) in acc.iter_mut().zip(row) {
                *a = x * wv + *a;
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let start = d0 + r * s.dst_rs;
        dst[start..start + TILE_COLS].copy_from_slice(acc);
    }
}
