//! `F.unfold` and `F.fold` (`nn.Unfold`, `nn.Fold`; PyTorch's `im2col` and `col2im`): the
//! sliding blocks of a batch of 2-d inputs laid out as columns, and columns summed back into
//! place, where overlapping blocks add up (the overlap-add of chunked separation models). And
//! `Tensor.unfold` ([`sliding_windows`]): windows along one dimension (framing a signal).
//!
//! Both are one gather or one scatter-add through a list of positions computed on the host:
//! column element (channel, kernel row, kernel column, block) reads the zero-padded input at
//! (block row * stride + kernel row * dilation, block column * stride + kernel column *
//! dilation), PyTorch's layout.

use candle_core::shape::Dim;
use candle_core::{bail, Result, Tensor};

/// The sliding blocks of `F.unfold`/`F.fold`, each setting as (height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patches {
    pub kernel: (usize, usize),
    pub dilation: (usize, usize),
    pub padding: (usize, usize),
    pub stride: (usize, usize),
}

impl Patches {
    /// `F.unfold(x, kernel, dilation, padding, stride)`: `(N, C, H, W)` (or `(C, H, W)`) to
    /// `(N, C * kh * kw, L)`, one column per block, `L` blocks in row-major order.
    pub fn unfold(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() == 3 {
            return self.unfold(&x.unsqueeze(0)?)?.squeeze(0);
        }
        let (n, c, h, w) = x.dims4()?;
        let (ph, pw) = self.padding;
        let (index, blocks) = self.positions(x, h, w, "unfold")?;
        let padded = x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?;
        let (kh, kw) = self.kernel;
        padded
            .flatten_from(2)?
            .index_select(&index, 2)?
            .reshape((n, c * kh * kw, blocks))
    }

    /// `F.fold(x, output, kernel, dilation, padding, stride)`: `(N, C * kh * kw, L)` (or
    /// `(C * kh * kw, L)`) to `(N, C, output.0, output.1)`, every column added into the
    /// positions its block covers.
    pub fn fold(&self, x: &Tensor, output: (usize, usize)) -> Result<Tensor> {
        if x.rank() == 2 {
            return self.fold(&x.unsqueeze(0)?, output)?.squeeze(0);
        }
        let (n, rows, columns) = x.dims3()?;
        let (kh, kw) = self.kernel;
        if kh * kw == 0 || rows % (kh * kw) != 0 {
            bail!("fold: {rows} rows are not a whole number of {kh} x {kw} kernels")
        }
        let c = rows / (kh * kw);
        let (h, w) = output;
        let (index, blocks) = self.positions(x, h, w, "fold")?;
        if blocks != columns {
            bail!("fold: {columns} columns given, an output of {h} x {w} has {blocks} blocks")
        }
        let (ph, pw) = self.padding;
        let (hp, wp) = (h + 2 * ph, w + 2 * pw);
        let source = x.reshape((n, c, kh * kw * blocks))?;
        Tensor::zeros((n, c, hp * wp), x.dtype(), x.device())?
            .index_add(&index, &source, 2)?
            .reshape((n, c, hp, wp))?
            .narrow(2, ph, h)?
            .narrow(3, pw, w)
    }

    /// The flat position in the padded `h` x `w` input that each column element reads, ordered
    /// (kernel row, kernel column, block), as a tensor on `x`'s device; and the number of
    /// blocks.
    fn positions(&self, x: &Tensor, h: usize, w: usize, op: &str) -> Result<(Tensor, usize)> {
        let rows = self.blocks(h, 0, op)?;
        let cols = self.blocks(w, 1, op)?;
        let wp = w + 2 * self.padding.1;
        let (kh, kw) = self.kernel;
        let (dh, dw) = self.dilation;
        let (sh, sw) = self.stride;
        let mut positions = Vec::with_capacity(kh * kw * rows * cols);
        for ki in 0..kh {
            for kj in 0..kw {
                for bi in 0..rows {
                    let row = (bi * sh + ki * dh) * wp;
                    positions.extend((0..cols).map(|bj| (row + bj * sw + kj * dw) as u32));
                }
            }
        }
        let count = positions.len();
        Ok((Tensor::from_vec(positions, count, x.device())?, rows * cols))
    }

    /// How many blocks fit along dimension `d` (0 height, 1 width) of length `len`.
    fn blocks(&self, len: usize, d: usize, op: &str) -> Result<usize> {
        let pick = |pair: (usize, usize)| if d == 0 { pair.0 } else { pair.1 };
        let (k, dil, pad, s) = (
            pick(self.kernel),
            pick(self.dilation),
            pick(self.padding),
            pick(self.stride),
        );
        if k == 0 || dil == 0 || s == 0 {
            bail!("{op}: kernel size, dilation and stride must be greater than 0")
        }
        let span = dil * (k - 1) + 1;
        if len + 2 * pad < span {
            bail!("{op}: a kernel spanning {span} does not fit in {len} + 2 x {pad} padding")
        }
        Ok((len + 2 * pad - span) / s + 1)
    }
}

