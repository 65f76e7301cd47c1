//! The entry point: one recurrent layer over a whole sequence, its checks,
//! and the validated sizes and inputs the rest of the kernel works from.

use std::ops::Range;

use super::panels::{Panels, UNITS};
use super::schedule::run_layer;
use super::tokens::TokenTable;
use super::weights::{CellKind, PackedWeights};
use super::{check_len, kernel_path_for_batch, Float, KernelPath, ShapeError};

/// Sizes of one run of a recurrent layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecurrentShape {
    /// Number of timesteps `T`.
    pub steps: usize,
    /// Batch size `B`.
    pub batch: usize,
    /// Read `x` batch first, `(B, T, I)`, instead of time first: a
    /// batch-first model's first layer then needs no transposing copy.
    pub batch_first_in: bool,
    /// Write `out` batch first, `(B, T, D * H_out)`, instead of time first:
    /// a batch-first model's last layer then needs no transposing copy.
    pub batch_first_out: bool,
}

/// One direction of a recurrent layer: its weights and initial state.
#[derive(Debug, Clone, Copy)]
pub struct Direction<'a, T> {
    /// The direction's parameters.
    pub weights: &'a PackedWeights<T>,
    /// Initial hidden state `(B, H_out)`; `None` means zeros.
    pub h0: Option<&'a [T]>,
    /// Initial cell state `(B, H)` of an LSTM; `None` means zeros.
    pub c0: Option<&'a [T]>,
    /// Walk the sequence from the last step to the first.
    pub reverse: bool,
}

