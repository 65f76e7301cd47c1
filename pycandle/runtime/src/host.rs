//! Borrowing a CPU tensor's elements, for the runtime's own kernels.

use candle_core::{bail, Result, Storage, StorageRef, Tensor, WithDType};

/// The elements of a contiguous CPU tensor, borrowed from its storage
/// without copying (the storage stays read-locked while the view lives).
pub(crate) struct CpuView<'a> {
    storage: StorageRef<'a>,
    start: usize,
    end: usize,
}

impl<'a> CpuView<'a> {
    /// Fails when `t` is not contiguous; `slice` fails off the CPU.
    pub(crate) fn new(t: &'a Tensor) -> Result<Self> {
        let (storage, layout) = t.storage_and_layout();
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("pycandle-runtime: expected a contiguous tensor")
        };
        Ok(Self {
            storage,
            start,
            end,
        })
    }

    pub(crate) fn slice<T: WithDType>(&self) -> Result<&[T]> {
        match &*self.storage {
            Storage::Cpu(cpu) => Ok(&cpu.as_slice::<T>()?[self.start..self.end]),
            _ => bail!("pycandle-runtime: expected a CPU tensor"),
        }
    }
}

/// The largest absolute difference between two tensors of one shape, for
/// the tests of layers that replace candle_nn's forward.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    assert_eq!(a.dims(), b.dims());
    (a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()
}
