//! An embedding folded into the first layer of a stacked module
//! ([`Stacked::fold_embedding`](super::Stacked::fold_embedding)).
//!
//! A recurrent layer whose input is `embedding(tokens)` projects each
//! step's embedded token through `W_ih^T`. That projection depends on the
//! token alone, so it can be computed once for the whole vocabulary, at
//! load time: the table `E W_ih^T + b`. A forward pass then copies one row
//! of the table per token instead of building the embedded input and
//! multiplying it, which for a tagger (vocabulary 5000, 300 features,
//! 512 units) is a third of the layer's time.

use candle_core::{DType, Result, Tensor, TensorId};

use crate::kernel::TokenTable;

use super::common::KernelFloat;

/// The largest folded table, in bytes, over all directions: a vocabulary
/// of 8192 for an LSTM of 512 units in two directions. A table is
/// `vocabulary × gates × H` numbers, where the embedding and `W_ih` it
/// replaces are `(vocabulary + gates × H) × I`, so a large vocabulary would
/// cost more memory than it saves time: past this size the module runs the
/// embedding as it is.
pub const FOLD_LIMIT_BYTES: usize = 64 << 20;

/// The tables of an embedding folded into the first layer, one per
/// direction, and the embedding they were built from.
#[derive(Debug)]
pub(super) struct Folded {
    /// The embedding's weight, recognised in `forward_tokens` by its id.
    pub(super) source: TensorId,
    pub(super) vocab: usize,
    pub(super) tables: Tables,
}

/// The tables in the embedding's element type.
#[derive(Debug)]
pub(super) enum Tables {
    F32(Vec<TokenTable<f32>>),
    F64(Vec<TokenTable<f64>>),
}

impl Tables {
    pub(super) fn dtype(&self) -> DType {
        match self {
            Self::F32(_) => DType::F32,
            Self::F64(_) => DType::F64,
        }
    }
}

/// The token ids of `tokens`, an integer tensor, in its own layout: every
/// one checked to be a row of an embedding of `vocab` rows.
pub(super) fn token_ids(kind: &str, tokens: &Tensor, vocab: usize) -> Result<Vec<u32>> {
    let ids = tokens
        .flatten_all()?
        .to_dtype(DType::I64)?
        .to_vec1::<i64>()?;
    ids.into_iter()
        .map(|id| match u32::try_from(id) {
            Ok(id) if (id as usize) < vocab => Ok(id),
            _ => {
                candle_core::bail!("{kind}: token id {id} is outside the embedding's {vocab} rows")
            }
        })
        .collect()
}

/// The element types a table can be built in, with their [`Tables`] case.
pub(super) trait TableFloat: KernelFloat {
    fn wrap(tables: Vec<TokenTable<Self>>) -> Tables;
    fn tables(tables: &Tables) -> Option<&[TokenTable<Self>]>;
}

impl TableFloat for f32 {
    fn wrap(tables: Vec<TokenTable<Self>>) -> Tables {
        Tables::F32(tables)
    }
    fn tables(tables: &Tables) -> Option<&[TokenTable<Self>]> {
        match tables {
            Tables::F32(t) => Some(t),
            Tables::F64(_) => None,
        }
    }
}

impl TableFloat for f64 {
    fn wrap(tables: Vec<TokenTable<Self>>) -> Tables {
        Tables::F64(tables)
    }
    fn tables(tables: &Tables) -> Option<&[TokenTable<Self>]> {
        match tables {
            Tables::F64(t) => Some(t),
            Tables::F32(_) => None,
        }
    }
}
