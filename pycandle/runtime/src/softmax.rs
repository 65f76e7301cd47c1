//! `softmax` and `log_softmax` along any dimension, in one pass per slice.
//!
//! candle_nn's [`candle_nn::ops::softmax`] and [`candle_nn::ops::log_softmax`]
//! are five tensor ops each (max, subtract, exp, sum, then divide, or log and
//! subtract), three of them allocating an output of the input's size, and
//! Candle runs the large elementwise ones on its own pool thread too. After
//! an idle moment that thread has to wake: the token tagger's
//! `log_softmax` over 2048 x 40 scores took 0.2 ms back to back and, in most
//! calls, 1.3 ms after 0.3 s idle on a 2-core AVX-512 Xeon (KVM). Here, in
//! `f32` and `f64` on the CPU, each slice along the dimension is reduced and
//! written on the calling thread into one output: 0.25 ms, idle or not.
//! Other devices and dtypes run candle_nn's ops.

use candle_core::shape::Dim;
use candle_core::{DType, Result, Tensor, WithDType};

use crate::host::with_elements;

/// PyTorch's `softmax(x, dim)`: `exp(x - max) / sum(exp(x - max))` along `dim`.
pub fn softmax<D: Dim>(xs: &Tensor, dim: D) -> Result<Tensor> {
    along(xs, dim, false)
}

/// PyTorch's `log_softmax(x, dim)`: `x - max - ln(sum(exp(x - max)))` along `dim`.
pub fn log_softmax<D: Dim>(xs: &Tensor, dim: D) -> Result<Tensor> {
    along(xs, dim, true)
}

fn along<D: Dim>(xs: &Tensor, dim: D, log: bool) -> Result<Tensor> {
    let d = dim.to_index(xs.shape(), if log { "log_softmax" } else { "softmax" })?;
    if xs.device().is_cpu() {
        let dims = xs.dims();
        let sizes = Sizes {
            len: dims[d],
            inner: dims[d + 1..].iter().product(),
        };
        match xs.dtype() {
            DType::F32 => return sizes.tensor::<f32>(xs, log),
            DType::F64 => return sizes.tensor::<f64>(xs, log),
            _ => {}
        }
    }
    if log {
        candle_nn::ops::log_softmax(xs, d)
    } else {
        candle_nn::ops::softmax(xs, d)
    }
}

/// The elements of the slices along the dimension: blocks of `len` rows of
/// `inner` elements, one after the other (the slices are the columns of
/// each block).
#[derive(Debug, Clone, Copy)]
struct Sizes {
    len: usize,
    inner: usize,
}

impl Sizes {
    fn tensor<T: Real>(self, xs: &Tensor, log: bool) -> Result<Tensor> {
        let out = with_elements::<T, _>(xs, |x| self.run(x, log))?;
        Tensor::from_vec(out, xs.shape(), xs.device())
    }

    fn run<T: Real>(self, x: &[T], log: bool) -> Vec<T> {
        // Filled in order rather than zeroed first: one pass over the
        // output less.
        let mut out = Vec::with_capacity(x.len());
        let block = self.len * self.inner;
        if block == 0 {
            out.resize(x.len(), T::zero());
            return out;
        }
        if self.inner == 1 {
            for x in x.chunks_exact(self.len) {
                let max = x.iter().fold(T::NEG_INFINITY, |m, &v| T::larger(m, v));
                let start = out.len();
                let mut sum = T::zero();
                out.extend(x.iter().map(|&v| {
                    let e = (v - max).exp();
                    sum += e;
                    e
                }));
                finish(x, &mut out[start..], max, sum, log);
            }
            return out;
        }
        // Several slices side by side: each pass runs along the rows of a
        // block, a column per slice.
        let mut max = vec![T::zero(); self.inner];
        let mut sum = vec![T::zero(); self.inner];
        for x in x.chunks_exact(block) {
            max.fill(T::NEG_INFINITY);
            sum.fill(T::zero());
            for row in x.chunks_exact(self.inner) {
                for (m, &v) in max.iter_mut().zip(row) {
                    *m = T::larger(*m, v);
                }
            }
            let start = out.len();
            for row in x.chunks_exact(self.inner) {
                out.extend(row.iter().zip(&max).map(|(&v, &m)| (v - m).exp()));
            }
            let y = &mut out[start..];
            for row in y.chunks_exact(self.inner) {
                for (s, &e) in sum.iter_mut().zip(row) {
                    *s += e;
                }
            }
            if log {
                // once per slice, not per element
                sum.iter_mut().for_each(|s| *s = s.ln());
            }
            for (row, y) in x
                .chunks_exact(self.inner)
                .zip(y.chunks_exact_mut(self.inner))
            {
                for (((y, &v), &m), &s) in y.iter_mut().zip(row).zip(&max).zip(&sum) {
                    *y = if log { v - m - s } else { *y / s };
                }
            }
        }
        out
    }
}

