//! SIMD micro-kernels, one module per instruction set (x86-64 only; the
//! portable tile in `product` serves elsewhere).

pub(super) mod avx2;
