//! An embedding folded into a layer's input projection.
//!
//! When a layer's input is an embedding of token ids, `x_t W_ih^T + b` is
//! row `id` of the table `E W_ih^T + b` (vocabulary × gates × H). A
//! [`TokenTable`] holds that table, computed once with the input
//! projection's own product and stored in the layout of the projection
//! buffer, so that the layer's input projection becomes a copy of one row
//! per step and sequence ([`super::recurrent_layer_from_tokens`]).

#[cfg(target_arch = "x86_64")]
use super::isa::{Avx2, Avx512};
use super::isa::{Isa, Portable};
use super::product::mul_acc_in_place;
use super::task::in_parallel;
use super::weights::PackedWeights;
use super::{check_len, kernel_path, Float, KernelPath, ShapeError};

/// Table rows computed at a time by one thread: their product's output
/// stays in L2 while the passes over the depth come back to it.
const BLOCK_ROWS: usize = 384;

/// The input projection of every row of an embedding, for one direction of
/// a layer: row `id` is `E[id] W_ih^T + b`, with the biases the packing
/// folds into the input projection, in the kernels' gate layout.
#[derive(Debug, Clone)]
pub struct TokenTable<T> {
    vocab: usize,
    /// The layer's input size, hidden size and gates, to check the table
    /// against the weights it runs with.
    input: usize,
    hidden: usize,
    gates: usize,
    /// Elements per row: one gate block per panel of `W_ih^T`.
    width: usize,
    rows: Vec<T>,
}

impl<T: Float> TokenTable<T> {
    /// Projects the `vocab` rows of `embeddings` (row-major `(vocab, I)`,
    /// `I` the layer's input size) through `weights`' input projection,
    /// using up to `threads` threads.
    pub fn new(
        weights: &PackedWeights<T>,
        embeddings: &[T],
        vocab: usize,
        threads: usize,
    ) -> Result<Self, ShapeError> {
        let k = weights.input;
        check_len("embeddings", embeddings, vocab * k)?;
        let w = &weights.w_ih;
        let width = w.count() * w.width();
        let mut rows = vec![T::ZERO; Self::len_for(weights, vocab)];
        // Read on the calling thread, where `with_kernel_path` applies.
        let path = kernel_path();
        let share = vocab.div_ceil(threads.max(1)).max(1);
        let bias = &weights.x_bias;
        let shares = rows.chunks_mut(share * width.max(1)).enumerate();
        in_parallel(shares, |_, (i, out)| {
            let first = i * share;
            let e = &embeddings[first * k..(first + out.len() / width) * k];
            project_dispatch(path, e, out, weights, bias);
        });
        Ok(Self {
            vocab,
            input: k,
            hidden: weights.hidden,
            gates: weights.cell.gates(),
            width,
            rows,
        })
    }

    /// The number of elements of a table of `vocab` rows for `weights`.
    pub fn len_for(weights: &PackedWeights<T>, vocab: usize) -> usize {
        vocab * weights.w_ih.count() * weights.w_ih.width()
    }

    /// The number of rows (token ids `0..vocab`).
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Whether the table was built for weights of these sizes and cell.
    pub(super) fn fits(&self, weights: &PackedWeights<T>) -> bool {
        (self.input, self.hidden, self.gates)
            == (weights.input, weights.hidden, weights.cell.gates())
            && self.width == weights.w_ih.count() * weights.w_ih.width()
    }

    /// The projection of token `id`.
    #[inline(always)]
    pub(super) fn row(&self, id: usize) -> &[T] {
        &self.rows[id * self.width..(id + 1) * self.width]
    }
}

/// [`project_rows`] compiled for `path`.
fn project_dispatch<T: Float>(
    path: KernelPath,
    e: &[T],
    out: &mut [T],
    w: &PackedWeights<T>,
    bias: &[T],
) {
    match path {
        // SAFETY (both): `kernel_path` only names an instruction set the CPU has.
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx512 => unsafe { project_avx512(e, out, w, bias) },
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 => unsafe { project_avx2(e, out, w, bias) },
        _ => project_rows::<T, Portable>(e, out, w, bias),
    }
}

/// [`project_rows`] with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn project_avx2<T: Float>(e: &[T], out: &mut [T], w: &PackedWeights<T>, bias: &[T]) {
    project_rows::<T, Avx2>(e, out, w, bias);
}

/// [`project_rows`] with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn project_avx512<T: Float>(e: &[T], out: &mut [T], w: &PackedWeights<T>, bias: &[T]) {
    project_rows::<T, Avx512>(e, out, w, bias);
}

/// `out = e W_ih^T + bias` for the rows of `e`, a block of rows at a time.
#[inline(always)]
fn project_rows<T: Float, I: Isa>(e: &[T], out: &mut [T], w: &PackedWeights<T>, bias: &[T]) {
    let (k, panels) = (w.input, &w.w_ih);
    let width = panels.count() * panels.width();
    if width == 0 {
        return;
    }
    let rows = out.len() / width;
    for start in (0..rows).step_by(BLOCK_ROWS) {
        let m = BLOCK_ROWS.min(rows - start);
        let dst = &mut out[start * width..(start + m) * width];
        let lhs = &e[start * k..(start + m) * k];
        mul_acc_in_place::<T, I>(dst, width, lhs, k, m, panels, Some(bias));
    }
}
