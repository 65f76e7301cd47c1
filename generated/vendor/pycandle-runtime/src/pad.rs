//! PyTorch padding modes Candle has no op for: `reflect`, `circular` and a constant other than
//! zero (`F.pad(..., value=v)` and the convolutions' `padding_mode`). Zero and edge padding are
//! Candle's own `pad_with_zeros` and `pad_with_same`.

use candle_core::shape::Dim;
use candle_core::{bail, Result, Tensor};

/// Pads `dim` by mirroring the values next to the edge, the edge itself excluded
/// (`[a, b, c]` padded by 2 on the left is `[c, b, a, b, c]`). Each side must be smaller than
/// the size of `dim`, as in PyTorch.
pub fn pad_reflect<D: Dim>(x: &Tensor, dim: D, left: usize, right: usize) -> Result<Tensor> {
    let dim = dim.to_index(x.shape(), "pad_reflect")?;
    let size = x.dim(dim)?;
    if left >= size || right >= size {
        bail!("reflect padding ({left}, {right}) must be smaller than the size {size} of dimension {dim}")
    }
    let positions = (0..left)
        .map(|i| left - i)
        .chain(0..size)
        .chain((0..right).map(|i| size - 2 - i));
    gather(x, dim, positions)
}

/// Pads `dim` by wrapping around (`[a, b, c]` padded by 1 on each side is `[c, a, b, c, a]`).
/// Each side may be at most the size of `dim`, as in PyTorch.
pub fn pad_circular<D: Dim>(x: &Tensor, dim: D, left: usize, right: usize) -> Result<Tensor> {
    let dim = dim.to_index(x.shape(), "pad_circular")?;
    let size = x.dim(dim)?;
    if left > size || right > size {
        bail!(
            "circular padding ({left}, {right}) must not exceed the size {size} of dimension {dim}"
        )
    }
    let positions = (size - left..size).chain(0..size).chain(0..right);
    gather(x, dim, positions)
}

/// Pads `dim` with `value` on both sides.
pub fn pad_constant<D: Dim>(
    x: &Tensor,
    dim: D,
    left: usize,
    right: usize,
    value: f64,
) -> Result<Tensor> {
    let dim = dim.to_index(x.shape(), "pad_constant")?;
    let side = |width: usize| -> Result<Tensor> {
        let mut shape = x.dims().to_vec();
        shape[dim] = width;
        Tensor::full(value, shape, x.device())?.to_dtype(x.dtype())
    };
    Tensor::cat(&[&side(left)?, x, &side(right)?], dim)
}

/// `x` with `dim` rebuilt from the given source positions.
fn gather(x: &Tensor, dim: usize, positions: impl Iterator<Item = usize>) -> Result<Tensor> {
    let positions: Vec<u32> = positions.map(|p| p as u32).collect();
    let count = positions.len();
    let index = Tensor::from_vec(positions, count, x.device())?;
    x.contiguous()?.index_select(&index, dim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    fn row() -> Result<Tensor> {
        Tensor::new(&[[1f32, 2., 3., 4.]], &Device::Cpu)
    }

    #[test]
    fn reflect_mirrors_without_the_edge() -> Result<()> {
        let y = pad_reflect(&row()?, D::Minus1, 2, 3)?;
        assert_eq!(y.to_vec2::<f32>()?, [[3., 2., 1., 2., 3., 4., 3., 2., 1.]]);
        assert!(pad_reflect(&row()?, 1, 4, 0).is_err());
        Ok(())
    }

    #[test]
    fn circular_wraps_around() -> Result<()> {
        let y = pad_circular(&row()?, 1, 1, 4)?;
        assert_eq!(y.to_vec2::<f32>()?, [[4., 1., 2., 3., 4., 1., 2., 3., 4.]]);
        assert!(pad_circular(&row()?, 1, 5, 0).is_err());
        Ok(())
    }

    #[test]
    fn constant_fills_both_sides() -> Result<()> {
        let y = pad_constant(&row()?, 0, 1, 0, -2.5)?;
        assert_eq!(y.to_vec2::<f32>()?, [[-2.5; 4], [1., 2., 3., 4.]]);
        Ok(())
    }
}
