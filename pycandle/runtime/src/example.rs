//! What the generated examples (`cargo run --example <model>`) share: their
//! command line, the weights, and inputs read by name or made at a shape.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Error, Result, Tensor};
use candle_nn::VarBuilder;

/// An example's command line, `[--weights WEIGHTS.safetensors] [INPUTS.safetensors]`,
/// loaded: the weights, and the tensors of the inputs file by name.
#[derive(Debug)]
pub struct ExampleRun {
    weights: HashMap<String, Tensor>,
    inputs: HashMap<String, Tensor>,
    device: Device,
}

impl ExampleRun {
    /// Reads the process's arguments; the weights default to `recorded`.
    pub fn from_args(recorded: &str, device: &Device) -> Result<Self> {
        Self::parse(std::env::args().skip(1), recorded, device)
    }

    /// [`from_args`](Self::from_args) on the given arguments.
    pub fn parse(
        mut args: impl Iterator<Item = String>,
        recorded: &str,
        device: &Device,
    ) -> Result<Self> {
        let mut weights = recorded.to_string();
        let mut inputs_file = None;
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--weights" => {
                    weights = args
                        .next()
                        .ok_or_else(|| Error::Msg("--weights needs a file".to_string()))?;
                }
                _ if inputs_file.is_none() => inputs_file = Some(arg),
                _ => return Err(Error::Msg(format!("unexpected argument {arg:?}"))),
            }
        }
        let load = |path: &str, what: &str| {
            candle_core::safetensors::load(path, device)
                .map_err(|e| Error::Msg(format!("cannot load the {what} {path}: {e}")))
        };
        Ok(Self {
            weights: load(&weights, "weights")?,
            inputs: match &inputs_file {
                Some(path) => load(path, "inputs")?,
                None => HashMap::new(),
            },
            device: device.clone(),
        })
    }

    /// The weights, as a [`VarBuilder`] that converts them to `dtype`.
    pub fn var_builder(&mut self, dtype: DType) -> VarBuilder<'static> {
        VarBuilder::from_tensors(std::mem::take(&mut self.weights), dtype, &self.device)
    }

    /// The input `name` from the inputs file, or one made at `shape`: zeros,
    /// or ones for integers (a valid index and length).
    pub fn input(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        match self.inputs.remove(name) {
            Some(tensor) => Ok(tensor),
            None if dtype.is_int() && dtype != DType::U8 => {
                Tensor::ones(shape, dtype, &self.device)
            }
            None => Tensor::zeros(shape, dtype, &self.device),
        }
    }
}

/// What the recurrent kernels run on (`avx512`, `avx2` or `portable`;
/// `PYCANDLE_KERNEL` forces one the CPU has), for an example's report; by
/// default a CPU with AVX-512 runs a single sequence on AVX2, which the
/// name then says.
pub fn kernel_name() -> &'static str {
    use crate::kernel::{kernel_path, kernel_path_for_batch, KernelPath};
    match (kernel_path(), kernel_path_for_batch(1)) {
        (KernelPath::Avx512, KernelPath::Avx2) => "avx512 (avx2 at batch 1)",
        (path, _) => path.name(),
    }
}

/// The kernels Candle's matrix products (gemm) run on this CPU: `avx512f`
/// when the runtime's `avx512` feature is on and the CPU has AVX-512F, else
/// `fma` (AVX2 and FMA), else `baseline`.
pub fn gemm_kernel_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(feature = "avx512") && std::is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if std::is_x86_feature_detected!("fma") {
            return "fma";
        }
    }
    "baseline"
}

/// Runs `f` once and returns its result with the time it took.
pub fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    let start = Instant::now();
    let out = f()?;
    Ok((out, start.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn inputs_by_name_or_made_at_their_shape() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("pycandle-example-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(Error::wrap)?;
        let device = Device::Cpu;
        let weights = dir.join("w.safetensors");
        let inputs = dir.join("in.safetensors");
        Tensor::ones(3, DType::F32, &device)?.save_safetensors("bias", &weights)?;
        Tensor::new(&[7i64, 8], &device)?.save_safetensors("tokens", &inputs)?;
        let mut run = ExampleRun::parse(
            args(&[inputs.to_str().unwrap()]),
            weights.to_str().unwrap(),
            &device,
        )?;
        let vb = run.var_builder(DType::F64);
        assert_eq!(vb.get(3, "bias")?.to_vec1::<f64>()?, [1.0; 3]);
        let tokens = run.input("tokens", &[5], DType::I64)?;
        assert_eq!(tokens.to_vec1::<i64>()?, [7, 8]);
        let lengths = run.input("lengths", &[2], DType::I64)?;
        assert_eq!(lengths.to_vec1::<i64>()?, [1, 1]);
        let mask = run.input("mask", &[2], DType::U8)?;
        assert_eq!(mask.to_vec1::<u8>()?, [0, 0]);
        std::fs::remove_dir_all(&dir).map_err(Error::wrap)?;
        Ok(())
    }

    #[test]
    fn bad_command_lines_are_named() {
        let device = Device::Cpu;
        let err = ExampleRun::parse(args(&["--weights"]), "w", &device).unwrap_err();
        assert!(err.to_string().contains("--weights needs a file"), "{err}");
        let err = ExampleRun::parse(args(&["a", "b"]), "w", &device).unwrap_err();
        assert!(
            err.to_string().contains("unexpected argument \"b\""),
            "{err}"
        );
        let err = ExampleRun::parse(args(&[]), "/nonexistent/w.safetensors", &device).unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot load the weights /nonexistent"),
            "{err}"
        );
    }
}