/// One slice's output from its `exp(x - max)` in `y` and their `sum`.
fn finish<T: Real>(x: &[T], y: &mut [T], max: T, sum: T, log: bool) {
    if log {
        let log_sum = sum.ln();
        for (y, &v) in y.iter_mut().zip(x) {
            *y = v - max - log_sum;
        }
    } else {
        for y in y.iter_mut() {
            *y /= sum;
        }
    }
}

/// The float operations the slices need, for `f32` and `f64`.
trait Real:
    WithDType
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
    + std::ops::DivAssign
{
    const NEG_INFINITY: Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    /// The larger of two values, or the one that is not NaN: a NaN in a
    /// slice still makes every output of the slice NaN, through the sum.
    fn larger(a: Self, b: Self) -> Self;
}

macro_rules! real {
    ($t:ident) => {
        impl Real for $t {
            const NEG_INFINITY: Self = $t::NEG_INFINITY;
            #[inline(always)]
            fn exp(self) -> Self {
                $t::exp(self)
            }
            fn ln(self) -> Self {
                $t::ln(self)
            }
            #[inline(always)]
            fn larger(a: Self, b: Self) -> Self {
                a.max(b)
            }
        }
    };
}
real!(f32);
real!(f64);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::max_abs_diff;
    use candle_core::{Device, D};

    /// Every dimension of ranks 1 to 4, contiguous and transposed inputs,
    /// in both dtypes, against candle_nn's ops.
    #[test]
    fn matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        let shapes: [&[usize]; 5] = [&[7], &[5, 40], &[3, 4, 6], &[2, 3, 1, 5], &[4, 0, 3]];
        for dims in shapes {
            for dtype in [DType::F32, DType::F64] {
                let x = (Tensor::randn(0f64, 3.0, dims, &dev)?).to_dtype(dtype)?;
                let mut inputs = vec![x.clone()];
                if dims.len() >= 2 {
                    // the same values read through a transposed view
                    let n = dims.len();
                    inputs.push(
                        x.transpose(n - 2, n - 1)?
                            .contiguous()?
                            .transpose(n - 2, n - 1)?,
                    );
                }
                for x in &inputs {
                    if x.elem_count() == 0 {
                        // Candle's reductions fail on an empty dimension.
                        for d in 0..dims.len() {
                            assert_eq!(softmax(x, d)?.dims(), dims);
                            assert_eq!(log_softmax(x, d)?.dims(), dims);
                        }
                        continue;
                    }
                    for d in 0..dims.len() {
                        let ours = softmax(x, d)?;
                        let theirs = candle_nn::ops::softmax(x, d)?;
                        let err = max_abs_diff(&ours, &theirs)?;
                        assert!(err < 1e-6, "softmax {dims:?} dim {d} {dtype:?}: {err}");
                        let ours = log_softmax(x, d)?;
                        let theirs = candle_nn::ops::log_softmax(x, d)?;
                        let err = max_abs_diff(&ours, &theirs)?;
                        assert!(err < 1e-5, "log_softmax {dims:?} dim {d} {dtype:?}: {err}");
                    }
                }
            }
        }
        Ok(())
    }

    /// As PyTorch: a NaN, a slice of `-inf` and a `+inf` (`inf - inf` in
    /// the sum) each make their slice NaN, and only theirs.
    #[test]
    fn special_values() -> Result<()> {
        let dev = Device::Cpu;
        let (nan, inf) = (f32::NAN, f32::INFINITY);
        let x = Tensor::new(
            &[[1f32, nan, 2.0], [-inf, -inf, -inf], [0.0, inf, 1.0]],
            &dev,
        )?;
        let x = Tensor::cat(&[&x, &Tensor::new(&[[0f32, 1.0, 2.0]], &dev)?], 0)?;
        for y in [softmax(&x, D::Minus1)?, log_softmax(&x, D::Minus1)?] {
            let y = y.to_vec2::<f32>()?;
            assert!(y[..3].iter().flatten().all(|v| v.is_nan()));
            assert!(y[3].iter().all(|v| v.is_finite()));
        }
        let y = log_softmax(&Tensor::new(&[[0f32, 1.0], [0.0, 1.0]], &dev)?, 0)?;
        let want = -(2f32.ln());
        for v in y.flatten_all()?.to_vec1::<f32>()? {
            assert!((v - want).abs() < 1e-7);
        }
        Ok(())
    }
}
