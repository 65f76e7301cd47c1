//! A direct 1-d convolution on SIMD micro-tiles, for [`crate::Conv1d`] with
//! a stride of 1.
//!
//! Output channel `o` at position `t` is `bias[o] + sum_{c, k} w[o, c, k] *
//! x[c, t + k * dilation - padding]`. The input is copied once, zero-padded;
//! a tile then holds a few output channels by one or two registers of
//! output positions in its accumulators and, for every input channel and
//! tap, loads those positions of the padded input shifted by the tap, which
//! every one of its output channels multiplies by its broadcast weight. So
//! the input is never unrolled into columns (`im2col`, a copy `K` times the
//! input's size, which a product then packs again), and the weight is read
//! in place.
//!
//! Each tile sums over a slice of the input channels at a time, whose
//! weights for the tile's output channels stay in L1 while the tile moves
//! along the output positions of a block of them, whose input stays in L2.
//! (On a 2-core Xeon, Tacotron-2's 512-channel, 5-tap convolution at B=8
//! measured alike with weight slices of 12 to 48 KiB and input blocks of
//! 256 KiB to 4 MiB, and no faster with the input packed per column tile,
//! as a matrix product packs its right operand.)

use std::ops::Range;

use super::float::ConvStrides;
use super::isa::Isa;
#[cfg(target_arch = "x86_64")]
use super::isa::{Avx2, Avx512};
use super::task::in_parallel;
use super::{balanced, Float, KernelPath};

/// Bytes of the weights one row of tiles reads over a slice of the input
/// channels: they stay in L1.
const W_BYTES: usize = 24 * 1024;

/// Bytes of the padded input a block of column tiles reads over a slice of
/// the input channels: they stay in L2 (half of a 512 KiB one) while every
/// row of tiles reads them.
const X_BYTES: usize = 256 * 1024;

/// The sizes of a convolution with a stride of 1.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvGeometry {
    pub(crate) c_in: usize,
    pub(crate) c_out: usize,
    pub(crate) taps: usize,
    pub(crate) padding: usize,
    pub(crate) dilation: usize,
    pub(crate) groups: usize,
    pub(crate) l_in: usize,
    pub(crate) l_out: usize,
}

/// Output positions per register of `T` on `path`, or `None` where the
/// direct convolution does not run (the portable path).
pub(crate) fn direct_lanes<T: Float>(path: KernelPath) -> Option<usize> {
    match path {
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx512 => Some(Avx512::lanes::<T>()),
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 => Some(Avx2::lanes::<T>()),
        _ => None,
    }
}

