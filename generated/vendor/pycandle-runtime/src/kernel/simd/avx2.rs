//! The micro-kernel with AVX2 + FMA intrinsics: 256-bit registers, 8 `f32`
//! or 4 `f64`.

use std::arch::x86_64::*;

super::impl_simd!(
    "avx2,fma",
    __m256,
    f32,
    8,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps
);
super::impl_simd!(
    "avx2,fma",
    __m256d,
    f64,
    4,
    _mm256_setzero_pd,
    _mm256_loadu_pd,
    _mm256_storeu_pd,
    _mm256_set1_pd,
    _mm256_fmadd_pd
);

// One row, up to 8 registers; many rows: 16 columns, 2 registers of `f32`
// (up to 6 rows) or 4 of `f64` (up to 3 rows).
super::micro_kernels!(
    "avx2,fma",
    (1, 8),
    (1, 6),
    (1, 4),
    (1, 3),
    (1, 2),
    (1, 1),
    (6, 2),
    (5, 2),
    (4, 2),
    (3, 2),
    (2, 2),
    (3, 4),
    (2, 4),
);

// The direct convolution: up to 6 output channels by 2 registers.
super::conv_kernels!("avx2,fma", 6, 5, 4, 3, 2, 1);
