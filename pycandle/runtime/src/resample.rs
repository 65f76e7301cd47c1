//! Resampling as PyTorch's `F.interpolate` and `nn.Upsample` do it, one dimension at a time:
//! `nearest`, `nearest-exact` and `linear` (`bilinear` is `linear` along the width, then along
//! the height, the order of PyTorch's sums), and `bicubic` (the same order, four taps).
//!
//! The source positions are computed from the sizes at run time, with PyTorch's arithmetic
//! (nearest modes in `f32`, as its kernels do), so a port resamples inputs of any length as the
//! original does. Candle's `upsample_nearest1d`/`2d` map positions with `input / output` even
//! when PyTorch uses the scale factor it was given, and read them in `f64`: these follow
//! PyTorch.

use candle_core::shape::Dim;
use candle_core::{bail, Result, Tensor};

/// The output size of one resampled dimension.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Resize {
    /// This size; positions map with `input / output` (`size=`, or a recomputed scale factor).
    To(usize),
    /// `floor(input * scale)`; positions map with `1 / scale`, as PyTorch's kernels do with a
    /// `scale_factor` (unless `recompute_scale_factor=True`).
    By(f64),
}

impl Resize {
    /// The output size for an input of `input` elements, and the scale factor PyTorch's kernels
    /// receive.
    fn resolve(self, input: usize) -> Result<(usize, Option<f64>)> {
        let (size, scale) = match self {
            Resize::To(size) => (size, None),
            Resize::By(scale) => ((input as f64 * scale).floor() as usize, Some(scale)),
        };
        if input == 0 || size == 0 {
            bail!("resampling needs sizes greater than 0, got input {input} and output {size}")
        }
        Ok((size, scale.filter(|&s| s > 0.0)))
    }
}

/// PyTorch's `compute_scales_value`: the source step per output position.
fn step(input: usize, output: usize, scale: Option<f64>) -> f64 {
    match scale {
        Some(scale) => 1.0 / scale,
        None => input as f64 / output as f64,
    }
}

/// The source step of the interpolating modes: with `align_corners` the first and last
/// positions map onto each other, else as [`step`].
fn interpolation_step(input: usize, output: usize, scale: Option<f64>, align_corners: bool) -> f64 {
    match (align_corners, output > 1) {
        (true, true) => (input - 1) as f64 / (output - 1) as f64,
        (true, false) => 0.0,
        (false, _) => step(input, output, scale),
    }
}

/// `mode='nearest'` along `dim`: output position `i` takes input `floor(i * step)` (PyTorch's
/// legacy rule, which `nearest-exact` corrects).
pub fn resize_nearest<D: Dim>(x: &Tensor, dim: D, size: Resize) -> Result<Tensor> {
    nearest(x, dim, size, false)
}

/// `mode='nearest-exact'` along `dim`: output position `i` takes input `floor((i + 0.5) * step)`.
pub fn resize_nearest_exact<D: Dim>(x: &Tensor, dim: D, size: Resize) -> Result<Tensor> {
    nearest(x, dim, size, true)
}

fn nearest<D: Dim>(x: &Tensor, dim: D, size: Resize, exact: bool) -> Result<Tensor> {
    let dim = dim.to_index(x.shape(), "resize_nearest")?;
    let input = x.dim(dim)?;
    let (output, scale) = size.resolve(input)?;
    // PyTorch's nearest kernels compute positions in f32 whatever the tensor's dtype
    let step = step(input, output, scale) as f32;
    let positions: Vec<u32> = (0..output)
        .map(|i| {
            let at = if exact {
                ((i as f64 + 0.5) * step as f64) as f32
            } else {
                i as f32 * step
            };
            (at.floor() as usize).min(input - 1) as u32
        })
        .collect();
    let index = Tensor::from_vec(positions, output, x.device())?;
    x.contiguous()?.index_select(&index, dim)
}

