//! The instruction sets a team member's code is compiled for, as marker
//! types: the time loop and everything it calls are generic over [`Isa`],
//! and each instruction set instantiates them inside one function compiled
//! with its target features (`timeloop::member_dispatch`).

use super::float::{ConvStrides, Strides};
use super::panels::TILE_COLS;
#[cfg(target_arch = "x86_64")]
use super::simd::{self, Simd};
use super::Float;

/// What the generic code needs to know about the instruction set it is
/// compiled for.
pub(super) trait Isa {
    /// Whether the micro-tiles run on [`Isa::tile`] (else on the portable
    /// tile of `product`).
    const SIMD: bool;

    /// The widest tile of the one-row product, in columns: 8 registers,
    /// or one sub-panel for the portable tile.
    fn max_row_cols<T: Float>() -> usize;

    /// The micro-tiles of the many-row product: at most this many rows, by
    /// [`Isa::tile_cols`] columns.
    fn tile_rows<T: Float>() -> usize {
        T::TILE_ROWS
    }

    /// Columns per micro-tile of the many-row product: a multiple of the
    /// 16-column sub-panel.
    fn tile_cols<T: Float>() -> usize {
        TILE_COLS
    }

    /// The logistic function on `v[..s]` and `tanh` on `v[s..]`, with fused
    /// multiply-adds where the instruction set has them.
    fn activate<T: Float, const N: usize>(v: &mut [T; N], s: usize);

    /// The SIMD micro-tile of `rows x cols` (see `product::tile`), its
    /// accumulators starting from `init`.
    ///
    /// # Safety
    ///
    /// The CPU has the instruction set, `cols` is a multiple of the register
    /// width, and every index the tile touches is in bounds.
    unsafe fn tile<T: Float>(
        rows: usize,
        cols: usize,
        dst: *mut T,
        init: *const T,
        lhs: *const T,
        w: *const T,
        s: Strides,
    );

    /// Elements per register of `T` (1 on the portable path).
    fn lanes<T: Float>() -> usize;

    /// Output channels per micro-tile of the direct convolution, at most.
    const CONV_ROWS: usize;

    /// The SIMD micro-tile of the direct convolution, `rows` output
    /// channels by `vecs` (1 or 2) registers of output positions (see
    /// `direct::tile`).
    ///
    /// # Safety
    ///
    /// The CPU has the instruction set, and every index the tile touches is
    /// in bounds.
    unsafe fn conv_tile<T: Float>(
        rows: usize,
        vecs: usize,
        dst: *mut T,
        x: *const T,
        w: *const T,
        s: ConvStrides,
    );
}

/// Plain Rust, compiled for the crate's baseline target.
pub(super) struct Portable;

impl Isa for Portable {
    const SIMD: bool = false;

    #[inline(always)]
    fn max_row_cols<T: Float>() -> usize {
        TILE_COLS
    }

    #[inline(always)]
    fn activate<T: Float, const N: usize>(v: &mut [T; N], s: usize) {
        T::activate::<false, N>(v, s)
    }

    unsafe fn tile<T: Float>(
        _: usize,
        _: usize,
        _: *mut T,
        _: *const T,
        _: *const T,
        _: *const T,
        _: Strides,
    ) {
        unreachable!("the portable path has no SIMD tile")
    }

    fn lanes<T: Float>() -> usize {
        1
    }

    const CONV_ROWS: usize = 1;

    unsafe fn conv_tile<T: Float>(
        _: usize,
        _: usize,
        _: *mut T,
        _: *const T,
        _: *const T,
        _: ConvStrides,
    ) {
        unreachable!("the portable path has no SIMD tile")
    }
}

/// AVX2 with FMA: 16 256-bit registers.
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Isa for Avx2 {
    const SIMD: bool = true;

    #[inline(always)]
    fn max_row_cols<T: Float>() -> usize {
        8 * T::Avx2::LANES
    }

    #[inline(always)]
    fn activate<T: Float, const N: usize>(v: &mut [T; N], s: usize) {
        T::activate::<true, N>(v, s)
    }

    #[inline(always)]
    unsafe fn tile<T: Float>(
        rows: usize,
        cols: usize,
        dst: *mut T,
        init: *const T,
        lhs: *const T,
        w: *const T,
        s: Strides,
    ) {
        // SAFETY: the caller's contract.
        unsafe {
            simd::avx2::dispatch::<T::Avx2>(rows, cols / T::Avx2::LANES, dst, init, lhs, w, s)
        }
    }

    #[inline(always)]
    fn lanes<T: Float>() -> usize {
        T::Avx2::LANES
    }

    const CONV_ROWS: usize = 6;

    #[inline(always)]
    unsafe fn conv_tile<T: Float>(
        rows: usize,
        vecs: usize,
        dst: *mut T,
        x: *const T,
        w: *const T,
        s: ConvStrides,
    ) {
        // SAFETY: the caller's contract.
        unsafe { simd::avx2::conv_dispatch::<T::Avx2>(rows, vecs, dst, x, w, s) }
    }
}

/// AVX-512F (with FMA, which every AVX-512 CPU has): 32 512-bit registers.
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Isa for Avx512 {
    const SIMD: bool = true;

    #[inline(always)]
    fn max_row_cols<T: Float>() -> usize {
        8 * T::Avx512::LANES
    }

    /// 12 rows by 2 registers: 24 accumulators of the 32 registers (the
    /// 16-column tile of AVX2 would hold only 6 for `f32`, and load a
    /// broadcast input per multiply-add).
    #[inline(always)]
    fn tile_rows<T: Float>() -> usize {
        12
    }

    #[inline(always)]
    fn tile_cols<T: Float>() -> usize {
        2 * T::Avx512::LANES
    }

    #[inline(always)]
    fn activate<T: Float, const N: usize>(v: &mut [T; N], s: usize) {
        T::activate::<true, N>(v, s)
    }

    #[inline(always)]
    unsafe fn tile<T: Float>(
        rows: usize,
        cols: usize,
        dst: *mut T,
        init: *const T,
        lhs: *const T,
        w: *const T,
        s: Strides,
    ) {
        // SAFETY: the caller's contract.
        unsafe {
            simd::avx512::dispatch::<T::Avx512>(rows, cols / T::Avx512::LANES, dst, init, lhs, w, s)
        }
    }

    #[inline(always)]
    fn lanes<T: Float>() -> usize {
        T::Avx512::LANES
    }

    const CONV_ROWS: usize = 12;

    #[inline(always)]
    unsafe fn conv_tile<T: Float>(
        rows: usize,
        vecs: usize,
        dst: *mut T,
        x: *const T,
        w: *const T,
        s: ConvStrides,
    ) {
        // SAFETY: the caller's contract.
        unsafe { simd::avx512::conv_dispatch::<T::Avx512>(rows, vecs, dst, x, w, s) }
    }
}
