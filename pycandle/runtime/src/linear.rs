//! `Linear`: candle_nn's layer with a faster CPU forward for narrow outputs.
//!
//! On the CPU, in `f32` and `f64`, an input of [`MIN_ROWS`] rows or more
//! (the product of its leading dimensions) into at most [`MAX_OUT`] outputs
//! (a classifier's or a tagger's head) is multiplied on the recurrent
//! kernels' micro-tiles, which read it in place, started from the bias, its
//! rows split between the calling thread and a pool task (see
//! `kernel::dense`). Candle's product (the `gemm` crate) suits such a
//! narrow output poorly, adds the bias as a second op, and runs on
//! Candle's pool threads, which are slow to wake after an idle moment. The
//! token tagger's 512 -> 40 head, in the model on a 2-core AVX-512 Xeon
//! (KVM), alternating in one process: 0.86 ms against 1.34 back to back
//! and 1.2 against 1.9 after 0.3 s idle on 2048 rows; 0.07 against 0.31 on
//! 64. Wider outputs stay on Candle's product, which measured as fast or
//! faster there (256 and 1024 outputs: 5 to 45 % faster than these tiles).
//! Fewer rows, wider outputs, other devices and other dtypes run candle_nn's
//! forward, on a contiguous input (Candle's batched product mixes up the
//! batch items of a strided one).

use candle_core::{DType, Module, Result, Tensor, WithDType};
use candle_nn::VarBuilder;

use crate::host::{with_elements, with_weight_and_bias};
use crate::kernel::{default_threads, dense, Float, SPLIT_WORK};

/// Rows below which candle_nn's forward runs: the weight is packed at each
/// call, which a few rows do not repay.
pub const MIN_ROWS: usize = 32;

/// Outputs above which candle_nn's forward runs (see the module docs).
pub const MAX_OUT: usize = 64;

/// PyTorch's `nn.Linear`: `y = x W^T + b` over the last dimension of `x`,
/// candle_nn's [`candle_nn::Linear`] with the CPU forward described in the
/// module docs.
#[derive(Debug, Clone)]
pub struct Linear {
    layer: candle_nn::Linear,
}

impl Linear {
    /// `weight` `(out_dim, in_dim)` and `bias` `(out_dim)` loaded from `vb`,
    /// as [`candle_nn::linear`] loads them.
    pub fn load(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        candle_nn::linear(in_dim, out_dim, vb).map(|layer| Self { layer })
    }