/// Runs one recurrent layer (LSTM or GRU, one or two directions) over the
/// input `x`, `(T, B, I)`, or `(B, T, I)` when the shape asks for
/// `batch_first_in`.
///
/// * `dirs`: one [`Direction`] per direction, forward first (PyTorch's
///   order); all must have the same cell, sizes and input size.
/// * `out`: `(T, B, D * H_out)`, the directions concatenated on the last
///   axis like the `output` of `torch.nn.LSTM` / `torch.nn.GRU`; or
///   `(B, T, D * H_out)` when the shape asks for `batch_first_out`.
/// * `h_n`: `(D, B, H_out)`, the final states (for a reverse direction,
///   after consuming step 0); `c_n`: `(D, B, H)` for an LSTM, `None` for a
///   GRU.
/// * `threads`: how many threads the call may use, including the caller's
///   (e.g. [`default_threads`](super::default_threads)); the others are tasks of Rayon's global pool.
///   Directions run concurrently when there are at least as many threads as
///   directions; spare threads split a direction's hidden units when the
///   step is large enough to pay for the per-step synchronisation.
///
/// Per step and direction, for an LSTM:
///
/// ```text
/// i, f, g, o = split(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
/// c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
/// h_t = (sigmoid(o) * tanh(c_t)) [W_hr^T]
/// ```
///
/// and for a GRU:
///
/// ```text
/// xr, xz, xn = split(x_t W_ih^T + b_ih)
/// hr, hz, hn = split(h_{t-1} W_hh^T + b_hh)
/// r = sigmoid(xr + hr);  z = sigmoid(xz + hz)
/// n = tanh(xn + r * hn)
/// h_t = (1 - z) * n + z * h_{t-1}
/// ```
pub fn recurrent_layer<T: Float>(
    shape: RecurrentShape,
    x: &[T],
    dirs: &[Direction<'_, T>],
    out: &mut [T],
    h_n: &mut [T],
    c_n: Option<&mut [T]>,
    threads: usize,
) -> Result<(), ShapeError> {
    let first = check_dirs(shape, dirs, out, h_n, c_n.as_deref())?;
    check_len("x", x, shape.steps * shape.batch * first.input)?;
    run(shape, dirs, |_| Input::Features(x), out, h_n, c_n, threads);
    Ok(())
}

/// [`recurrent_layer`] on a layer whose input is an embedding of token ids,
/// folded into its input projection: `ids` is `(T, B)`, or `(B, T)` when
/// the shape asks for `batch_first_in`, and `tables[d]` is direction `d`'s
/// [`TokenTable`], built from the embedding and that direction's weights.
/// Each step's input projection is then one row of the table per sequence.
/// An id outside the tables' vocabulary is an error.
#[allow(clippy::too_many_arguments)]
pub fn recurrent_layer_from_tokens<T: Float>(
    shape: RecurrentShape,
    ids: &[u32],
    dirs: &[Direction<'_, T>],
    tables: &[&TokenTable<T>],
    out: &mut [T],
    h_n: &mut [T],
    c_n: Option<&mut [T]>,
    threads: usize,
) -> Result<(), ShapeError> {
    check_dirs(shape, dirs, out, h_n, c_n.as_deref())?;
    check_len("ids", ids, shape.steps * shape.batch)?;
    if tables.len() != dirs.len() {
        return Err(ShapeError(format!(
            "recurrent kernel: {} token tables for {} directions",
            tables.len(),
            dirs.len()
        )));
    }
    if !tables.iter().zip(dirs).all(|(t, d)| t.fits(d.weights)) {
        return Err(ShapeError(
            "recurrent kernel: a token table was built for other sizes than its direction's weights"
                .into(),
        ));
    }
    let vocab = tables.iter().map(|t| t.vocab()).min().unwrap_or(0);
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(ShapeError(format!(
            "recurrent kernel: token id {id} is outside the vocabulary of {vocab}"
        )));
    }
    let input = |d: usize| Input::Tokens {
        ids,
        table: tables[d],
    };
    run(shape, dirs, input, out, h_n, c_n, threads);
    Ok(())
}

/// Checks what both entry points share: the directions agree, and the
/// states and outputs have their sizes. Returns the first direction's
/// weights.
fn check_dirs<'a, T: Float>(
    shape: RecurrentShape,
    dirs: &[Direction<'a, T>],
    out: &[T],
    h_n: &[T],
    c_n: Option<&[T]>,
) -> Result<&'a PackedWeights<T>, ShapeError> {
    let RecurrentShape { steps, batch, .. } = shape;
    let Some(first) = dirs.first() else {
        return Err(ShapeError(
            "recurrent kernel: need at least one direction".into(),
        ));
    };
    let w0 = first.weights;
    let (input, hidden, h_out) = (w0.input, w0.hidden, w0.h_out);
    let is_lstm = w0.is_lstm();
    let d = dirs.len();
    for dir in dirs {
        let w = dir.weights;
        if w.cell != w0.cell || (w.input, w.hidden, w.h_out) != (input, hidden, h_out) {
            return Err(ShapeError(
                "recurrent kernel: the directions' weights disagree on the cell or the sizes"
                    .into(),
            ));
        }
        if let Some(h0) = dir.h0 {
            check_len("h0", h0, batch * h_out)?;
        }
        match (dir.c0, is_lstm) {
            (Some(c0), true) => check_len("c0", c0, batch * hidden)?,
            (Some(_), false) => return Err(ShapeError("recurrent kernel: a GRU has no c0".into())),
            (None, _) => {}
        }
    }
    check_len("out", out, steps * batch * d * h_out)?;
    check_len("h_n", h_n, d * batch * h_out)?;
    match (c_n, is_lstm) {
        (Some(c_n), true) => check_len("c_n", c_n, d * batch * hidden)?,
        (None, false) => {}
        (None, true) => return Err(ShapeError("recurrent kernel: an LSTM needs c_n".into())),
        (Some(_), false) => return Err(ShapeError("recurrent kernel: a GRU has no c_n".into())),
    }
    Ok(w0)
}

