//! `Conv1d`: candle_nn's layer with a faster CPU forward.
//!
//! On the CPU, in `f32` and `f64`, a convolution with a stride of 1 runs on
//! the kernels' direct convolution when the CPU has AVX2 or AVX-512 (see
//! `kernel::direct`): tiles of output channels by output positions that
//! read the zero-padded input in place, shifted by each tap, and the
//! weight as stored. (Tacotron-2's 512-channel, 5-tap convolution on a
//! 2-core Xeon, alternating in one process, against the product below:
//! 11-13 % faster at B=8 and 12 % at B=1 limited to AVX2; 5-7 % at B=1
//! and B=8 with AVX-512. Other shapes, from raw audio into 64 channels to
//! dilated taps, took 0.8-1.0 of the product's time on either path, a
//! depthwise 31-tap one 0.15.) Any other convolution is one matrix product per
//! group: the weight times the input unrolled into columns (`im2col`, one
//! row per input channel and tap), started from the bias and written
//! straight into the `(C_out, L_out)` layout; short inputs are multiplied
//! several batch items at a time, so the product packs the weight once for
//! them. Candle computes the transposed product per batch item and copies
//! it into place, adds the bias as another op, and hands each op to its
//! thread pools, whose workers, once asleep after an idle moment, wake on
//! the caller's core and wait there. Here the batch items (or, for fewer
//! items than threads, the output channels) are split between the calling
//! thread and pool tasks that it takes back when no pool thread has started
//! them, and that move off the caller's core (the recurrent kernels'
//! scheme, see [`crate::kernel`]). Other devices and dtypes run candle_nn's
//! forward.
//!
//! [`conv_transpose2d_grouped`] is Candle's transposed 2-d convolution with
//! the `groups` it lacks.

use candle_core::{bail, DType, Module, Result, Tensor, WithDType};
use candle_nn::{Conv1dConfig, ConvTranspose2dConfig, VarBuilder};

use crate::host::{with_elements, with_weight_and_bias};
use crate::kernel::{
    conv1d, default_threads, direct_lanes, in_parallel, kernel_path, ConvGeometry, Float,
    KernelPath, SPLIT_WORK,
};

/// A 1-d convolution, PyTorch's `nn.Conv1d` with zero padding: candle_nn's
/// [`candle_nn::Conv1d`] with the CPU forward described in the module docs.
#[derive(Debug, Clone)]
pub struct Conv1d {
    layer: candle_nn::Conv1d,
}

impl Conv1d {
    /// `weight` and `bias` loaded from `vb`, as [`candle_nn::conv1d`] loads
    /// them.
    pub fn load(
        in_channels: usize,
        out_channels: usize,
        kernel_size: usize,
        config: Conv1dConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let layer = candle_nn::conv1d(in_channels, out_channels, kernel_size, config, vb)?;
        Ok(Self { layer })
    }

    /// `weight` loaded from `vb`, no bias.
    pub fn load_no_bias(
        in_channels: usize,
        out_channels: usize,
        kernel_size: usize,
        config: Conv1dConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let layer = candle_nn::conv1d_no_bias(in_channels, out_channels, kernel_size, config, vb)?;
        Ok(Self { layer })
    }

    /// From a `(C_out, C_in / groups, K)` weight and a `(C_out)` bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv1dConfig) -> Self {
        Self {
            layer: candle_nn::Conv1d::new(weight, bias, config),
        }
    }

    pub fn weight(&self) -> &Tensor {
        self.layer.weight()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.layer.bias()
    }

    pub fn config(&self) -> &Conv1dConfig {
        self.layer.config()
    }

    /// The output's shape and the product's sizes, or `None` when candle_nn
    /// should run (and report) the call.
    fn geometry(&self, x: &Tensor) -> Option<Geometry> {
        let &[batch, c_in, l_in] = x.dims() else {
            return None;
        };
        let (c_out, c_in_group, taps) = self.weight().dims3().ok()?;
        let config = self.config();
        let groups = config.groups;
        if batch == 0 || c_in == 0 || l_in == 0 || taps == 0 {
            return None; // nothing to compute, or nothing candle_nn accepts
        }
        let span = config.dilation * (taps - 1) + 1;
        let padded = l_in + 2 * config.padding;
        let usable = groups > 0
            && c_in == c_in_group * groups
            && c_out % groups == 0
            && config.stride > 0
            && padded >= span
            && self.weight().dtype() == x.dtype()
            && self.bias().is_none_or(|b| b.dtype() == x.dtype());
        usable.then(|| Geometry {
            batch,
            c_in,
            l_in,
            c_out,
            taps,
            l_out: (padded - span) / config.stride + 1,
        })
    }

    fn forward_cpu<T: WithDType + Float>(&self, x: &Tensor, geom: Geometry) -> Result<Tensor> {
        let out = with_weight_and_bias::<T, _>(self.weight(), self.bias(), |weight, bias| {
            // The input is often a transposed view (channels-last features).
            with_elements::<T, _>(x, |x| convolve(x, weight, bias, geom, self.config()))
        })?;
        Tensor::from_vec(out, (geom.batch, geom.c_out, geom.l_out), x.device())
    }
}