    /// `weight` loaded from `vb`, no bias.
    pub fn load_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        candle_nn::linear_no_bias(in_dim, out_dim, vb).map(|layer| Self { layer })
    }

    /// From a `(out_dim, in_dim)` weight and a `(out_dim)` bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            layer: candle_nn::Linear::new(weight, bias),
        }
    }

    pub fn weight(&self) -> &Tensor {
        self.layer.weight()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.layer.bias()
    }

    /// `(rows, out_dim, in_dim)` of the product for the runtime's forward
    /// (rows: the product of the leading dimensions of `x`), or `None` when
    /// candle_nn should run (and report) the call.
    fn sizes(&self, x: &Tensor) -> Option<(usize, usize, usize)> {
        let (out_dim, in_dim) = self.weight().dims2().ok()?;
        let (&last, leading) = x.dims().split_last()?;
        let rows: usize = leading.iter().product();
        let usable = x.device().is_cpu()
            && !leading.is_empty()
            && last == in_dim
            && (1..=MAX_OUT).contains(&out_dim)
            && rows >= MIN_ROWS
            && self.weight().dtype() == x.dtype()
            && self
                .bias()
                .is_none_or(|b| b.dtype() == x.dtype() && b.dims() == [out_dim]);
        usable.then_some((rows, out_dim, in_dim))
    }

    fn forward_cpu<T: Float + WithDType>(
        &self,
        x: &Tensor,
        sizes: (usize, usize, usize),
    ) -> Result<Tensor> {
        let (rows, out_dim, in_dim) = sizes;
        let threads = if rows * out_dim * in_dim >= SPLIT_WORK {
            default_threads().min(rows / MIN_ROWS)
        } else {
            1
        };
        let out = with_weight_and_bias::<T, _>(self.weight(), self.bias(), |weight, bias| {
            with_elements::<T, _>(x, |x| dense(x, weight, bias, sizes, threads))
        })?;
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = out_dim;
        }
        Tensor::from_vec(out, dims, x.device())
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match (x.dtype(), self.sizes(x)) {
            (DType::F32, Some(sizes)) => self.forward_cpu::<f32>(x, sizes),
            (DType::F64, Some(sizes)) => self.forward_cpu::<f64>(x, sizes),
            // Candle's batched product mixes up the batch items of a strided
            // input; `contiguous` costs nothing when the input already is.
            _ => self.layer.forward(&x.contiguous()?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{with_kernel_path, KernelPath};
    use candle_core::Device;

    /// `x W^T + b` in f64 with plain loops, over the last dimension of `x`.
    fn reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Vec<f64>> {
        let (out_dim, in_dim) = w.dims2()?;
        let x = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let w = w.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let b = match b {
            Some(b) => b.to_dtype(DType::F64)?.to_vec1::<f64>()?,
            None => vec![0.0; out_dim],
        };
        let rows = x.len().checked_div(in_dim).unwrap_or(0);
        let mut y = Vec::with_capacity(rows * out_dim);
        for r in 0..rows {
            for (o, &bias) in b.iter().enumerate() {
                let dot: f64 = (0..in_dim)
                    .map(|i| x[r * in_dim + i] * w[o * in_dim + i])
                    .sum();
                y.push(dot + bias);
            }
        }
        Ok(y)
    }

    /// Every shape on every kernel path the CPU has, in both dtypes, against
    /// the plain product: few rows and many outputs (candle_nn's forward),
    /// outputs narrower than, equal to and wider than a panel, ranks 2 to 5,
    /// strided inputs, rows split between threads and into several blocks,
    /// no depth.
    #[test]
    fn matches_the_plain_product() -> Result<()> {
        let dev = Device::Cpu;
        // (leading dims, in_dim, out_dim, bias, transposed input)
        let cases: [(&[usize], usize, usize, bool, bool); 12] = [
            (&[5], 10, 6, true, false),
            (&[40], 7, 5, true, false),
            (&[2, 33], 64, 16, false, false),
            (&[3, 4, 20], 37, 40, true, false),
            (&[8, 100], 300, 40, true, false),
            (&[1000], 20, 33, true, false),
            (&[3, 64], 24, 17, true, true),
            (&[64, 3], 24, 48, false, true),
            (&[2, 2, 2, 2, 4], 8, 8, true, false),
            (&[2, 700], 129, 3, true, false),
            (&[40], 0, 5, true, false),
            (&[4, 25], 16, 80, true, true),
        ];
        for (i, &(leading, in_dim, out_dim, with_bias, transposed)) in cases.iter().enumerate() {
            for dtype in [DType::F32, DType::F64] {
                let mut dims = leading.to_vec();
                dims.push(in_dim);
                let x = if transposed {
                    // the same dims, read through a transposed view
                    let n = dims.len();
                    dims.swap(n - 3, n - 2);
                    Tensor::randn(0f64, 1.0, dims.as_slice(), &dev)?.transpose(n - 3, n - 2)?
                } else {
                    Tensor::randn(0f64, 1.0, dims.as_slice(), &dev)?
                };
                let x = x.to_dtype(dtype)?;
                let w = Tensor::randn(0f64, 0.3, (out_dim, in_dim), &dev)?.to_dtype(dtype)?;
                let bias = with_bias
                    .then(|| Tensor::randn(0f64, 1.0, out_dim, &dev)?.to_dtype(dtype))
                    .transpose()?;
                let want = reference(&x, &w, bias.as_ref())?;
                let layer = Linear::new(w, bias);
                for path in KernelPath::available() {
                    let y = with_kernel_path(path, || layer.forward(&x)).expect("available")?;
                    let mut out_dims = leading.to_vec();
                    out_dims.push(out_dim);
                    assert_eq!(y.dims(), out_dims.as_slice(), "case {i}");
                    let got = y.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
                    let tol = if dtype == DType::F32 { 1e-4 } else { 1e-10 };
                    for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= tol * (1.0 + w.abs()),
                            "case {i} {dtype:?} {path}: [{j}] {g} != {w}"
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
