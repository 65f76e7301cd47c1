//! Recurrent layers with PyTorch semantics.
//!
//! * [`Lstm`], [`Gru`] and [`Rnn`] reproduce `torch.nn.LSTM`, `torch.nn.GRU`
//!   and `torch.nn.RNN` in inference mode: any number of layers, optional
//!   biases, `batch_first`, bidirectional runs, unbatched input, and for the
//!   LSTM the `proj_size` projection.
//! * [`LstmCell`], [`GruCell`] and [`RnnCell`] reproduce the single-step
//!   `torch.nn.LSTMCell`, `torch.nn.GRUCell` and `torch.nn.RNNCell`.
//!
//! The three modules are one generic type, [`Stacked`], and the three cells
//! one generic [`Cell`], each made an LSTM, a GRU or an RNN by its
//! configuration ([`StackConfig`], [`CellConfig`]).
//!
//! Parameters are loaded under PyTorch's own names, so a `state_dict`
//! exported to safetensors loads as is.
//!
//! # Padded batches
//!
//! `forward_padded` takes a padded batch and the true length of every
//! sequence, and returns what PyTorch computes for
//! `pad_packed_sequence(module(pack_padded_sequence(xs, lengths, enforce_sorted=False)))`:
//! each sequence is run over its own steps only (the backward direction
//! starts at its last real step), its final state is the state at its true
//! end, and output positions past its end are zero. The output's time axis
//! is `max(lengths)`. The lengths may come in any order.
//!
//! # Streaming
//!
//! Every `forward` takes an initial state and returns the true final state,
//! so a unidirectional module can consume a long sequence chunk by chunk:
//! feeding each chunk with the state returned by the previous one gives the
//! same outputs and final state as one call on the whole sequence.
//! Bidirectional modules cannot stream this way: their backward direction
//! starts from the end of the whole sequence, which a chunk does not see.
//!
//! # Performance notes
//!
//! At load time the weights are transposed once into contiguous `(in, G*H)`
//! matrices (`G` gates of `H` features) and the biases are folded into the
//! input projection wherever the math allows. In `forward`, the input
//! projection of a whole sequence is one matmul per layer and direction; the
//! time loop only multiplies the previous hidden state by `W_hh^T` and
//! applies the gate nonlinearities. A padded batch adds one masked select of
//! the state per step, and only at the steps that are padding for some
//! sequence (`t >= min(lengths)`).
//!
//! For [`Lstm`] and [`Gru`] on the CPU in `f32` or `f64`, a run of more than
//! one step with nothing to mask (`forward`, or `forward_padded` with equal
//! lengths) runs each layer, input projection included, as one call of the
//! direct CPU kernels of [`crate::kernel`], on weights packed for them on
//! the first such run (and kept, per dtype, by the module and its clones);
//! a layer reads the previous layer's output buffer directly. The other
//! cases (other devices and dtypes, padded batches, single steps, the cells)
//! use Candle ops. The kernels' `f32` sigmoid and tanh are polynomial
//! approximations, so the two paths agree to rounding, not bit for bit.
//!
//! # Token input
//!
//! When the input is an embedding of token ids, [`Stacked::fold_embedding`]
//! computes the first layer's input projection of every row of the
//! embedding once, at load, and [`Stacked::forward_tokens`] then takes the
//! ids themselves: each step's projection is a row of that table, copied,
//! instead of a product over the embedded features. The generated code does
//! this wherever an `nn.Embedding` feeds nothing but an LSTM or a GRU.

mod cell;
mod common;
mod gru;
mod lstm;
mod simple;
mod stack;
mod tokens;

pub use cell::{
    Cell, CellConfig, CellState, CellStateRef, GruCell, GruCellConfig, LstmCell, LstmCellConfig,
    RnnCell, RnnCellConfig,
};
pub use gru::{Gru, GruConfig};
pub use lstm::{Lstm, LstmConfig};
pub use simple::{Nonlinearity, Rnn, RnnConfig};
pub use stack::{StackConfig, StackShape, StackState, StackStateRef, Stacked};
pub use tokens::FOLD_LIMIT_BYTES;

use candle_core::{bail, DType, Result, Tensor};

/// The per-sequence lengths of a padded batch, as `forward_padded` takes them, from the
/// integer tensor a PyTorch model passes to `pack_padded_sequence`.
pub fn sequence_lengths(lengths: &Tensor) -> Result<Vec<usize>> {
    if lengths.rank() != 1 {
        bail!(
            "sequence lengths must be a 1-D tensor, got shape {:?}",
            lengths.dims()
        );
    }
    if lengths.dtype().is_float() {
        bail!(
            "sequence lengths must be integers, got {:?}",
            lengths.dtype()
        );
    }
    let values = lengths.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    values
        .into_iter()
        .map(|n| match usize::try_from(n) {
            Ok(n) => Ok(n),
            Err(_) => bail!("sequence lengths must be non-negative, got {n}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn lengths_from_integer_tensors() -> Result<()> {
        let t = Tensor::new(&[3i64, 1, 2], &Device::Cpu)?;
        assert_eq!(sequence_lengths(&t)?, vec![3, 1, 2]);
        let t = Tensor::new(&[4u32, 2], &Device::Cpu)?;
        assert_eq!(sequence_lengths(&t)?, vec![4, 2]);
        assert!(sequence_lengths(&Tensor::new(&[-1i64], &Device::Cpu)?).is_err());
        assert!(sequence_lengths(&Tensor::new(&[1.0f32], &Device::Cpu)?).is_err());
        assert!(sequence_lengths(&Tensor::new(&[[1i64]], &Device::Cpu)?).is_err());
        Ok(())
    }
}