impl Module for Conv1d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let geom = self.geometry(x).filter(|_| x.device().is_cpu());
        match (x.dtype(), geom) {
            (DType::F32, Some(geom)) => self.forward_cpu::<f32>(x, geom),
            (DType::F64, Some(geom)) => self.forward_cpu::<f64>(x, geom),
            _ => self.layer.forward(x),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    c_in: usize,
    l_in: usize,
    c_out: usize,
    taps: usize,
    l_out: usize,
}

/// The fewest output channels a thread's share holds.
const MIN_ROWS: usize = 16;
/// Output positions a product should have at least, batch items together:
/// the product packs its share of the weight once per call, so short inputs
/// are multiplied several batch items at a time.
const MIN_WIDTH: usize = 512;

/// The convolution of `xs` (B, C_in, L_in) by `ws` (C_out, C_in / groups, K),
/// plus `bias`: (B, C_out, L_out).
///
/// Every thread convolves as many batch items as the batch gives each, from
/// start to end: it pads or unrolls only its items and reads only those,
/// where splitting the output channels has every thread read all of them.
/// (Tacotron-2's 512-channel convolution on a
/// 2-core AVX-512 Xeon, alternating in one process: 12 % faster at B=4,
/// 2-6 % at B=2 and B=8.) The items left over, fewer than the threads,
/// split each product's output channels between the threads instead.
fn convolve<T: WithDType + Float>(
    xs: &[T],
    ws: &[T],
    bias: Option<&[T]>,
    geom: Geometry,
    config: &Conv1dConfig,
) -> Vec<T> {
    // Read on the calling thread, where `with_kernel_path` applies.
    let path = kernel_path();
    let direct = (config.stride == 1 && direct_lanes::<T>(path).is_some()).then_some(path);
    let batch = geom.batch;
    // elements per batch item of the input and of the output
    let (item_in, item_out) = (geom.c_in * geom.l_in, geom.c_out * geom.l_out);
    let mut out = vec![T::zero(); batch * item_out];
    let work = geom.c_in / config.groups * geom.taps * batch * item_out;
    let threads = if work >= SPLIT_WORK {
        default_threads()
    } else {
        1
    };
    // As many items per thread as the batch gives every thread; the rest
    // split between the threads by output channels.
    let share = if threads > 1 { batch / threads } else { 0 };
    let (xs_even, xs_rest) = xs.split_at(threads * share * item_in);
    let (out_even, out_rest) = out.split_at_mut(threads * share * item_out);
    if share > 0 {
        let shares = xs_even
            .chunks(share * item_in)
            .zip(out_even.chunks_mut(share * item_out));
        let geom = Geometry {
            batch: share,
            ..geom
        };
        in_parallel(shares, |_, (x, y)| {
            convolve_into(x, y, ws, bias, geom, config, direct, 1)
        });
    }
    let rest = batch - threads * share;
    if rest > 0 {
        let geom = Geometry {
            batch: rest,
            ..geom
        };
        convolve_into(xs_rest, out_rest, ws, bias, geom, config, direct, threads);
    }
    out
}