/// The convolution of the batch items `xs` `(items, C_in, L_in)` by `ws`
/// `(C_out, C_in / groups, K)`, plus `bias`, into `out` `(items, C_out,
/// L_out)`, on `path` (one [`direct_lanes`] accepts). With `threads` above
/// 1, each item's output channels are split between the calling thread and
/// pool tasks.
pub(crate) fn conv1d<T: Float>(
    path: KernelPath,
    xs: &[T],
    ws: &[T],
    bias: Option<&[T]>,
    g: ConvGeometry,
    out: &mut [T],
    threads: usize,
) {
    let lanes = direct_lanes::<T>(path).expect("the direct convolution runs on a SIMD path");
    let items = xs.len() / (g.c_in * g.l_in).max(1);
    let sizes = [
        g.c_in, g.l_in, g.c_out, g.taps, g.groups, g.dilation, g.l_out,
    ];
    assert!(
        sizes.iter().all(|&n| n > 0)
            && g.c_in.is_multiple_of(g.groups)
            && g.c_out.is_multiple_of(g.groups)
            && xs.len() == items * g.c_in * g.l_in
            && out.len() == items * g.c_out * g.l_out
            && ws.len() == g.c_out * (g.c_in / g.groups) * g.taps
            && bias.is_none_or(|b| b.len() == g.c_out)
            && g.l_out + (g.taps - 1) * g.dilation == g.l_in + 2 * g.padding,
        "conv1d: the operands disagree with {g:?}"
    );
    if items == 0 {
        return;
    }
    // Output positions in whole registers, and the padded input they read.
    let l_pad = g.l_out.next_multiple_of(lanes);
    let lx = l_pad + (g.taps - 1) * g.dilation;
    // Split between the threads too: besides the copy's own time, that
    // wakes the pool thread that the product then finds running.
    let mut x = vec![T::ZERO; items * g.c_in * lx];
    let share = (items * g.c_in).div_ceil(threads.max(1));
    let shares = xs.chunks(share * g.l_in).zip(x.chunks_mut(share * lx));
    in_parallel(shares, |_, (xs, x)| {
        for (row, padded) in xs.chunks_exact(g.l_in).zip(x.chunks_exact_mut(lx)) {
            padded[g.padding..g.padding + g.l_in].copy_from_slice(row);
        }
    });
    // The product goes straight into `out` when its rows are whole
    // registers long, else into rows `l_pad` apart.
    let mut buffer = Vec::new();
    let dst: &mut [T] = if l_pad == g.l_out {
        &mut *out
    } else {
        buffer.resize(items * g.c_out * l_pad, T::ZERO);
        &mut buffer
    };
    for (i, row) in dst.chunks_exact_mut(l_pad).enumerate() {
        row.fill(bias.map_or(T::ZERO, |b| b[i % g.c_out]));
    }
    let job = Job {
        x: &x,
        w: ws,
        g,
        lx,
        l_pad,
    };
    let item_rs = g.c_out * l_pad;
    if threads <= 1 {
        work(path, &job, 0..items, 0..g.c_out, dst, item_rs);
    } else {
        let share = g.c_out.div_ceil(threads);
        for (i, dst) in dst.chunks_exact_mut(item_rs).enumerate() {
            in_parallel(dst.chunks_mut(share * l_pad), |s, dst| {
                let first = s * share;
                let rows = first..first + dst.len() / l_pad;
                work(path, &job, i..i + 1, rows, dst, item_rs);
            });
        }
    }
    if l_pad != g.l_out {
        for (o, b) in out
            .chunks_exact_mut(g.l_out)
            .zip(buffer.chunks_exact(l_pad))
        {
            o.copy_from_slice(&b[..g.l_out]);
        }
    }
}

/// The operands of one convolution: the padded input `x` `(items, C_in,
/// lx)`, the weight `w`, and the destination's row length `l_pad`.
struct Job<'a, T> {
    x: &'a [T],
    w: &'a [T],
    g: ConvGeometry,
    lx: usize,
    l_pad: usize,
}

/// [`work_on`] compiled for `path`.
fn work<T: Float>(
    path: KernelPath,
    job: &Job<'_, T>,
    items: Range<usize>,
    rows: Range<usize>,
    dst: &mut [T],
    item_rs: usize,
) {
    match path {
        // SAFETY (both): `kernel_path` only names an instruction set the CPU has.
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx512 => unsafe { work_avx512(job, items, rows, dst, item_rs) },
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 => unsafe { work_avx2(job, items, rows, dst, item_rs) },
        _ => unreachable!("the direct convolution runs on a SIMD path"),
    }
}

/// [`work_on`] with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn work_avx2<T: Float>(
    job: &Job<'_, T>,
    items: Range<usize>,
    rows: Range<usize>,
    dst: &mut [T],
    item_rs: usize,
) {
    work_on::<T, Avx2>(job, items, rows, dst, item_rs);
}

/// [`work_on`] with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn work_avx512<T: Float>(
    job: &Job<'_, T>,
    items: Range<usize>,
    rows: Range<usize>,
    dst: &mut [T],
    item_rs: usize,
) {
    work_on::<T, Avx512>(job, items, rows, dst, item_rs);
}

