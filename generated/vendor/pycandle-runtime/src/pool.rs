//! Pooling with the options Candle's `max_pool2d`/`avg_pool2d` lack: `ceil_mode`, dilation,
//! averages that leave the padding out of the count, and a divisor override.
//!
//! PyTorch's 1-d and 2-d max and average pooling are separable: a window's maximum is the
//! maximum over one dimension of the maxima over the other, and an average's divisor (the
//! window clipped to the padded or the real input) is a product of one count per dimension.
//! So each spatial dimension is pooled on its own: the windows' elements are gathered with one
//! `index_select`, positions in the padding are masked, and the window axis is reduced.

use candle_core::shape::Dim;
use candle_core::{bail, Result, Tensor};

/// How one spatial dimension is pooled, with PyTorch's meaning of each field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolDim {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub ceil_mode: bool,
}

impl PoolDim {
    /// A window of `kernel` elements moved by `kernel`, no padding, no dilation.
    pub const fn new(kernel: usize) -> Self {
        Self {
            kernel,
            stride: kernel,
            padding: 0,
            dilation: 1,
            ceil_mode: false,
        }
    }

    /// The number of windows over `size` elements, as PyTorch counts them.
    pub fn output_size(&self, size: usize) -> Result<usize> {
        let span = self.dilation * (self.kernel - 1) + 1;
        let padded = size + 2 * self.padding;
        if self.kernel == 0 || self.stride == 0 || padded < span {
            bail!("pooling window {self:?} does not fit {size} elements")
        }
        let steps = padded - span;
        let mut out = if self.ceil_mode {
            steps.div_ceil(self.stride)
        } else {
            steps / self.stride
        } + 1;
        // with ceil_mode the last window must start inside the input or its left padding
        if self.ceil_mode && (out - 1) * self.stride >= size + self.padding {
            out -= 1;
        }
        Ok(out)
    }
}

/// Windows of one dimension: the source position of every window element (clamped into the
/// input), whether it lies in the input, and each window's extent in the padded input.
struct Windows {
    out: usize,
    positions: Vec<u32>,
    inside: Vec<u8>,
    padded_counts: Vec<usize>,
    inside_counts: Vec<usize>,
}

fn windows(p: &PoolDim, size: usize) -> Result<Windows> {
    let out = p.output_size(size)?;
    let (mut positions, mut inside) = (Vec::new(), Vec::new());
    let (mut padded_counts, mut inside_counts) = (Vec::new(), Vec::new());
    for o in 0..out {
        let start = (o * p.stride) as isize - p.padding as isize;
        let (mut padded, mut real) = (0, 0);
        for j in 0..p.kernel {
            let pos = start + (j * p.dilation) as isize;
            let valid = pos >= 0 && (pos as usize) < size;
            positions.push(pos.clamp(0, size as isize - 1) as u32);
            inside.push(valid as u8);
            padded += (pos < (size + p.padding) as isize) as usize;
            real += valid as usize;
        }
        padded_counts.push(padded);
        inside_counts.push(real);
    }
    Ok(Windows {
        out,
        positions,
        inside,
        padded_counts,
        inside_counts,
    })
}

/// `x` with `dim` replaced by (windows, window elements), and the mask of real elements
/// shaped to broadcast against it.
fn gathered(x: &Tensor, dim: usize, w: &Windows, kernel: usize) -> Result<(Tensor, Tensor)> {
    let device = x.device();
    let index = Tensor::from_slice(&w.positions, w.positions.len(), device)?;
    let mut shape = x.dims().to_vec();
    shape.splice(dim..=dim, [w.out, kernel]);
    let values = x.contiguous()?.index_select(&index, dim)?.reshape(shape)?;
    let mut mask_shape = vec![1; x.rank() + 1];
    mask_shape[dim] = w.out;
    mask_shape[dim + 1] = kernel;
    let mask = Tensor::from_slice(&w.inside, w.inside.len(), device)?.reshape(mask_shape)?;
    Ok((values, mask))
}

/// Max pooling of one dimension; padding counts as minus infinity.
pub fn max_pool_dim<D: Dim>(x: &Tensor, dim: D, p: &PoolDim) -> Result<Tensor> {
    let dim = dim.to_index(x.shape(), "max_pool_dim")?;
    let w = windows(p, x.dim(dim)?)?;
    let (values, mask) = gathered(x, dim, &w, p.kernel)?;
    let lowest = Tensor::full(f64::NEG_INFINITY, (), x.device())?.to_dtype(x.dtype())?;
    mask.broadcast_as(values.shape())?
        .where_cond(&values, &lowest.broadcast_as(values.shape())?)?
        .max(dim + 1)
}

