//! The packed layout of the weight matrices.
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

use super::Float;

/// Hidden units per block of the gate matrices' panels.
pub(super) const UNITS: usize = 16;

/// Columns per sub-panel, and per micro-tile of the many-row product.
pub(super) const TILE_COLS: usize = 16;

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

    /// `W^T` of a row-major `(cols, k)` matrix `w` (a dense layer's weight,
    /// one row per output) as one panel, `cols` rounded up to whole
    /// sub-panels: the many-row product then runs its widest tiles across
    /// it (32 columns on AVX-512, where 16-column panels would hold half the
    /// accumulators and load a broadcast input per multiply-add).
    pub(super) fn of_rows(w: &[T], cols: usize, k: usize) -> Self {
        assert_eq!(w.len(), cols * k);
        let width = cols.div_ceil(TILE_COLS) * TILE_COLS;
        let mut data = vec![T::ZERO; k * width];
        if k > 0 {
            let blocks = w.chunks(TILE_COLS * k);
            for (sub, block) in data.chunks_exact_mut(k * TILE_COLS).zip(blocks) {
                for (c, row) in block.chunks_exact(k).enumerate() {
                    for (i, &v) in row.iter().enumerate() {
                        sub[i * TILE_COLS + c] = v;
                    }
                }
            }
        }
        Self {
            data,
            k,
            width,
            count: 1,
        }
    }

    pub(super) fn count(&self) -> usize {
        self.count
    }

    /// Rows of every panel (the depth of a product with them).
    pub(super) fn depth(&self) -> usize {
        self.k
    }

    /// Columns per panel.
    pub(super) fn width(&self) -> usize {
        self.width
    }

    /// Panel `p`: its 16-column sub-panels one after the other.
    pub(super) fn panel(&self, p: usize) -> &[T] {
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