/// `mode='linear'` along `dim` (`bilinear` is this along the last dimension, then along the
/// one before). `align_corners` maps the first and last positions onto each other; otherwise
/// positions are pixel centres, clamped at the start. A dimension whose size does not change
/// is copied, as PyTorch does, even when a scale factor was given.
pub fn resize_linear<D: Dim>(
    x: &Tensor,
    dim: D,
    size: Resize,
    align_corners: bool,
) -> Result<Tensor> {
    let dim = dim.to_index(x.shape(), "resize_linear")?;
    let input = x.dim(dim)?;
    let (output, scale) = size.resolve(input)?;
    if output == input {
        return Ok(x.clone());
    }
    let step = interpolation_step(input, output, scale, align_corners);
    let mut lower = Vec::with_capacity(output);
    let mut upper = Vec::with_capacity(output);
    let mut weights = Vec::with_capacity(output);
    for i in 0..output {
        let at = if align_corners {
            step * i as f64
        } else {
            (step * (i as f64 + 0.5) - 0.5).max(0.0)
        };
        let below = (at.floor() as usize).min(input - 1);
        lower.push(below as u32);
        upper.push((below + 1).min(input - 1) as u32);
        weights.push((at - below as f64).clamp(0.0, 1.0));
    }
    let x = x.contiguous()?;
    let device = x.device();
    // the weights broadcast over the dimensions after `dim`
    let mut shape = vec![output];
    shape.resize(x.rank() - dim, 1);
    let upper_weight = Tensor::from_vec(weights, shape.as_slice(), device)?.to_dtype(x.dtype())?;
    let lower_weight = (1.0 - &upper_weight)?;
    let lower = x.index_select(&Tensor::from_vec(lower, output, device)?, dim)?;
    let upper = x.index_select(&Tensor::from_vec(upper, output, device)?, dim)?;
    lower.broadcast_mul(&lower_weight)? + upper.broadcast_mul(&upper_weight)?
}

/// `mode='bicubic'` over the last two dimensions (height, width): each output value is a
/// weighted sum of the 4 x 4 inputs around its source position, with Keys' cubic convolution
/// (`A = -0.75`) as the weights, reading the edge values beyond the borders, summed along the
/// width first, as PyTorch does. Source positions are not clamped at the start (PyTorch's cubic
/// rule). When neither size changes the input is returned, as PyTorch does.
pub fn resize_bicubic(
    x: &Tensor,
    height: Resize,
    width: Resize,
    align_corners: bool,
) -> Result<Tensor> {
    let rank = x.rank();
    if rank < 2 {
        bail!("resize_bicubic: expected at least 2 dimensions, got {rank}")
    }
    let (h, w) = (x.dim(rank - 2)?, x.dim(rank - 1)?);
    if height.resolve(h)?.0 == h && width.resolve(w)?.0 == w {
        return Ok(x.clone());
    }
    let x = cubic(x, rank - 1, width, align_corners)?;
    cubic(&x, rank - 2, height, align_corners)
}