/// `x.unfold(dim, size, step)`: the windows of `size` elements along `dim`, one every `step`,
/// as many as fit; `dim` becomes the window count and the window is a new last dimension.
pub fn sliding_windows<D: Dim>(x: &Tensor, dim: D, size: usize, step: usize) -> Result<Tensor> {
    let dim = dim.to_index(x.shape(), "sliding_windows")?;
    let len = x.dim(dim)?;
    if step == 0 || size > len {
        bail!("sliding_windows: windows of {size} every {step} along a dimension of {len}")
    }
    let count = (len - size) / step + 1;
    let positions: Vec<u32> = (0..count)
        .flat_map(|w| (w * step..w * step + size).map(|p| p as u32))
        .collect();
    let index = Tensor::from_vec(positions, count * size, x.device())?;
    let mut shape = x.dims().to_vec();
    shape.splice(dim..=dim, [count, size]);
    let windows = x.contiguous()?.index_select(&index, dim)?.reshape(shape)?;
    let rank = windows.rank();
    if dim + 2 == rank {
        return Ok(windows);
    }
    // the window dimension goes last, as in PyTorch
    let mut order: Vec<usize> = (0..rank).filter(|&d| d != dim + 1).collect();
    order.push(dim + 1);
    windows.permute(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn unfold_lays_blocks_out_as_columns() -> Result<()> {
        // one channel, 3 x 3, 2 x 2 kernel, stride 1: four blocks
        let x = Tensor::arange(0f32, 9., &Device::Cpu)?.reshape((1, 1, 3, 3))?;
        let patches = Patches {
            kernel: (2, 2),
            dilation: (1, 1),
            padding: (0, 0),
            stride: (1, 1),
        };
        let columns = patches.unfold(&x)?;
        let expected = [
            [0f32, 1., 3., 4.],
            [1., 2., 4., 5.],
            [3., 4., 6., 7.],
            [4., 5., 7., 8.],
        ];
        assert_eq!(columns.squeeze(0)?.to_vec2::<f32>()?, expected);
        Ok(())
    }

    #[test]
    fn fold_adds_overlaps_and_undoes_unfold_without_them() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f64, 2. * 7. * 5., &dev)?.reshape((1, 2, 7, 5))?;
        // blocks that tile the (padded) input exactly: fold(unfold(x)) == x
        let tiles = Patches {
            kernel: (3, 2),
            dilation: (1, 1),
            padding: (1, 0),
            stride: (3, 2),
        };
        let cropped = x.narrow(3, 0, 4)?;
        let back = tiles.fold(&tiles.unfold(&cropped)?, (7, 4))?;
        let diff = (back - &cropped)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert_eq!(diff, 0.0);
        // 50 % overlap along the height: fold(unfold(ones)) counts the blocks over each row
        let overlap = Patches {
            kernel: (4, 1),
            dilation: (1, 1),
            padding: (4, 0),
            stride: (2, 1),
        };
        let ones = Tensor::ones((1, 1, 6, 1), DType::F32, &dev)?;
        let counts = overlap.fold(&overlap.unfold(&ones)?, (6, 1))?;
        let counts: Vec<f32> = counts.flatten_all()?.to_vec1()?;
        assert_eq!(counts, [2f32, 2., 2., 2., 2., 2.]);
        Ok(())
    }

    #[test]
    fn sliding_windows_frame_a_dimension() -> Result<()> {
        let x = Tensor::arange(0f32, 14., &Device::Cpu)?.reshape((2, 7))?;
        // along the last dimension: windows of 3 every 2
        let frames = sliding_windows(&x, 1, 3, 2)?;
        assert_eq!(frames.dims(), [2, 3, 3]);
        assert_eq!(
            frames.get(1)?.to_vec2::<f32>()?,
            [[7f32, 8., 9.], [9., 10., 11.], [11., 12., 13.]]
        );
        // along the first: the window is still the last dimension
        let frames = sliding_windows(&x, 0, 2, 1)?;
        assert_eq!(frames.dims(), [1, 7, 2]);
        assert_eq!(frames.get(0)?.get(3)?.to_vec1::<f32>()?, [3f32, 10.]);
        assert!(sliding_windows(&x, 1, 8, 1).is_err());
        Ok(())
    }

    #[test]
    fn a_mismatched_fold_is_an_error() {
        let x = Tensor::zeros((1, 4, 3), DType::F32, &Device::Cpu).unwrap();
        let patches = Patches {
            kernel: (2, 2),
            dilation: (1, 1),
            padding: (0, 0),
            stride: (1, 1),
        };
        let err = patches.fold(&x, (5, 5)).unwrap_err().to_string();
        assert!(err.contains("3 columns given"), "{err}");
    }
}
