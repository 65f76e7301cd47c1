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

/// Calls `f` with the elements of a layer's `weight` and `bias` (CPU
/// tensors; copied first if not contiguous).
pub(crate) fn with_weight_and_bias<T: WithDType, R>(
    weight: &Tensor,
    bias: Option<&Tensor>,
    f: impl FnOnce(&[T], Option<&[T]>) -> Result<R>,
) -> Result<R> {
    let weight = weight.contiguous()?;
    let bias = bias.map(Tensor::contiguous).transpose()?;
    let weight_view = CpuView::new(&weight)?;
    let bias_view = bias.as_ref().map(CpuView::new).transpose()?;
    f(
        weight_view.slice::<T>()?,
        bias_view.as_ref().map(CpuView::slice::<T>).transpose()?,
    )
}

/// Calls `f` with the elements of the CPU tensor `t` in row-major order:
/// borrowed from its storage when `t` is contiguous, else copied first. A
/// strided view of rank 2 or 3 (a channels-first activation read
/// time-major, say) is copied in 16 x 16 tiles, so that both sides are
/// read and written a cache line at a time; Candle's strided copy of such a
/// view moves one element at a time, several times slower.
pub(crate) fn with_elements<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    let copy = {
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            bail!("pycandle-runtime: expected a CPU tensor")
        };
        let src = cpu.as_slice::<T>()?;
        if let Some((start, end)) = layout.contiguous_offsets() {
            return Ok(f(&src[start..end]));
        }
        match (layout.dims(), layout.stride()) {
            (&[n0, n1, n2], &[s0, s1, s2]) => Some(gather3(
                src,
                layout.start_offset(),
                [n0, n1, n2],
                [s0, s1, s2],
            )),
            (&[n1, n2], &[s1, s2]) => Some(gather3(
                src,
                layout.start_offset(),
                [1, n1, n2],
                [0, s1, s2],
            )),
            _ => None,
        }
    };
    match copy {
        Some(copy) => Ok(f(&copy)),
        None => {
            let t = t.contiguous()?;
            let view = CpuView::new(&t)?;
            Ok(f(view.slice::<T>()?))
        }
    }
}

/// `out[i0][i1][i2] = src[start + i0 * s0 + i1 * s1 + i2 * s2]`, row-major.
fn gather3<T: WithDType>(src: &[T], start: usize, dims: [usize; 3], strides: [usize; 3]) -> Vec<T> {
    const TILE: usize = 16;
    let [n0, n1, n2] = dims;
    let mut out = vec![T::zero(); n0 * n1 * n2];
    if out.is_empty() {
        return out;
    }
    let src_row = |i0: usize, i1: usize| start + i0 * strides[0] + i1 * strides[1];
    if strides[2] == 1 {
        for (row, dst) in out.chunks_exact_mut(n2).enumerate() {
            let from = src_row(row / n1, row % n1);
            dst.copy_from_slice(&src[from..from + n2]);
        }
        return out;
    }
    // The outer dimension the source walks faster is tiled with the last.
    let tiled = if strides[1] <= strides[0] { 1 } else { 0 };
    let (plain_len, tiled_len) = if tiled == 1 { (n0, n1) } else { (n1, n0) };
    for p in 0..plain_len {
        for j0 in (0..tiled_len).step_by(TILE) {
            for k0 in (0..n2).step_by(TILE) {
                let k1 = (k0 + TILE).min(n2);
                for j in j0..(j0 + TILE).min(tiled_len) {
                    let (i0, i1) = if tiled == 1 { (p, j) } else { (j, p) };
                    let (dst, from) = ((i0 * n1 + i1) * n2, src_row(i0, i1));
                    let src = src[from + k0 * strides[2]..].iter().step_by(strides[2]);
                    for (d, &s) in out[dst + k0..dst + k1].iter_mut().zip(src) {
                        *d = s;
                    }
                }
            }
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use candle_core::{Device, IndexOp, Tensor};

    use super::with_elements;

    /// Every permutation of a rank-3 tensor, narrowed and not, a transposed
    /// matrix and a rank-4 view: the elements as `contiguous()` orders them.
    #[test]
    fn views_are_copied_in_row_major_order() -> candle_core::Result<()> {
        let base =
            Tensor::arange(0f32, (17 * 35 * 19) as f32, &Device::Cpu)?.reshape((17, 35, 19))?;
        let mut views = Vec::new();
        for (a, b, c) in [
            (0, 1, 2),
            (0, 2, 1),
            (1, 0, 2),
            (1, 2, 0),
            (2, 0, 1),
            (2, 1, 0),
        ] {
            let v = base.permute((a, b, c))?;
            views.push(v.narrow(1, 1, v.dim(1)? - 2)?);
            views.push(v);
        }
        views.push(base.i(3)?.t()?);
        views.push(base.i((.., 2..30, 1))?);
        views.push(base.reshape((17, 5, 7, 19))?.permute((3, 1, 0, 2))?);
        for v in views {
            let want = v.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            let got = with_elements::<f32, _>(&v, |x| x.to_vec())?;
            assert_eq!(
                got,
                want,
                "view of shape {:?}, strides {:?}",
                v.dims(),
                v.stride()
            );
        }
        Ok(())
    }
}