/// Runs a checked layer, direction `d` reading `input(d)`.
fn run<'a, T: Float>(
    shape: RecurrentShape,
    dirs: &[Direction<'a, T>],
    input: impl Fn(usize) -> Input<'a, T>,
    out: &mut [T],
    h_n: &mut [T],
    c_n: Option<&mut [T]>,
    threads: usize,
) {
    let RecurrentShape {
        steps,
        batch,
        batch_first_in,
        batch_first_out,
    } = shape;
    let w0 = dirs[0].weights;
    // Read once per call, on the calling thread (where `with_kernel_path`
    // applies): every member of every direction follows it.
    let path = kernel_path_for_batch(batch);
    let jobs: Vec<Job<'_, T>> = dirs
        .iter()
        .enumerate()
        .map(|(d, dir)| Job {
            w: dir.weights,
            x: input(d),
            h0: dir.h0,
            c0: dir.c0,
            reverse: dir.reverse,
            path,
        })
        .collect();
    let blocks = w0.hidden.div_ceil(UNITS);
    let geom = Geometry {
        steps,
        batch,
        input: w0.input,
        hidden: w0.hidden,
        h_out: w0.h_out,
        gates: w0.cell.gates(),
        blocks,
        width: w0.cell.gates() * UNITS,
        proj_panels: w0.w_hr.as_ref().map_or(0, Panels::count),
        chunk: (ROWS_PER_CHUNK / batch.max(1)).clamp(1, steps.max(1)),
        batch_first_in,
        batch_first_out,
    };
    run_layer(geom, &jobs, out, h_n, c_n, threads);
}

/// Input-projection rows (steps times batch) computed at a time: enough for
/// the micro-kernel to reuse every panel slice many times (192 rows measure
/// about 2% slower), few enough for the chunk to stay small next to the
/// sequence. Batch 1 projects up to this many steps at once.
pub(super) const ROWS_PER_CHUNK: usize = 384;

/// Validated sizes of one layer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    pub(super) steps: usize,
    pub(super) batch: usize,
    pub(super) input: usize,
    pub(super) hidden: usize,
    pub(super) h_out: usize,
    /// 4 for an LSTM, 3 for a GRU.
    pub(super) gates: usize,
    /// Blocks of [`UNITS`] hidden units (the last may be partial).
    pub(super) blocks: usize,
    /// Columns per block: `gates * UNITS`.
    pub(super) width: usize,
    /// Panels of `W_hr^T` (16 columns each), 0 without projection.
    pub(super) proj_panels: usize,
    /// Steps per chunk of the input projection.
    pub(super) chunk: usize,
    /// `x` is `(B, T, I)`, else `(T, B, I)`.
    pub(super) batch_first_in: bool,
    /// `out` is `(B, T, D * H_out)`, else `(T, B, D * H_out)`.
    pub(super) batch_first_out: bool,
}

impl Geometry {
    pub(super) fn projects(&self) -> bool {
        self.proj_panels > 0
    }

    /// Real units of block `j`.
    pub(super) fn units_in(&self, j: usize) -> Range<usize> {
        j * UNITS..((j + 1) * UNITS).min(self.hidden)
    }
}

/// What a direction reads.
#[derive(Debug, Clone, Copy)]
pub(super) enum Input<'a, T> {
    /// Features `(T, B, I)`, or `(B, T, I)` (see
    /// [`Geometry::batch_first_in`]), projected through `W_ih^T`.
    Features(&'a [T]),
    /// Token ids `(T, B)` or `(B, T)`, each step's projection a row of
    /// `table`.
    Tokens {
        ids: &'a [u32],
        table: &'a TokenTable<T>,
    },
}

/// One direction's inputs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Job<'a, T> {
    pub(super) w: &'a PackedWeights<T>,
    pub(super) x: Input<'a, T>,
    pub(super) h0: Option<&'a [T]>,
    pub(super) c0: Option<&'a [T]>,
    pub(super) reverse: bool,
    /// The instruction set the members run on.
    pub(super) path: KernelPath,
}

impl<T> Job<'_, T> {
    /// The time index of walk step `step`.
    pub(super) fn time(&self, steps: usize, step: usize) -> usize {
        if self.reverse {
            steps - 1 - step
        } else {
            step
        }
    }

    pub(super) fn is_lstm(&self) -> bool {
        self.w.cell == CellKind::Lstm
    }
}
