//! Elementwise ops Candle lacks, or runs where a model's kernels would pay for it, with
//! PyTorch's exact semantics.

use candle_core::{bail, DType, Result, Tensor, WithDType};

use crate::host::with_elements;
use crate::kernel::{default_threads, in_parallel};

/// `torch.fmod`: the remainder of the division truncated toward zero, with the dividend's sign
/// (C's `fmod`, Rust's `%`). The operands broadcast; f32, f64 and i64. (Named for its rounding:
/// generated code names its result `fmod`, which would shadow a function of that name.)
pub fn rem_trunc(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    modulo(x, y, false)
}

/// `torch.remainder` (Python's `%`): the remainder of the floored division, with the divisor's
/// sign. The operands broadcast; f32, f64 and i64.
pub fn rem_floor(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    modulo(x, y, true)
}

fn modulo(x: &Tensor, y: &Tensor, floored: bool) -> Result<Tensor> {
    if x.dtype() != y.dtype() {
        bail!("modulo of {:?} and {:?} tensors", x.dtype(), y.dtype())
    }
    let shape = x.shape().broadcast_shape_binary_op(y.shape(), "modulo")?;
    let (x, y) = (x.broadcast_as(&shape)?, y.broadcast_as(&shape)?);
    match x.dtype() {
        DType::F32 => remainders::<f32>(&x, &y, |a, b| Some(a % b), floored),
        DType::F64 => remainders::<f64>(&x, &y, |a, b| Some(a % b), floored),
        DType::I64 => remainders::<i64>(&x, &y, |a, b| a.checked_rem(b), floored),
        DType::I32 => remainders::<i32>(&x, &y, |a, b| a.checked_rem(b), floored),
        other => bail!("modulo of {other:?} tensors (f32, f64, i64 and i32 only)"),
    }
}

/// `torch.floor_divide` (Python's `//`, `div(rounding_mode="floor")`): the quotient rounded
/// toward negative infinity, computed as PyTorch does for floats (from the exact remainder, so
/// `7.0 // 0.1` is 69, not the 70 of `floor(7.0 / 0.1)`). The operands broadcast; f32, f64,
/// i64 and i32 (an integer division by zero is an error).
pub fn div_floor(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if x.dtype() != y.dtype() {
        bail!(
            "floor division of {:?} and {:?} tensors",
            x.dtype(),
            y.dtype()
        )
    }
    let shape = x
        .shape()
        .broadcast_shape_binary_op(y.shape(), "floor_divide")?;
    let (x, y) = (x.broadcast_as(&shape)?, y.broadcast_as(&shape)?);
    match x.dtype() {
        DType::F32 => pairwise::<f32>(&x, &y, |a, b| div_floor_float(a.into(), b.into()) as f32),
        DType::F64 => pairwise::<f64>(&x, &y, div_floor_float),
        DType::I64 => checked_pairs::<i64>(&x, &y, DIV_BY_ZERO, |a, b| {
            Some(a.checked_div(b)? - floor_step(a, b))
        }),
        DType::I32 => checked_pairs::<i32>(&x, &y, DIV_BY_ZERO, |a, b| {
            Some(a.checked_div(b)? - floor_step(a, b))
        }),
        other => bail!("floor division of {other:?} tensors (f32, f64, i64 and i32 only)"),
    }
}

const DIV_BY_ZERO: &str = "integer division by zero";

/// 1 when the truncated quotient of `a / b` is above the floored one.
fn floor_step<T: WithDType>(a: T, b: T) -> T {
    let zero = T::zero();
    let r = a % b;
    if r != zero && ((r < zero) != (b < zero)) {
        T::one()
    } else {
        zero
    }
}

/// PyTorch's floor division of floats: `(a - fmod(a, b)) / b`, moved down by one where the
/// remainder's sign differs from the divisor's, then rounded to the nearest integer.
fn div_floor_float(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        return a / b;
    }
    let m = a % b;
    let mut div = (a - m) / b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        div -= 1.0;
    }
    if div == 0.0 {
        return (0.0f64).copysign(a / b);
    }
    let floor = div.floor();
    if div - floor > 0.5 {
        floor + 1.0
    } else {
        floor
    }
}

/// `torch.atan2(y, x)`: the angle of the point `(x, y)`, in `[-pi, pi]`, with the quadrant
/// and signed-zero rules of C's `atan2`. The operands broadcast; f32 and f64.
pub fn atan2(y: &Tensor, x: &Tensor) -> Result<Tensor> {
    if x.dtype() != y.dtype() {
        bail!("atan2 of {:?} and {:?} tensors", y.dtype(), x.dtype())
    }
    let shape = y.shape().broadcast_shape_binary_op(x.shape(), "atan2")?;
    let (y, x) = (y.broadcast_as(&shape)?, x.broadcast_as(&shape)?);
    match y.dtype() {
        DType::F32 => pairwise::<f32>(&y, &x, f32::atan2),
        DType::F64 => pairwise::<f64>(&y, &x, f64::atan2),
        other => bail!("atan2 of {other:?} tensors (f32 and f64 only)"),
    }
}

