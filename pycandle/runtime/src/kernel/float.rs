//! The element types of the kernels, `f32` and `f64`, and the per-type
//! plumbing the generic code calls: shared atomics, activations, fused
//! multiply-adds and the SIMD registers.

use std::fmt;
use std::ops::{Add, Div, Mul, Sub};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::gates;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{__m256, __m256d, __m512, __m512d};

pub(super) mod private {
    /// Seals [`Float`](super::Float) and carries its per-type plumbing.
    pub trait Sealed: Sized {
        /// The atomic type with the bits of `Self`, for the buffers team
        /// members share.
        type Atomic: Send + Sync;
        fn new_atomic(v: Self) -> Self::Atomic;
        fn load(a: &Self::Atomic) -> Self;
        fn store(a: &Self::Atomic, v: Self);

        /// `a * b + c` with one rounding.
        fn fused(a: Self, b: Self, c: Self) -> Self;

        /// The logistic function on `v[..s]` and `tanh` on `v[s..]`, in
        /// lockstep (see the `gates` module).
        fn activate<const FMA: bool, const N: usize>(v: &mut [Self; N], s: usize);

        /// The logistic function, as [`Self::activate`] computes it.
        fn sigmoid1(x: Self) -> Self;
        /// `tanh`, as [`Self::activate`] computes it.
        fn tanh1(x: Self) -> Self;

        /// Rows per micro-tile of the many-row product on AVX2 (12
        /// accumulators) and the portable path.
        const TILE_ROWS: usize;

        /// The AVX2 register of `Self`.
        #[cfg(target_arch = "x86_64")]
        type Avx2: crate::kernel::simd::Simd<Elem = Self>;
        /// The AVX-512 register of `Self`.
        #[cfg(target_arch = "x86_64")]
        type Avx512: crate::kernel::simd::Simd<Elem = Self>;
    }

    /// The strides and depth of one micro-tile (see `product::tile`).
    #[derive(Debug, Clone, Copy)]
    pub struct Strides {
        /// Between rows of the destination.
        pub dst_rs: usize,
        /// Between the 16-column sub-panels of the weights.
        pub w_sub: usize,
        /// Depth of the product.
        pub depth: usize,
        /// Between rows of the left operand, each read along the depth; 0
        /// when the tile's rows are side by side (`lhs[i * rows + r]`).
        pub lhs_rs: usize,
    }

    /// The strides and sizes of one micro-tile of the direct convolution
    /// (see `direct::tile`).
    #[derive(Debug, Clone, Copy)]
    pub struct ConvStrides {
        /// Between rows (output channels) of the destination.
        pub dst_rs: usize,
        /// Between rows (output channels) of the weight.
        pub w_rs: usize,
        /// Between channels of the input.
        pub x_rs: usize,
        /// Input channels the tile sums over.
        pub channels: usize,
        /// Taps per channel.
        pub taps: usize,
        /// Input positions between taps.
        pub dilation: usize,
    }
}

pub(super) use private::{ConvStrides, Strides};

/// The element types the kernels support: `f32` and `f64`.
pub trait Float:
    private::Sealed
    + Copy
    + Default
    + PartialOrd
    + Send
    + Sync
    + fmt::Debug
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
{
    /// Additive identity.
    const ZERO: Self;
    /// Multiplicative identity.
    const ONE: Self;

    /// `a * b + c`, as one fused instruction when `FMA` is set (only used in
    /// code compiled with the `fma` target feature).
    #[inline(always)]
    fn madd<const FMA: bool>(a: Self, b: Self, c: Self) -> Self {
        if FMA {
            Self::fused(a, b, c)
        } else {
            a * b + c
        }
    }

    /// The logistic function `1 / (1 + exp(-x))`.
    #[inline(always)]
    fn sigmoid(x: Self) -> Self {
        Self::sigmoid1(x)
    }

    /// The hyperbolic tangent.
    #[inline(always)]
    fn tanh(x: Self) -> Self {
        Self::tanh1(x)
    }
}

/// Implements [`Float`] for a primitive float type `$t`, whose bits fit in
/// `$atomic`, with the activations `gates::activate_$t`, `sigmoid_$t` and
/// `tanh_$t`, micro-tiles of `$rows` rows, and the SIMD registers `$avx2`
/// and `$avx512`.
macro_rules! impl_float {
    ($t:ident, $atomic:ident, $activate:ident, $sigmoid:ident, $tanh:ident, $rows:expr,
     $avx2:ident, $avx512:ident) => {
        impl private::Sealed for $t {
            type Atomic = $atomic;
            fn new_atomic(v: Self) -> $atomic {
                $atomic::new(v.to_bits())
            }
            #[inline(always)]
            fn load(a: &$atomic) -> Self {
                $t::from_bits(a.load(Ordering::Relaxed))
            }
            #[inline(always)]
            fn store(a: &$atomic, v: Self) {
                a.store(v.to_bits(), Ordering::Relaxed)
            }

            #[inline(always)]
            fn fused(a: Self, b: Self, c: Self) -> Self {
                a.mul_add(b, c)
            }

            #[inline(always)]
            fn activate<const FMA: bool, const N: usize>(v: &mut [Self; N], s: usize) {
                gates::$activate::<FMA, N>(v, s)
            }
            #[inline(always)]
            fn sigmoid1(x: Self) -> Self {
                gates::$sigmoid::<false>(x)
            }
            #[inline(always)]
            fn tanh1(x: Self) -> Self {
                gates::$tanh::<false>(x)
            }

            const TILE_ROWS: usize = $rows;

            #[cfg(target_arch = "x86_64")]
            type Avx2 = $avx2;
            #[cfg(target_arch = "x86_64")]
            type Avx512 = $avx512;
        }

        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
        }
    };
}

impl_float!(
    f32,
    AtomicU32,
    activate_f32,
    sigmoid_f32,
    tanh_f32,
    6,
    __m256,
    __m512
);
impl_float!(
    f64,
    AtomicU64,
    activate_f64,
    sigmoid_f64,
    tanh_f64,
    3,
    __m256d,
    __m512d
);
