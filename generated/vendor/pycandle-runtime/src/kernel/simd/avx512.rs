//! The micro-kernel with AVX-512F intrinsics: 512-bit registers, 16 `f32`
//! (one row of a 16-column sub-panel) or 8 `f64`.

use std::arch::x86_64::*;

super::impl_simd!(
    "avx512f",
    __m512,
    f32,
    16,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps
);
super::impl_simd!(
    "avx512f",
    __m512d,
    f64,
    8,
    _mm512_setzero_pd,
    _mm512_loadu_pd,
    _mm512_storeu_pd,
    _mm512_set1_pd,
    _mm512_fmadd_pd
);

// One row, up to 8 registers; many rows: up to 12 rows by 2 registers, or
// by 1 for the last 16 columns of a panel of `f32` with an odd count of them.
super::micro_kernels!(
    "avx512f",
    (1, 8),
    (1, 6),
    (1, 4),
    (1, 3),
    (1, 2),
    (1, 1),
    (12, 2),
    (12, 1),
    (11, 2),
    (11, 1),
    (10, 2),
    (10, 1),
    (9, 2),
    (9, 1),
    (8, 2),
    (8, 1),
    (7, 2),
    (7, 1),
    (6, 2),
    (6, 1),
    (5, 2),
    (5, 1),
    (4, 2),
    (4, 1),
    (3, 2),
    (3, 1),
    (2, 2),
    (2, 1),
);

// The direct convolution: up to 12 output channels by 2 registers.
super::conv_kernels!("avx512f", 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1);
