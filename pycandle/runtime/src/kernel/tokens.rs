//! An embedding folded into a layer's input projection.
//!
//! When a layer's input is an embedding of token ids, `x_t W_ih^T + b` is
//! row `id` of the table `E W_ih^T + b` (vocabulary × gates × H). A
//! [`TokenTable`] holds that table, computed once by the dense layer's
//! product on the input projection's packed weights and stored in the
//! layout of the projection buffer, so that the layer's input projection becomes a copy of one row
//! per step and sequence ([`super::recurrent_layer_from_tokens`]).

use super::dense::rows_dispatch;
use super::task::in_parallel;
use super::weights::PackedWeights;
use super::{check_len, kernel_path, Float, ShapeError};

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
        let width = Self::row_len(weights);
        let bias = &weights.x_bias;
        let mut rows = vec![T::ZERO; vocab * width];
        // Read on the calling thread, where `with_kernel_path` applies.
        let path = kernel_path();
        let share = vocab.div_ceil(threads.max(1)).max(1);
        // (Packed weights have at least one input feature: `k > 0`.)
        let shares = embeddings
            .chunks(share * k)
            .zip(rows.chunks_mut(share * width));
        in_parallel(shares, |_, (e, out)| {
            rows_dispatch(path, e, out, Some(bias), &weights.w_ih, width);
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
        vocab * Self::row_len(weights)
    }

    /// Elements per row for `weights`: the projection's columns, one gate
    /// block per panel of `W_ih^T` (padding included).
    fn row_len(weights: &PackedWeights<T>) -> usize {
        weights.w_ih.count() * weights.w_ih.width()
    }

    /// The number of rows (token ids `0..vocab`).
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Whether the table was built for weights of these sizes and cell.
    pub(super) fn fits(&self, weights: &PackedWeights<T>) -> bool {
        (self.input, self.hidden, self.gates)
            == (weights.input, weights.hidden, weights.cell.gates())
            && self.width == Self::row_len(weights)
    }

    /// The projection of token `id`.
    #[inline(always)]
    pub(super) fn row(&self, id: usize) -> &[T] {
        &self.rows[id * self.width..(id + 1) * self.width]
    }
}
