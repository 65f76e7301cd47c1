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
