//! PyTorch indexing that Candle has no single op for: strided slices, integer-tensor
//! indices (negative values count from the end), boolean masks, and slice bounds that Python
//! computes at run time (`x[..., :-pad]`, `x[..., :n]` with `n` a tensor).
//!
//! Booleans are `u8` in Candle (any non-zero value is true), as comparisons return them.
//! Candle's `index_select` wants a contiguous source, so strided views are copied first.

use candle_core::{bail, DType, Result, Tensor};

/// Python's position `-k` in a dimension of `size`: `k` from the end, where `-0` is the start,
/// so `x[:-k]` keeps `size - k` items and `x[:-0]` none. Clamped at 0, as Python's slices are.
pub fn from_end(size: usize, k: usize) -> usize {
    if k == 0 {
        0
    } else {
        size.saturating_sub(k)
    }
}

/// A slice bound held in a one-element integer tensor (`x[..., :n]` with
/// `n = torch.ceil(..).long()`), read as Python does: negative counts from the end, and the
/// bound is clamped to `0..=size`.
pub fn slice_bound(bound: &Tensor, size: usize) -> Result<usize> {
    let value = bound
        .flatten_all()?
        .to_dtype(DType::I64)?
        .to_vec1::<i64>()?;
    let [value] = value[..] else {
        bail!(
            "a slice bound must hold one value, this tensor holds {}",
            value.len()
        )
    };
    let magnitude = usize::try_from(value.unsigned_abs()).unwrap_or(usize::MAX);
    Ok(if value < 0 {
        size.saturating_sub(magnitude)
    } else {
        magnitude.min(size)
    })
}

/// `x[..., ::step]` along `dim`: every `step`-th element, starting with the first.
pub fn take_every(x: &Tensor, dim: usize, step: usize) -> Result<Tensor> {
    if step == 0 {
        bail!("take_every: step must be positive")
    }
    if step == 1 {
        return Ok(x.clone());
    }
    let size = x.dim(dim)?;
    let index = Tensor::arange_step(0u32, size as u32, step as u32, x.device())?;
    x.contiguous()?.index_select(&index, dim)
}

/// `x[..., index, ...]` with `index` an integer tensor of any shape at `dim`: the result has
/// `index`'s dimensions in place of `dim`. Negative values count from the end, as in PyTorch;
/// values out of range are an error.
pub fn take(x: &Tensor, index: &Tensor, dim: usize) -> Result<Tensor> {
    let size = x.dim(dim)? as i64;
    let flat = index.flatten_all()?.to_dtype(DType::I64)?;
    let values = flat.to_vec1::<i64>()?;
    if let Some(bad) = values.iter().find(|&&v| v < -size || v >= size) {
        bail!("index {bad} is out of bounds for dimension {dim} with size {size}")
    }
    let wrapped: Vec<i64> = values
        .iter()
        .map(|&v| if v < 0 { v + size } else { v })
        .collect();
    let flat = Tensor::from_vec(wrapped, values.len(), x.device())?;
    let picked = x.contiguous()?.index_select(&flat, dim)?;
    let mut shape = x.dims()[..dim].to_vec();
    shape.extend_from_slice(index.dims());
    shape.extend_from_slice(&x.dims()[dim + 1..]);
    picked.reshape(shape)
}

/// `x[mask]`: `mask` covers the leading `mask.rank()` dimensions of `x`; the result stacks the
/// selected elements (or sub-tensors) along one new first dimension, in row-major order.
pub fn masked_select(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let k = mask.rank();
    if k == 0 || k > x.rank() || mask.dims() != &x.dims()[..k] {
        bail!(
            "masked_select: mask shape {:?} does not match the leading dimensions of {:?}",
            mask.dims(),
            x.dims()
        )
    }
    let keep: Vec<u32> = mask
        .flatten_all()?
        .to_dtype(DType::U8)?
        .to_vec1::<u8>()?
        .iter()
        .enumerate()
        .filter(|(_, &m)| m != 0)
        .map(|(i, _)| i as u32)
        .collect();
    let rows = x.contiguous()?.flatten(0, k - 1)?;
    let count = keep.len();
    let index = Tensor::from_vec(keep, count, x.device())?;
    rows.index_select(&index, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn grid() -> Result<Tensor> {
        Tensor::arange(0f32, 12., &Device::Cpu)?.reshape((3, 4))
    }

    #[test]
    fn positions_from_the_end_read_as_python() -> Result<()> {
        assert_eq!(from_end(10, 3), 7);
        assert_eq!(from_end(10, 0), 0);
        assert_eq!(from_end(2, 5), 0);
        let bound = |v: i64| Tensor::new(v, &Device::Cpu);
        assert_eq!(slice_bound(&bound(4)?, 10)?, 4);
        assert_eq!(slice_bound(&bound(-4)?, 10)?, 6);
        assert_eq!(slice_bound(&bound(40)?, 10)?, 10);
        assert_eq!(slice_bound(&bound(-40)?, 10)?, 0);
        assert!(slice_bound(&Tensor::new(&[1i64, 2], &Device::Cpu)?, 10).is_err());
        Ok(())
    }

    #[test]
    fn every_second_column() -> Result<()> {
        let y = take_every(&grid()?, 1, 3)?;
        assert_eq!(y.to_vec2::<f32>()?, [[0., 3.], [4., 7.], [8., 11.]]);
        assert!(take_every(&grid()?, 0, 0).is_err());
        Ok(())
    }

    #[test]
    fn integer_index_wraps_negatives_and_keeps_its_shape() -> Result<()> {
        let index = Tensor::new(&[[-1i64, 0], [1, -3]], &Device::Cpu)?;
        let y = take(&grid()?, &index, 0)?;
        assert_eq!(y.dims(), &[2, 2, 4]);
        assert_eq!(y.get(1)?.get(1)?.to_vec1::<f32>()?, [0., 1., 2., 3.]);
        let cols = take(&grid()?, &Tensor::new(&[3u32, 1], &Device::Cpu)?, 1)?;
        assert_eq!(cols.to_vec2::<f32>()?, [[3., 1.], [7., 5.], [11., 9.]]);
        assert!(take(&grid()?, &Tensor::new(&[3i64], &Device::Cpu)?, 0).is_err());
        Ok(())
    }

    #[test]
    fn mask_selects_elements_or_rows() -> Result<()> {
        let x = grid()?;
        let odd = x.ge(5f64)?;
        assert_eq!(
            masked_select(&x, &odd)?.to_vec1::<f32>()?,
            [5., 6., 7., 8., 9., 10., 11.]
        );
        let rows = Tensor::new(&[1u8, 0, 1], &Device::Cpu)?;
        assert_eq!(masked_select(&x, &rows)?.dims(), &[2, 4]);
        let none = Tensor::zeros(3, DType::U8, &Device::Cpu)?;
        assert_eq!(masked_select(&x, &none)?.dims(), &[0, 4]);
        assert!(masked_select(&x, &Tensor::zeros(4, DType::U8, &Device::Cpu)?).is_err());
        Ok(())
    }
}
