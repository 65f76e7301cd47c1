//! The product of a dense layer, `y = x W^T + b`, on the micro-tiles of the
//! recurrent kernels' input projection (the `product` module), for
//! [`crate::Linear`].
//!
//! The weight is packed into panels at each call: its elements are copied
//! once, where the product reads each of them once per row, and the layer
//! keeps no second copy of its weight. The rows are split between the
//! calling thread and pool tasks (`task::in_parallel`); each multiplies its
//! rows a block at a time, starting from the bias, the tiles reading the
//! input in place.

#[cfg(target_arch = "x86_64")]
use super::isa::{Avx2, Avx512};
use super::isa::{Isa, Portable};
use super::panels::Panels;
use super::product::mul_acc_in_place;
use super::task::in_parallel;
use super::{kernel_path, Float, KernelPath};

/// Rows multiplied at a time: their copy for one pass over a slice of the
/// depth stays in L2 (the input projection's chunk,
/// `layer::ROWS_PER_CHUNK`).
const BLOCK_ROWS: usize = 384;

/// `x W^T + bias` for `x` `(rows, k)` and `w` `(cols, k)`, both row-major:
/// `(rows, cols)`, the rows split between up to `threads` threads.
pub(crate) fn dense<T: Float>(
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    (rows, cols, k): (usize, usize, usize),
    threads: usize,
) -> Vec<T> {
    assert!(
        x.len() == rows * k && w.len() == cols * k && bias.is_none_or(|b| b.len() == cols),
        "dense: the operands disagree with ({rows}, {cols}, {k})"
    );
    let mut out = vec![T::ZERO; rows * cols];
    if rows == 0 || cols == 0 {
        return out;
    }
    if k == 0 {
        if let Some(bias) = bias {
            out.chunks_exact_mut(cols)
                .for_each(|row| row.copy_from_slice(bias));
        }
        return out;
    }
    let panels = Panels::of_rows(w, cols, k);
    // Read on the calling thread, where `with_kernel_path` applies.
    let path = kernel_path();
    let share = rows.div_ceil(threads.max(1));
    let shares = x.chunks(share * k).zip(out.chunks_mut(share * cols));
    in_parallel(shares, |_, (x, out)| {
        rows_dispatch(path, x, out, bias, &panels, cols);
    });
    out
}

/// [`rows_on`] compiled for `path` (also the token tables' product, whose
/// columns are the panels' own).
pub(super) fn rows_dispatch<T: Float>(
    path: KernelPath,
    x: &[T],
    out: &mut [T],
    bias: Option<&[T]>,
    w: &Panels<T>,
    cols: usize,
) {
    match path {
        // SAFETY (both): `kernel_path` only names an instruction set the CPU has.
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx512 => unsafe { rows_avx512(x, out, bias, w, cols) },
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 => unsafe { rows_avx2(x, out, bias, w, cols) },
        _ => rows_on::<T, Portable>(x, out, bias, w, cols),
    }
}

/// [`rows_on`] with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rows_avx2<T: Float>(x: &[T], out: &mut [T], bias: Option<&[T]>, w: &Panels<T>, cols: usize) {
    rows_on::<T, Avx2>(x, out, bias, w, cols);
}

/// [`rows_on`] with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn rows_avx512<T: Float>(x: &[T], out: &mut [T], bias: Option<&[T]>, w: &Panels<T>, cols: usize) {
    rows_on::<T, Avx512>(x, out, bias, w, cols);
}

/// `out = x W^T + bias` for the rows of `x`, a block of rows at a time. The
/// product's columns are the panels', a multiple of 16: when `cols` is
/// not, each block goes through a buffer that wide.
#[inline(always)]
fn rows_on<T: Float, I: Isa>(
    x: &[T],
    out: &mut [T],
    bias: Option<&[T]>,
    w: &Panels<T>,
    cols: usize,
) {
    let k = w.depth();
    // Every panel's columns side by side (a dense layer's weight is one
    // panel; a recurrent layer's `W_ih^T`, one per block of units).
    let width = w.count() * w.width();
    // A row of the product before the first multiply-add: the bias, zero
    // in the padding.
    let mut start = vec![T::ZERO; width];
    if let Some(bias) = bias {
        start[..cols].copy_from_slice(bias);
    }
    let rows = x.len() / k;
    let mut padded = vec![
        T::ZERO;
        if width > cols {
            rows.min(BLOCK_ROWS) * width
        } else {
            0
        }
    ];
    for (x, out) in x
        .chunks(BLOCK_ROWS * k)
        .zip(out.chunks_mut(BLOCK_ROWS * cols))
    {
        let m = x.len() / k;
        let dst = if width > cols {
            &mut padded[..m * width]
        } else {
            &mut *out
        };
        mul_acc_in_place::<T, I>(dst, width, x, k, m, w, Some(&start));
        if width > cols {
            for (row, full) in out.chunks_exact_mut(cols).zip(padded.chunks_exact(width)) {
                row.copy_from_slice(&full[..cols]);
            }
        }
    }
}
