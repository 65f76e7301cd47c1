//! `BatchNorm`: candle_nn's layer with a one-pass evaluation forward.
//!
//! In evaluation, batch normalisation is an affine map per channel:
//! `y = x * scale + shift` with `scale = weight / sqrt(running_var + eps)`
//! and `shift = bias - running_mean * scale`, the terms PyTorch's CPU kernel
//! computes too. Both are computed once, at load. On the CPU, in `f32` and
//! `f64`, the forward is then one pass over the input on the calling thread,
//! where candle_nn's takes four broadcast ops, each handed to Candle's
//! thread pool. Training mode and other devices run candle_nn's forward.

use candle_core::{DType, Result, Tensor, WithDType};
use candle_nn::{BatchNormConfig, ModuleT, VarBuilder};

use crate::host::CpuView;

/// PyTorch's `nn.BatchNorm1d`/`2d`: candle_nn's [`candle_nn::BatchNorm`]
/// with the evaluation forward described in the module docs.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    layer: candle_nn::BatchNorm,
    /// `weight / sqrt(running_var + eps)`. (C)
    scale: Tensor,
    /// `bias - running_mean * scale`. (C)
    shift: Tensor,
}

impl BatchNorm {
    /// Over `num_features` channels, its parameters and running statistics
    /// loaded from `vb` as [`candle_nn::batch_norm`] loads them.
    pub fn load<C: Into<BatchNormConfig>>(
        num_features: usize,
        config: C,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::new(candle_nn::batch_norm(num_features, config, vb)?)
    }

    /// Wraps candle_nn's layer, computing its evaluation terms.
    pub fn new(layer: candle_nn::BatchNorm) -> Result<Self> {
        let inv_std = (layer.running_var() + layer.eps())?.sqrt()?.recip()?;
        let (scale, shift) = match layer.weight_and_bias() {
            Some((weight, bias)) => {
                let scale = (weight * inv_std)?;
                let shift = (bias - (layer.running_mean() * &scale)?)?;
                (scale, shift)
            }
            None => {
                let shift = (layer.running_mean() * &inv_std)?.neg()?;
                (inv_std, shift)
            }
        };
        Ok(Self {
            layer,
            scale,
            shift,
        })
    }

    pub fn running_mean(&self) -> &Tensor {
        self.layer.running_mean()
    }

    pub fn running_var(&self) -> &Tensor {
        self.layer.running_var()
    }

    pub fn weight_and_bias(&self) -> Option<(&Tensor, &Tensor)> {
        self.layer.weight_and_bias()
    }

    pub fn eps(&self) -> f64 {
        self.layer.eps()
    }

    fn forward_cpu<T: WithDType>(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        let (scale, shift) = (CpuView::new(&self.scale)?, CpuView::new(&self.shift)?);
        let (scale, shift) = (scale.slice::<T>()?, shift.slice::<T>()?);
        let view = CpuView::new(&x)?;
        let xs = view.slice::<T>()?;
        // (N, C, rest): each channel's `rest` elements are contiguous
        let inner = x.dims()[2..].iter().product::<usize>();
        let mut ys = Vec::with_capacity(xs.len());
        for (i, block) in xs.chunks_exact(inner).enumerate() {
            let c = i % scale.len();
            let (a, b) = (scale[c], shift[c]);
            ys.extend(block.iter().map(|&v| v * a + b));
        }
        Tensor::from_vec(ys, x.dims(), x.device())
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let fast = !train
            && x.device().is_cpu()
            && x.rank() >= 2
            && x.dim(1)? == self.scale.dim(0)?
            && x.dtype() == self.scale.dtype();
        match x.dtype() {
            DType::F32 if fast => self.forward_cpu::<f32>(x),
            DType::F64 if fast => self.forward_cpu::<f64>(x),
            _ => self.layer.forward_t(x, train),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::max_abs_diff;
    use candle_core::Device;

    /// Ranks 2 to 4, with and without affine terms, in both dtypes, against
    /// candle_nn's forward.
    #[test]
    fn matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            for affine in [true, false] {
                let c = 5;
                let mean = Tensor::randn(0f64, 1.0, c, &dev)?.to_dtype(dtype)?;
                let var = (Tensor::randn(0f64, 1.0, c, &dev)?.abs()? + 0.1)?.to_dtype(dtype)?;
                let theirs = if affine {
                    let w = Tensor::randn(0f64, 1.0, c, &dev)?.to_dtype(dtype)?;
                    let b = Tensor::randn(0f64, 1.0, c, &dev)?.to_dtype(dtype)?;
                    candle_nn::BatchNorm::new(c, mean, var, w, b, 1e-3)?
                } else {
                    candle_nn::BatchNorm::new_no_bias(c, mean, var, 1e-3)?
                };
                let ours = BatchNorm::new(theirs.clone())?;
                for shape in [vec![3, c], vec![2, c, 7], vec![2, c, 3, 4]] {
                    let x = Tensor::randn(0f64, 2.0, shape.as_slice(), &dev)?.to_dtype(dtype)?;
                    let err =
                        max_abs_diff(&ours.forward_t(&x, false)?, &theirs.forward_t(&x, false)?)?;
                    assert!(err < 1e-5, "{dtype:?} affine {affine} {shape:?}: {err}");
                }
            }
        }
        Ok(())
    }
}
