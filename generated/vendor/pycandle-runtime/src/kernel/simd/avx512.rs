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

super::micro_kernels!("avx512f");