/// Adds to `dst` the output channels `rows` of the batch items `items`:
/// output channel `o` of item `i` at position `t` is at
/// `dst[(i - items.start) * item_rs + (o - rows.start) * l_pad + t]`.
#[inline(always)]
fn work_on<T: Float, I: Isa>(
    job: &Job<'_, T>,
    items: Range<usize>,
    rows: Range<usize>,
    dst: &mut [T],
    item_rs: usize,
) {
    let Job { x, w, g, lx, l_pad } = *job;
    let (cg, rg) = (g.c_in / g.groups, g.c_out / g.groups);
    let lanes = I::lanes::<T>();
    let size = std::mem::size_of::<T>();
    // Column tiles, `(item, first position, registers)`, two registers
    // wide but for the last of an item.
    let columns: Vec<(usize, usize, usize)> = items
        .clone()
        .flat_map(|i| {
            (0..l_pad)
                .step_by(2 * lanes)
                .map(move |t| (i, t, ((l_pad - t) / lanes).min(2)))
        })
        .collect();
    let cc = balanced(cg, W_BYTES / (I::CONV_ROWS * g.taps * size));
    let tile_input = cc * (2 * lanes + (g.taps - 1) * g.dilation) * size;
    let block = (X_BYTES / tile_input).max(1);
    for group in 0..g.groups {
        let (lo, hi) = (rows.start.max(group * rg), rows.end.min((group + 1) * rg));
        if lo >= hi {
            continue;
        }
        let tile_rows = balanced(hi - lo, I::CONV_ROWS);
        for c0 in (0..cg).step_by(cc) {
            let s = ConvStrides {
                dst_rs: l_pad,
                w_rs: cg * g.taps,
                x_rs: lx,
                channels: cc.min(cg - c0),
                taps: g.taps,
                dilation: g.dilation,
            };
            for columns in columns.chunks(block) {
                for r0 in (lo..hi).step_by(tile_rows) {
                    let n = tile_rows.min(hi - r0);
                    let w0 = r0 * s.w_rs + c0 * g.taps;
                    for &(i, t, vecs) in columns {
                        let x0 = (i * g.c_in + group * cg + c0) * lx + t;
                        let d0 = (i - items.start) * item_rs + (r0 - rows.start) * l_pad + t;
                        tile::<T, I>(n, vecs, dst, d0, x, x0, w, w0, s);
                    }
                }
            }
        }
    }
}

/// One micro-tile: `dst[d0 + r * dst_rs + j] += sum_{c, k} w[w0 + r * w_rs
/// + c * taps + k] * x[x0 + c * x_rs + k * dilation + j]` for `r < rows`,
/// `j < vecs` registers, `c < channels`, `k < taps`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile<T: Float, I: Isa>(
    rows: usize,
    vecs: usize,
    dst: &mut [T],
    d0: usize,
    x: &[T],
    x0: usize,
    w: &[T],
    w0: usize,
    s: ConvStrides,
) {
    // Every element the tile touches is in bounds.
    let width = vecs * I::lanes::<T>();
    assert!(
        I::SIMD
            && (1..=I::CONV_ROWS).contains(&rows)
            && (1..=2).contains(&vecs)
            && s.channels > 0
            && s.taps > 0
            && d0 + (rows - 1) * s.dst_rs + width <= dst.len()
            && x0 + (s.channels - 1) * s.x_rs + (s.taps - 1) * s.dilation + width <= x.len()
            && w0 + (rows - 1) * s.w_rs + s.channels * s.taps <= w.len()
    );
    // SAFETY: SIMD code only runs after its instruction set was detected
    // (`kernel_path`), and the assertion above covers every index the tile
    // reads or writes.
    unsafe {
        I::conv_tile::<T>(
            rows,
            vecs,
            dst.as_mut_ptr().add(d0),
            x.as_ptr().add(x0),
            w.as_ptr().add(w0),
            s,
        )
    };
}