/// Elements below which [`relu`] runs on the calling thread alone: a pass over 4 MiB of `f32`
/// takes about as long as waking a pool thread to share it.
const RELU_SPLIT: usize = 1 << 20;

/// `torch.relu`: `max(x, 0)`, a NaN staying NaN as in PyTorch (Candle's `relu` makes it 0).
///
/// On the CPU, in `f32` and `f64`, one pass on the calling thread, shared with this crate's
/// pool threads only for large tensors. Candle's `relu` hands any tensor of 64 Ki elements or
/// more to Candle's own thread pool, whose threads wake for a few microseconds of work and
/// then spin (25 000 polls by default) beside the threads of the convolution or recurrent
/// layer that comes next: the Tacotron-2 encoder at B=1 (three convolutions, each followed by a
/// ReLU) measured 8 to 18 % faster with this pass (Intel Xeon, 2 cores, AVX2 kernels, 0.3 s
/// idle between forwards). Other dtypes and devices run Candle's `relu`. The result, like
/// every generated forward's, is not tracked for gradients.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F32 if x.device().is_cpu() => relu_cpu::<f32>(x),
        DType::F64 if x.device().is_cpu() => relu_cpu::<f64>(x),
        _ => x.relu(),
    }
}

fn relu_cpu<T: WithDType>(x: &Tensor) -> Result<Tensor> {
    let zero = T::zero();
    // `v < 0` is false for a NaN, which passes through.
    let relu = move |v: T| if v < zero { zero } else { v };
    let ys = with_elements::<T, _>(x, |xs| {
        let threads = default_threads().min(xs.len() / RELU_SPLIT).max(1);
        if threads == 1 {
            // Written once, not zero-filled first.
            return xs.iter().map(|&v| relu(v)).collect();
        }
        let mut ys = vec![zero; xs.len()];
        let share = xs.len().div_ceil(threads);
        in_parallel(
            xs.chunks(share).zip(ys.chunks_mut(share)),
            |_, (src, dst)| {
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = relu(v);
                }
            },
        );
        ys
    })?;
    Tensor::from_vec(ys, x.dims(), x.device())
}

/// `f` on every pair of elements of two tensors of one shape.
fn pairwise<T: WithDType>(a: &Tensor, b: &Tensor, f: impl Fn(T, T) -> T) -> Result<Tensor> {
    checked_pairs(a, b, "", |a, b| Some(f(a, b)))
}

/// `f` on every pair of elements of two tensors of one shape; `None` fails with `error` (an
/// integer division by zero).
fn checked_pairs<T: WithDType>(
    a: &Tensor,
    b: &Tensor,
    error: &str,
    f: impl Fn(T, T) -> Option<T>,
) -> Result<Tensor> {
    let va = a.flatten_all()?.to_vec1::<T>()?;
    let vb = b.flatten_all()?.to_vec1::<T>()?;
    let out = va
        .iter()
        .zip(&vb)
        .map(|(&a, &b)| f(a, b).ok_or_else(|| candle_core::Error::Msg(error.to_string())))
        .collect::<Result<Vec<T>>>()?;
    Tensor::from_vec(out, a.shape(), a.device())
}