/// Keys' cubic convolution weights of the 4 taps around a source position `t` past its
/// second tap (0 <= t < 1), with PyTorch's `A = -0.75`.
fn cubic_weights(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0; // |x| <= 1
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A; // 1 < |x| < 2
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

fn cubic(x: &Tensor, dim: usize, size: Resize, align_corners: bool) -> Result<Tensor> {
    let input = x.dim(dim)?;
    let (output, scale) = size.resolve(input)?;
    let step = interpolation_step(input, output, scale, align_corners);
    let mut taps: [Vec<u32>; 4] = Default::default();
    let mut weights: [Vec<f64>; 4] = Default::default();
    for i in 0..output {
        let at = if align_corners {
            step * i as f64
        } else {
            step * (i as f64 + 0.5) - 0.5
        };
        let below = at.floor();
        let coefficients = cubic_weights(at - below);
        for k in 0..4 {
            let tap = (below as i64 - 1 + k as i64).clamp(0, input as i64 - 1);
            taps[k].push(tap as u32);
            weights[k].push(coefficients[k]);
        }
    }
    let x = x.contiguous()?;
    let device = x.device();
    // the weights broadcast over the dimensions after `dim`
    let mut shape = vec![output];
    shape.resize(x.rank() - dim, 1);
    let mut sum: Option<Tensor> = None;
    for (tap, weight) in taps.into_iter().zip(weights) {
        let weight = Tensor::from_vec(weight, shape.as_slice(), device)?.to_dtype(x.dtype())?;
        let term = x
            .index_select(&Tensor::from_vec(tap, output, device)?, dim)?
            .broadcast_mul(&weight)?;
        sum = Some(match sum {
            Some(sum) => (sum + term)?,
            None => term,
        });
    }
    sum.ok_or_else(|| candle_core::Error::Msg("resize_bicubic: no taps".into()))
}

/// `x` with `factor - 1` zeros between neighbouring elements along `dim`: the kernel of a
/// convolution dilated by `factor` in that dimension only, run with dilation 1.
pub fn dilate<D: Dim>(x: &Tensor, dim: D, factor: usize) -> Result<Tensor> {
    let dim = dim.to_index(x.shape(), "dilate")?;
    let size = x.dim(dim)?;
    if factor == 0 {
        bail!("dilate: the factor must be positive")
    }
    if factor == 1 || size == 0 {
        return Ok(x.clone());
    }
    let mut dims = x.dims().to_vec();
    dims[dim] = size * factor;
    // each element followed by its zeros, then the zeros after the last element dropped
    x.unsqueeze(dim + 1)?
        .pad_with_zeros(dim + 1, 0, factor - 1)?
        .reshape(dims)?
        .narrow(dim, 0, (size - 1) * factor + 1)?
        .contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn row(values: &[f32]) -> Result<Tensor> {
        Tensor::from_slice(values, (1, 1, values.len()), &Device::Cpu)
    }

    fn values(t: &Tensor) -> Result<Vec<f32>> {
        t.flatten_all()?.to_vec1::<f32>()
    }

    #[test]
    fn nearest_follows_the_given_scale() -> Result<()> {
        // PyTorch: F.interpolate(arange(10), scale_factor=1.75) maps with 1 / 1.75, not 10 / 17
        let x = row(&(0..10).map(|v| v as f32).collect::<Vec<_>>())?;
        let y = resize_nearest(&x, 2, Resize::By(1.75))?;
        assert_eq!(
            values(&y)?,
            [0., 0., 1., 1., 2., 2., 3., 4., 4., 5., 5., 6., 6., 7., 8., 8., 9.]
        );
        let y = resize_nearest_exact(&row(&[0., 1., 2.])?, 2, Resize::To(5))?;
        assert_eq!(values(&y)?, [0., 0., 1., 2., 2.]);
        Ok(())
    }

    #[test]
    fn linear_with_and_without_aligned_corners() -> Result<()> {
        let x = row(&[0., 1., 2.])?;
        let y = resize_linear(&x, 2, Resize::To(5), true)?;
        assert_eq!(values(&y)?, [0., 0.5, 1., 1.5, 2.]);
        let y = resize_linear(&x, 2, Resize::By(2.0), false)?;
        assert_eq!(values(&y)?, [0., 0.25, 0.75, 1.25, 1.75, 2.]);
        // the same size: a copy, even with a scale factor
        let y = resize_linear(&x, 2, Resize::By(1.3), false)?;
        assert_eq!(values(&y)?, [0., 1., 2.]);
        Ok(())
    }

    #[test]
    fn bicubic_keeps_constants_and_known_values() -> Result<()> {
        // the weights sum to 1: a constant image stays constant, borders included
        let flat = Tensor::full(3f32, (1, 1, 3, 4), &Device::Cpu)?;
        let up = resize_bicubic(&flat, Resize::By(2.0), Resize::To(7), false)?;
        assert_eq!(up.dims(), &[1, 1, 6, 7]);
        assert!(values(&up)?.iter().all(|v| (v - 3.0).abs() < 1e-6));
        // PyTorch: F.interpolate(torch.tensor([[[[0., 1., 4., 9.]]]]), size=(1, 6),
        // mode='bicubic', align_corners=True)
        let x = Tensor::from_slice(&[0f32, 1.0, 4.0, 9.0], (1, 1, 1, 4), &Device::Cpu)?;
        let y = values(&resize_bicubic(&x, Resize::To(1), Resize::To(6), true)?)?;
        let expected = [0.0, 0.288, 1.504, 3.016, 6.264, 9.0];
        for (a, b) in y.iter().zip(expected) {
            assert!((a - b).abs() < 1e-3, "{y:?}");
        }
        Ok(())
    }

    #[test]
    fn dilate_inserts_zeros() -> Result<()> {
        let k = Tensor::from_slice(&[1f32, 2., 3., 4.], (2, 2), &Device::Cpu)?;
        let d = dilate(&k, 1, 3)?;
        assert_eq!(d.to_vec2::<f32>()?, [[1., 0., 0., 2.], [3., 0., 0., 4.]]);
        assert_eq!(dilate(&k, 0, 1)?.to_vec2::<f32>()?, k.to_vec2::<f32>()?);
        Ok(())
    }
}