/// [`convolve`] into `out`, each product's output channels split between
/// up to `threads` threads: on the direct convolution of the kernel path
/// `direct` names, else as matrix products of the unrolled input.
#[allow(clippy::too_many_arguments)]
fn convolve_into<T: WithDType + Float>(
    xs: &[T],
    out: &mut [T],
    ws: &[T],
    bias: Option<&[T]>,
    geom: Geometry,
    config: &Conv1dConfig,
    direct: Option<KernelPath>,
    threads: usize,
) {
    let Geometry {
        batch,
        c_in,
        l_in,
        c_out,
        taps,
        l_out,
    } = geom;
    let groups = config.groups;
    let (rows, depth) = (c_out / groups, c_in / groups * taps);
    // The threads that share the output channels of a product `width`
    // output positions wide.
    let split = |width: usize| {
        if rows * depth * width >= SPLIT_WORK {
            threads.min(rows / MIN_ROWS).max(1)
        } else {
            1
        }
    };
    if let Some(path) = direct {
        let g = ConvGeometry {
            c_in,
            c_out,
            taps,
            padding: config.padding,
            dilation: config.dilation,
            groups,
            l_in,
            l_out,
        };
        conv1d(path, xs, ws, bias, g, out, split(l_out));
        return;
    }
    // batch items per product, as evenly as the batch divides
    let chunks = batch.div_ceil(MIN_WIDTH.div_ceil(l_out).min(batch).max(1));
    let items = batch.div_ceil(chunks.max(1)).max(1);
    let stride = items * l_out;
    let mut columns = vec![T::zero(); c_in * taps * stride];
    // the products of several items, (rows, items * L_out), before they are put in place
    let mut joined = vec![T::zero(); if items > 1 { rows * stride } else { 0 }];
    let threads = split(stride);
    for (x, y) in xs
        .chunks(items * c_in * l_in)
        .zip(out.chunks_mut(items * c_out * l_out))
    {
        let count = x.len() / (c_in * l_in);
        unroll_split(x, geom, config, &mut columns, stride, threads);
        for g in 0..groups {
            let product = Product {
                weight: &ws[g * rows * depth..(g + 1) * rows * depth],
                columns: &columns[g * depth * stride..(g + 1) * depth * stride],
                stride,
                bias: bias.map(|b| &b[g * rows..(g + 1) * rows]),
                depth,
                width: count * l_out,
            };
            if count == 1 {
                product.split(&mut y[g * rows * l_out..(g + 1) * rows * l_out], threads);
                continue;
            }
            let joined = &mut joined[..rows * count * l_out];
            product.split(joined, threads);
            // row r of the product holds output channel g * rows + r of each item in turn
            for (r, row) in joined.chunks_exact(count * l_out).enumerate() {
                for (i, part) in row.chunks_exact(l_out).enumerate() {
                    let at = (i * c_out + g * rows + r) * l_out;
                    y[at..at + l_out].copy_from_slice(part);
                }
            }
        }
    }
}

/// [`unroll`]s the batch items of `xs` side by side into `columns`
/// (C_in * K, stride), item `i` from column `i * L_out`, the input channels
/// split into `parts` shares ([`in_parallel`]).
fn unroll_split<T: WithDType>(
    xs: &[T],
    geom: Geometry,
    config: &Conv1dConfig,
    columns: &mut [T],
    stride: usize,
    parts: usize,
) {
    let (c_in, l_in, taps, l_out) = (geom.c_in, geom.l_in, geom.taps, geom.l_out);
    let share = c_in.div_ceil(parts.max(1));
    let unroll_share = |first: usize, columns: &mut [T]| {
        let channels = first..(first + share).min(c_in);
        for (i, x) in xs.chunks_exact(c_in * l_in).enumerate() {
            let x = &x[channels.start * l_in..channels.end * l_in];
            unroll(x, geom, config, &mut columns[i * l_out..], stride);
        }
    };
    let shares = columns[..c_in * taps * stride].chunks_mut(share * taps * stride);
    in_parallel(shares, |i, columns| unroll_share(i * share, columns));
}

/// Writes `columns` (C_in * K, L_out), its rows `stride` apart: row `c * K + k`
/// holds channel `c` of `x` as tap `k` sees it at each output position, zero
/// in the padding.
fn unroll<T: WithDType>(
    x: &[T],
    geom: Geometry,
    config: &Conv1dConfig,
    columns: &mut [T],
    stride_rows: usize,
) {
    let (l_in, taps, l_out) = (geom.l_in, geom.taps, geom.l_out);
    let (pad, stride, dilation) = (config.padding, config.stride, config.dilation);
    for (c, channel) in x.chunks_exact(l_in).enumerate() {
        for k in 0..taps {
            let at = (c * taps + k) * stride_rows;
            let row = &mut columns[at..at + l_out];
            // output position t reads input position t * stride + k * dilation - pad
            let offset = k * dilation;
            let first = pad.saturating_sub(offset).div_ceil(stride).min(l_out);
            let end = (l_in + pad)
                .checked_sub(offset)
                .map_or(0, |limit| limit.div_ceil(stride))
                .clamp(first, l_out);
            row[..first].fill(T::zero());
            row[end..].fill(T::zero());
            if first == end {
                continue;
            }
            let start = first * stride + offset - pad;
            if stride == 1 {
                row[first..end].copy_from_slice(&channel[start..start + end - first]);
            } else {
                for (dst, src) in row[first..end]
                    .iter_mut()
                    .zip(channel[start..].iter().step_by(stride))
                {
                    *dst = *src;
                }
            }
        }
    }
}

