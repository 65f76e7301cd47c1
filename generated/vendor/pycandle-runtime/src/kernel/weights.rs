//! The parameters of one direction, packed once for the kernels.

use super::panels::{gate_vector, Panels};
use super::{check_len, Float, ShapeError};

/// The cell a [`PackedWeights`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CellKind {
    Lstm,
    Gru,
}

/// The parameters of one direction of an LSTM layer, as slices of PyTorch's
/// tensors (weights transposed), for [`PackedWeights::lstm`].
///
/// With `H` the hidden size, `I` the input size and `H_out` the size of `h`
/// (`H`, or the projection size with `w_hr_t`); gates in PyTorch's order
/// `i, f, g, o`.
#[derive(Debug, Clone, Copy)]
pub struct LstmWeights<'a, T> {
    /// `W_ih^T`, row-major `(I, 4H)`.
    pub w_ih_t: &'a [T],
    /// `W_hh^T`, row-major `(H_out, 4H)`.
    pub w_hh_t: &'a [T],
    /// `b_ih`, `(4H)`; `None` for zeros.
    pub b_ih: Option<&'a [T]>,
    /// `b_hh`, `(4H)`; `None` for zeros.
    pub b_hh: Option<&'a [T]>,
    /// `W_hr^T`, row-major `(H, H_out)`, when the layer projects `h`.
    pub w_hr_t: Option<&'a [T]>,
}

/// The parameters of one direction of a GRU layer, as slices of PyTorch's
/// tensors (weights transposed), for [`PackedWeights::gru`]; gates in
/// PyTorch's order `r, z, n`.
#[derive(Debug, Clone, Copy)]
pub struct GruWeights<'a, T> {
    /// `W_ih^T`, row-major `(I, 3H)`.
    pub w_ih_t: &'a [T],
    /// `W_hh^T`, row-major `(H, 3H)`.
    pub w_hh_t: &'a [T],
    /// `b_ih`, `(3H)`; `None` for zeros.
    pub b_ih: Option<&'a [T]>,
    /// `b_hh`, `(3H)`; `None` for zeros.
    pub b_hh: Option<&'a [T]>,
}

/// The parameters of one direction of a recurrent layer, packed for the
/// kernels (see the module documentation). Packing copies the weights once;
/// keep the result for as long as the weights do not change.
///
/// The biases are folded where the math allows: the LSTM adds `b_ih + b_hh`
/// to the input projection, the GRU adds `b_ih` and the `r`, `z` parts of
/// `b_hh` there and keeps `b_hn`, which the reset gate multiplies, apart.
#[derive(Debug, Clone)]
pub struct PackedWeights<T> {
    pub(super) cell: CellKind,
    pub(super) input: usize,
    pub(super) hidden: usize,
    pub(super) h_out: usize,
    pub(super) w_ih: Panels<T>,
    pub(super) w_hh: Panels<T>,
    /// Added to the input projection, in panel order.
    pub(super) x_bias: Vec<T>,
    /// GRU: `[0, 0, b_hn]` in panel order, added to `h W_hh^T`.
    pub(super) h_bias: Option<Vec<T>>,
    /// `W_hr^T` in panels of 16 columns.
    pub(super) w_hr: Option<Panels<T>>,
}

/// `a + b`, either of which may be missing.
fn sum<T: Float>(a: Option<&[T]>, b: Option<&[T]>) -> Option<Vec<T>> {
    match (a, b) {
        (None, None) => None,
        (Some(v), None) | (None, Some(v)) => Some(v.to_vec()),
        (Some(a), Some(b)) => Some(a.iter().zip(b).map(|(&a, &b)| a + b).collect()),
    }
}

impl CellKind {
    /// The kernels' order of the gates in a block of units, as indices into
    /// PyTorch's order: for the LSTM (`i, f, g, o`) the three logistic gates
    /// side by side, then the candidate; the GRU keeps `r, z, n`.
    fn gate_order(self) -> &'static [usize] {
        match self {
            Self::Lstm => &[0, 1, 3, 2],
            Self::Gru => &[0, 1, 2],
        }
    }

    /// Gates per unit: 4 for an LSTM, 3 for a GRU.
    pub(super) fn gates(self) -> usize {
        self.gate_order().len()
    }
}

/// What both cells' packing shares: the gate matrices and their biases, as
/// PyTorch holds them (weights transposed).
struct GateParams<'a, T> {
    w_ih_t: &'a [T],
    w_hh_t: &'a [T],
    b_ih: Option<&'a [T]>,
    b_hh: Option<&'a [T]>,
}