/// What an average divides a window's sum by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Divisor {
    /// The window clipped to the padded input (`count_include_pad=True`).
    Padded,
    /// The window's elements inside the input (`count_include_pad=False`).
    Inside,
    /// One: the sum (PyTorch's `divisor_override` divides the 2-d sum once, at the end).
    One,
}

/// Average (or sum) pooling of one dimension; padding counts as zero.
pub fn avg_pool_dim<D: Dim>(x: &Tensor, dim: D, p: &PoolDim, divisor: Divisor) -> Result<Tensor> {
    let dim = dim.to_index(x.shape(), "avg_pool_dim")?;
    let w = windows(p, x.dim(dim)?)?;
    let (values, mask) = gathered(x, dim, &w, p.kernel)?;
    let sums = values
        .broadcast_mul(&mask.to_dtype(x.dtype())?)?
        .sum(dim + 1)?;
    let counts = match divisor {
        Divisor::Padded => &w.padded_counts,
        Divisor::Inside => &w.inside_counts,
        Divisor::One => return Ok(sums),
    };
    if counts.contains(&0) {
        bail!("avg_pool_dim: a window holds no input element")
    }
    let counts: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
    let mut shape = vec![1; x.rank()];
    shape[dim] = w.out;
    let counts = Tensor::from_vec(counts, shape, x.device())?.to_dtype(x.dtype())?;
    sums.broadcast_div(&counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    fn row() -> Result<Tensor> {
        Tensor::new(&[[1f32, 5., 2., 4., 3.]], &Device::Cpu)
    }

    #[test]
    fn output_sizes_follow_pytorch() -> Result<()> {
        let p = |kernel, stride, padding, dilation, ceil_mode| PoolDim {
            kernel,
            stride,
            padding,
            dilation,
            ceil_mode,
        };
        assert_eq!(p(2, 2, 0, 1, false).output_size(5)?, 2);
        assert_eq!(p(2, 2, 0, 1, true).output_size(5)?, 3);
        assert_eq!(p(3, 2, 1, 1, true).output_size(6)?, 4);
        assert_eq!(p(2, 2, 1, 1, true).output_size(4)?, 3);
        // a fourth window would start in the right padding: dropped
        assert_eq!(p(2, 2, 1, 1, true).output_size(5)?, 3);
        assert_eq!(p(2, 1, 0, 3, false).output_size(5)?, 2);
        assert!(p(4, 1, 0, 2, false).output_size(5).is_err());
        Ok(())
    }

    #[test]
    fn max_with_ceil_mode_and_dilation() -> Result<()> {
        let ceil = PoolDim {
            ceil_mode: true,
            ..PoolDim::new(2)
        };
        assert_eq!(
            max_pool_dim(&row()?, D::Minus1, &ceil)?.to_vec2::<f32>()?,
            [[5., 4., 3.]]
        );
        let dilated = PoolDim {
            stride: 1,
            dilation: 2,
            padding: 1,
            ..PoolDim::new(2)
        };
        // windows over [pad, 1, 5, 2, 4, 3, pad]: (pad, 5) (1, 2) (5, 4) (2, 3) (4, pad)
        assert_eq!(
            max_pool_dim(&row()?, 1, &dilated)?.to_vec2::<f32>()?,
            [[5., 2., 5., 3., 4.]]
        );
        Ok(())
    }

    #[test]
    fn averages_count_as_asked() -> Result<()> {
        let p = PoolDim {
            stride: 2,
            padding: 1,
            ceil_mode: true,
            ..PoolDim::new(3)
        };
        // windows over [pad, 1, 5, 2, 4, 3, pad]: (pad 1 5) (5 2 4) (4 3 pad)
        let padded = avg_pool_dim(&row()?, 1, &p, Divisor::Padded)?;
        assert_eq!(padded.to_vec2::<f32>()?, [[2., 11. / 3., 7. / 3.]]);
        let inside = avg_pool_dim(&row()?, 1, &p, Divisor::Inside)?;
        assert_eq!(inside.to_vec2::<f32>()?, [[3., 11. / 3., 3.5]]);
        let sums = avg_pool_dim(&row()?, 1, &p, Divisor::One)?;
        assert_eq!(sums.to_vec2::<f32>()?, [[6., 11., 7.]]);
        Ok(())
    }
}