/// One group's `weight (rows, depth) x columns (depth, width) + bias`, the
/// rows of `columns` `stride` apart.
#[derive(Clone, Copy)]
struct Product<'a, T> {
    weight: &'a [T],
    columns: &'a [T],
    stride: usize,
    bias: Option<&'a [T]>,
    depth: usize,
    width: usize,
}

impl<T: WithDType> Product<'_, T> {
    /// Computes the product into `out` (rows, width), its rows split into
    /// `parts` shares: the first on this thread, the others as tasks.
    fn split(self, out: &mut [T], parts: usize) {
        let rows = out.len() / self.width;
        let share = rows.div_ceil(parts);
        let shares = out.chunks_mut(share * self.width);
        in_parallel(shares, |i, out: &mut [T]| {
            self.rows(i * share, out.len() / self.width).compute(out)
        });
    }

    /// The product's rows `start..start + count`.
    fn rows(self, start: usize, count: usize) -> Self {
        Self {
            weight: &self.weight[start * self.depth..(start + count) * self.depth],
            bias: self.bias.map(|b| &b[start..start + count]),
            ..self
        }
    }

    fn compute(self, out: &mut [T]) {
        let rows = out.len() / self.width;
        if let Some(bias) = self.bias {
            for (row, &b) in out.chunks_exact_mut(self.width).zip(bias) {
                row.fill(b);
            }
        }
        // SAFETY: the pointers and strides describe `out` (rows, width),
        // `weight` (rows, depth) and `columns` (depth, width, rows `stride`
        // apart), all row-major and in bounds; `out` does not alias them.
        unsafe {
            gemm::gemm(
                rows,
                self.width,
                self.depth,
                out.as_mut_ptr(),
                1,
                self.width as isize,
                self.bias.is_some(),
                self.weight.as_ptr(),
                1,
                self.depth as isize,
                self.columns.as_ptr(),
                1,
                self.stride as isize,
                T::one(),
                T::one(),
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

/// `x.conv_transpose2d(kernel, ..)` with PyTorch's `groups`, which Candle's
/// lacks, plus `bias`: each of the `groups` shares of the input channels
/// `x` (B, C_in, H, W) goes through its share of `kernel`
/// (C_in, C_out / groups, kH, kW), and the outputs are concatenated along
/// the channels. `bias` is (C_out).
pub fn conv_transpose2d_grouped(
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    config: ConvTranspose2dConfig,
    groups: usize,
) -> Result<Tensor> {
    let (c_in, c_in_kernel) = (x.dim(1)?, kernel.dim(0)?);
    if groups == 0 || c_in != c_in_kernel || c_in % groups != 0 {
        bail!(
            "conv_transpose2d_grouped: {c_in} input channels and a kernel for {c_in_kernel} \
             do not split into {groups} groups"
        )
    }
    let share = c_in / groups;
    let ConvTranspose2dConfig {
        padding,
        output_padding,
        stride,
        dilation,
    } = config;
    let outs = (0..groups)
        .map(|g| {
            let x = x.narrow(1, g * share, share)?.contiguous()?;
            let kernel = kernel.narrow(0, g * share, share)?.contiguous()?;
            x.conv_transpose2d(&kernel, padding, output_padding, stride, dilation)
        })
        .collect::<Result<Vec<_>>>()?;
    let out = Tensor::cat(&outs, 1)?;
    match bias {
        Some(bias) => out.broadcast_add(&bias.reshape((1, (), 1, 1))?),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::max_abs_diff;
    use crate::kernel::with_kernel_path;
    use candle_core::Device;

    /// Every configuration against candle_nn's forward, in both dtypes, on
    /// every kernel path the CPU has.
    #[test]
    fn matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        // (batch, c_in, c_out, l_in, taps, padding, stride, dilation, groups, bias)
        let cases = [
            (1, 3, 4, 9, 3, 1, 1, 1, 1, true),
            (2, 4, 6, 11, 5, 2, 2, 1, 2, false),
            (3, 6, 6, 10, 3, 0, 3, 2, 3, true),
            (1, 2, 2, 4, 5, 3, 1, 1, 1, true),
            (2, 64, 96, 40, 5, 2, 1, 1, 1, true), // large enough to split: an item per thread
            (1, 8, 8, 7, 1, 0, 2, 1, 8, true),
            (5, 32, 64, 150, 3, 1, 1, 1, 1, true), // items multiplied together, 2 per thread, 1 split
            (7, 6, 4, 100, 3, 2, 1, 2, 2, false),  // groups, several items per product
            (3, 4, 4, 3, 3, 0, 1, 1, 1, true),     // one output position
            (1, 67, 64, 400, 3, 1, 2, 1, 1, true), // channels split unevenly while unrolled
            (1, 64, 96, 200, 5, 2, 1, 1, 1, true), // one item: output channels split
            (3, 67, 64, 120, 3, 1, 2, 1, 1, true), // an item per thread, 1 split
            (2, 300, 20, 400, 5, 2, 1, 1, 1, true), // slices of the input channels, blocks of positions
            (3, 16, 13, 37, 7, 3, 1, 1, 1, false),  // 7 taps, tiles of fewer rows
            (2, 12, 26, 50, 3, 4, 1, 3, 2, true),   // dilated taps, groups
            (1, 96, 64, 300, 5, 0, 1, 1, 1, true),  // one item split, no padding
        ];
        for (i, &(b, c_in, c_out, l, k, padding, stride, dilation, groups, with_bias)) in
            cases.iter().enumerate()
        {
            let config = Conv1dConfig {
                padding,
                stride,
                dilation,
                groups,
                ..Default::default()
            };
            for dtype in [DType::F32, DType::F64] {
                let x = Tensor::randn(0f64, 1.0, (b, c_in, l), &dev)?.to_dtype(dtype)?;
                let w =
                    Tensor::randn(0f64, 0.3, (c_out, c_in / groups, k), &dev)?.to_dtype(dtype)?;
                let bias = with_bias
                    .then(|| Tensor::randn(0f64, 1.0, c_out, &dev)?.to_dtype(dtype))
                    .transpose()?;
                let theirs = candle_nn::Conv1d::new(w.clone(), bias.clone(), config).forward(&x)?;
                let layer = Conv1d::new(w, bias, config);
                // Rounding grows with the terms of each output (random data,
                // and the two sum in different orders): 1e-4 in f32 up to 100
                // terms, then with their square root.
                let terms = (c_in / groups * k) as f64;
                let scale = (terms / 100.0).sqrt().max(1.0);
                // the direct convolution on each SIMD path, the product on the portable one
                for path in KernelPath::available() {
                    let ours = with_kernel_path(path, || layer.forward(&x)).unwrap()?;
                    let err = max_abs_diff(&ours, &theirs)?;
                    let tol = scale * if dtype == DType::F32 { 1e-4 } else { 1e-10 };
                    assert!(
                        err < tol,
                        "case {i} {dtype:?} {path:?}: max difference {err}"
                    );
                }
            }
        }
        Ok(())
    }

    /// Each group through its own kernel share equals a block-diagonal kernel
    /// (zeros between the groups) run by Candle without groups.
    #[test]
    fn grouped_transposed_2d() -> Result<()> {
        let dev = Device::Cpu;
        let (groups, c_in, c_out_group) = (2, 4, 3);
        let kernel = Tensor::randn(0f32, 1.0, (c_in, c_out_group, 3, 2), &dev)?;
        let bias = Tensor::randn(0f32, 1.0, groups * c_out_group, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, c_in, 5, 4), &dev)?;
        let config = ConvTranspose2dConfig {
            padding: 1,
            output_padding: 1,
            stride: 2,
            dilation: 1,
        };
        let ours = conv_transpose2d_grouped(&x, &kernel, Some(&bias), config, groups)?;
        // (C_in, C_out, kH, kW), zero outside each group's block
        let share = c_in / groups;
        let blocks = (0..groups)
            .map(|g| {
                let k = kernel.narrow(0, g * share, share)?;
                let parts = (0..groups)
                    .map(|h| {
                        if h == g {
                            Ok(k.clone())
                        } else {
                            k.zeros_like()
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&parts, 1)
            })
            .collect::<Result<Vec<_>>>()?;
        let full = Tensor::cat(&blocks, 0)?;
        let theirs = x
            .conv_transpose2d(&full, 1, 1, 2, 1)?
            .broadcast_add(&bias.reshape((1, (), 1, 1))?)?;
        assert!(max_abs_diff(&ours, &theirs)? < 1e-5);
        Ok(())
    }

    /// A strided view and a transposed input give the same result as their
    /// contiguous copies.
    #[test]
    fn non_contiguous_input() -> Result<()> {
        let dev = Device::Cpu;
        let conv = Conv1d::new(
            Tensor::randn(0f32, 1.0, (4, 3, 3), &dev)?,
            Some(Tensor::randn(0f32, 1.0, 4, &dev)?),
            Conv1dConfig {
                padding: 1,
                ..Default::default()
            },
        );
        let x = Tensor::randn(0f32, 1.0, (2, 8, 3), &dev)?.transpose(1, 2)?;
        let a = conv.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
        let b = conv
            .forward(&x.contiguous()?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(a, b);
        Ok(())
    }
}