impl<T: Float> PackedWeights<T> {
    /// Checks the sizes common to both cells and packs the gate matrices;
    /// `x_bias` and `h_bias` are the biases as the cell folds them, in
    /// PyTorch's gate order.
    fn pack(
        cell: CellKind,
        input: usize,
        hidden: usize,
        h_out: usize,
        p: GateParams<'_, T>,
        fold: impl FnOnce(Option<&[T]>, Option<&[T]>) -> (Option<Vec<T>>, Option<Vec<T>>),
        w_hr: Option<Panels<T>>,
    ) -> Result<Self, ShapeError> {
        let (order, g) = (cell.gate_order(), cell.gates());
        check_len("w_ih_t", p.w_ih_t, input * g * hidden)?;
        check_len("w_hh_t", p.w_hh_t, h_out * g * hidden)?;
        for b in [p.b_ih, p.b_hh].into_iter().flatten() {
            check_len("b_ih/b_hh", b, g * hidden)?;
        }
        let (x_bias, h_bias) = fold(p.b_ih, p.b_hh);
        Ok(Self {
            cell,
            input,
            hidden,
            h_out,
            w_ih: Panels::gates(p.w_ih_t, input, order, hidden),
            w_hh: Panels::gates(p.w_hh_t, h_out, order, hidden),
            x_bias: gate_vector(x_bias.as_deref(), order, hidden),
            h_bias: h_bias.map(|b| gate_vector(Some(&b), order, hidden)),
            w_hr,
        })
    }

    /// Packs one direction of an LSTM layer with `input` features and
    /// `hidden` units.
    pub fn lstm(input: usize, hidden: usize, w: LstmWeights<'_, T>) -> Result<Self, ShapeError> {
        check_hidden(hidden)?;
        let h_out = match w.w_hr_t {
            Some(w_hr) if !w_hr.is_empty() && w_hr.len() % hidden == 0 => w_hr.len() / hidden,
            Some(w_hr) => {
                return Err(ShapeError(format!(
                    "recurrent kernel: w_hr_t has {} elements, not a positive multiple of hidden ({hidden})",
                    w_hr.len()
                )))
            }
            None => hidden,
        };
        let p = GateParams {
            w_ih_t: w.w_ih_t,
            w_hh_t: w.w_hh_t,
            b_ih: w.b_ih,
            b_hh: w.b_hh,
        };
        let w_hr = w.w_hr_t.map(|w_hr| Panels::plain(w_hr, hidden, h_out));
        // Both biases join the input projection.
        let fold = |b_ih: Option<&[T]>, b_hh: Option<&[T]>| (sum(b_ih, b_hh), None);
        Self::pack(CellKind::Lstm, input, hidden, h_out, p, fold, w_hr)
    }

    /// Packs one direction of a GRU layer with `input` features and
    /// `hidden` units.
    pub fn gru(input: usize, hidden: usize, w: GruWeights<'_, T>) -> Result<Self, ShapeError> {
        check_hidden(hidden)?;
        let p = GateParams {
            w_ih_t: w.w_ih_t,
            w_hh_t: w.w_hh_t,
            b_ih: w.b_ih,
            b_hh: w.b_hh,
        };
        // b_hr and b_hz join the input projection; b_hn stays with h W_hn^T.
        let fold = |b_ih: Option<&[T]>, b_hh: Option<&[T]>| {
            let Some(b) = b_hh else {
                return (sum(b_ih, None), None);
            };
            let (mut rz, mut n) = (b.to_vec(), b.to_vec());
            rz[2 * hidden..].fill(T::ZERO);
            n[..2 * hidden].fill(T::ZERO);
            (sum(b_ih, Some(&rz)), Some(n))
        };
        Self::pack(CellKind::Gru, input, hidden, hidden, p, fold, None)
    }

    /// Number of input features `I`.
    pub fn input_size(&self) -> usize {
        self.input
    }

    /// Number of hidden units `H` (the cell state size of an LSTM).
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Number of features of `h`: `H`, or the projection size.
    pub fn output_size(&self) -> usize {
        self.h_out
    }

    /// Whether these are LSTM weights (else GRU).
    pub fn is_lstm(&self) -> bool {
        self.cell == CellKind::Lstm
    }
}

fn check_hidden(hidden: usize) -> Result<(), ShapeError> {
    if hidden == 0 {
        return Err(ShapeError(
            "recurrent kernel: the hidden size must be positive".into(),
        ));
    }
    Ok(())
}