/// `rem` on every pair of elements; `floored` moves a non-zero remainder whose sign differs
/// from the divisor's by one divisor (PyTorch's `remainder` from C's `fmod`).
fn remainders<T: WithDType>(
    x: &Tensor,
    y: &Tensor,
    rem: impl Fn(T, T) -> Option<T>,
    floored: bool,
) -> Result<Tensor> {
    checked_pairs(x, y, "integer modulo by zero", |a, b| {
        let m = rem(a, b)?;
        Some(if floored && floor_step(m, b) != T::zero() {
            m + b
        } else {
            m
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// PyTorch's values (`torch.relu`: NaN and -0.0 kept), in both dtypes, on contiguous and
    /// strided inputs, and above the size that shares the pass between threads.
    #[test]
    fn relu_as_pytorch() -> Result<()> {
        let dev = Device::Cpu;
        let special = [
            -0.0f32,
            f32::NAN,
            -1.0,
            2.5,
            f32::NEG_INFINITY,
            f32::INFINITY,
        ];
        let ys = relu(&Tensor::new(&special, &dev)?)?.to_vec1::<f32>()?;
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&ys),
            bits(&[-0.0, f32::NAN, 0.0, 2.5, 0.0, f32::INFINITY])
        );
        for n in [7, super::RELU_SPLIT * 2 + 13] {
            for dtype in [DType::F32, DType::F64] {
                let x = Tensor::randn(0f32, 1.0, n, &dev)?.to_dtype(dtype)?;
                let (ys, expected) = (relu(&x)?, x.maximum(0.0)?);
                assert_eq!(ys.dtype(), dtype);
                let f64s = |t: Tensor| t.to_dtype(DType::F64)?.to_vec1::<f64>();
                assert_eq!(f64s(ys)?, f64s(expected)?);
            }
        }
        let x = Tensor::randn(0f32, 1.0, (3, 5, 4), &dev)?.transpose(1, 2)?;
        let (ys, expected) = (relu(&x)?, x.maximum(0.0)?);
        assert_eq!(ys.dims(), &[3, 4, 5]);
        assert_eq!(
            ys.flatten_all()?.to_vec1::<f32>()?,
            expected.flatten_all()?.to_vec1::<f32>()?
        );
        // other dtypes: Candle's relu
        let ints = Tensor::new(&[-3i64, 0, 4], &dev)?;
        assert_eq!(relu(&ints)?.to_vec1::<i64>()?, [0, 0, 4]);
        Ok(())
    }

    #[test]
    fn floor_division_as_pytorch() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::new(&[7i64, -7, 7, -7, 0], &dev)?;
        let b = Tensor::new(&[2i64, 2, -2, -2, 3], &dev)?;
        assert_eq!(div_floor(&a, &b)?.to_vec1::<i64>()?, [3, -4, -4, 3, 0]);
        let a32 = a.to_dtype(DType::I32)?;
        let b32 = b.to_dtype(DType::I32)?;
        assert_eq!(div_floor(&a32, &b32)?.to_vec1::<i32>()?, [3, -4, -4, 3, 0]);
        assert_eq!(rem_floor(&a32, &b32)?.to_vec1::<i32>()?, [1, 1, -1, -1, 0]);
        let x = Tensor::new(&[7.0f64, -7.0, 7.5, -0.5, 1.0], &dev)?;
        let y = Tensor::new(&[0.1f64, 2.0, -2.0, 4.0, 0.0], &dev)?;
        let got = div_floor(&x, &y)?.to_vec1::<f64>()?;
        // 7.0 // 0.1 is 69.0 in Python and PyTorch (0.1 is slightly above 1/10)
        assert_eq!(got[..4], [69.0, -4.0, -4.0, -1.0]);
        assert_eq!(got[4], f64::INFINITY);
        let zero = Tensor::new(&[0i64], &dev)?;
        assert!(div_floor(&a.narrow(0, 0, 1)?, &zero).is_err());
        Ok(())
    }

    #[test]
    fn atan2_quadrants_and_broadcasting() -> Result<()> {
        let dev = Device::Cpu;
        let y = Tensor::new(&[[1f64], [-1.0]], &dev)?; // (2, 1)
        let x = Tensor::new(&[1f64, -1.0, 0.0], &dev)?; // (3)
        let got = atan2(&y, &x)?.to_vec2::<f64>()?;
        let pi = std::f64::consts::PI;
        let want = [
            [pi / 4.0, 3.0 * pi / 4.0, pi / 2.0],
            [-pi / 4.0, -3.0 * pi / 4.0, -pi / 2.0],
        ];
        assert_eq!(got, want);
        let zero = Tensor::new(&[0f32], &dev)?;
        let neg = Tensor::new(&[-1f32], &dev)?;
        assert_eq!(
            atan2(&zero, &neg)?.to_vec1::<f32>()?,
            [std::f32::consts::PI]
        );
        assert!(atan2(&y, &x.to_dtype(DType::F32)?).is_err());
        Ok(())
    }

    fn values<T: WithDType>(t: Tensor) -> Vec<T> {
        t.flatten_all().unwrap().to_vec1::<T>().unwrap()
    }

    #[test]
    fn signs_follow_pytorch() {
        let x = Tensor::new(&[5.0f32, -5.0, 5.0, -5.0, 4.0], &Device::Cpu).unwrap();
        let y = Tensor::new(&[3.0f32, 3.0, -3.0, -3.0, 2.0], &Device::Cpu).unwrap();
        assert_eq!(
            values::<f32>(rem_trunc(&x, &y).unwrap()),
            [2.0, -2.0, 2.0, -2.0, 0.0]
        );
        assert_eq!(
            values::<f32>(rem_floor(&x, &y).unwrap()),
            [2.0, 1.0, -1.0, -2.0, 0.0]
        );
    }

    #[test]
    fn exact_where_division_rounds() {
        // 1.0 / 0.1 rounds to 10.0, but 0.1f64 * 10 exceeds 1.0: the true remainder is ~0.1
        let x = Tensor::new(&[1.0f64], &Device::Cpu).unwrap();
        let y = Tensor::new(0.1f64, &Device::Cpu).unwrap();
        assert_eq!(values::<f64>(rem_trunc(&x, &y).unwrap()), [1.0f64 % 0.1]);
        assert!(values::<f64>(rem_floor(&x, &y).unwrap())[0] > 0.09);
    }

    #[test]
    fn integers_broadcast_and_refuse_zero() {
        let x = Tensor::new(&[[7i64, -7], [6, -6]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[4i64, -4], &Device::Cpu).unwrap();
        assert_eq!(values::<i64>(rem_floor(&x, &y).unwrap()), [3, -3, 2, -2]);
        assert_eq!(values::<i64>(rem_trunc(&x, &y).unwrap()), [3, -3, 2, -2]);
        let zero = Tensor::new(0i64, &Device::Cpu).unwrap();
        assert!(rem_trunc(&x, &zero).is_err());
    }
}
