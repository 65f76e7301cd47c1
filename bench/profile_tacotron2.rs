//! Where the generated Tacotron-2 encoder spends its time: each stage of its `forward` timed on
//! its own (the model's public fields), medians over N runs, next to the whole forward.
//!
//! Not built by the benchmark. After a benchmark run has generated target/bench/crate:
//!
//! ```text
//! cp bench/profile_tacotron2.rs target/bench/crate/examples/
//! cd target/bench/crate && cargo run --release --example profile_tacotron2 -- B T N
//! ```

use std::time::Instant;

use candle_core::{DType, Device, Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;

fn median(f: &mut dyn FnMut() -> Result<Tensor>, n: usize) -> Result<f64> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let out = f()?;
        times.push(start.elapsed().as_secs_f64());
        drop(out);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[n / 2] * 1e3)
}

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("B T N are numbers"))
        .collect();
    let (b, t, n) = match args.as_slice() {
        [b, t, n] => (*b, *t, *n),
        _ => (1, 150, 50),
    };
    let dev = Device::Cpu;
    let weights = candle_core::safetensors::load(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../artifacts/tacotron2_encoder/weights.safetensors"
        ),
        &dev,
    )?;
    let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
    let model = crate_models::tacotron2_encoder::Tacotron2Encoder::load(vb)?;
    let ids: Vec<i64> = (0..b * t).map(|i| (i * 7 % 148) as i64).collect();
    let tokens = Tensor::from_vec(ids, (b, t), &dev)?;

    let embedded = model.embedding.forward(&tokens)?; // (B, T, C)
    let x = embedded.transpose(1, 2)?; // (B, C, T), a view
    let conv = model.convolutions[0].layer_0.forward(&x)?;
    let normed = model.convolutions[0].layer_1.forward_t(&conv, false)?;
    let relu = normed.relu()?;
    let lstm_in = relu.transpose(1, 2)?; // (B, T, C), a view
    let lstm_in_contiguous = lstm_in.contiguous()?;

    let rows: Vec<(&str, f64)> = vec![
        ("whole forward", median(&mut || model.forward(&tokens), n)?),
        (
            "embedding",
            median(&mut || model.embedding.forward(&tokens), n)?,
        ),
        (
            "conv1d on the transposed view (as forward)",
            median(&mut || model.convolutions[0].layer_0.forward(&x), n)?,
        ),
        (
            "conv1d on a contiguous input",
            median(
                &mut || {
                    let x = x.contiguous()?;
                    model.convolutions[0].layer_0.forward(&x)
                },
                n,
            )?,
        ),
        (
            "  of which: contiguous copy",
            median(&mut || x.contiguous(), n)?,
        ),
        (
            "batch_norm (eval)",
            median(
                &mut || model.convolutions[0].layer_1.forward_t(&conv, false),
                n,
            )?,
        ),
        ("relu", median(&mut || normed.relu(), n)?),
        (
            "bilstm on the transposed view (as forward)",
            median(&mut || Ok(model.lstm.forward(&lstm_in, None)?.0), n)?,
        ),
        (
            "bilstm on a contiguous input",
            median(
                &mut || Ok(model.lstm.forward(&lstm_in_contiguous, None)?.0),
                n,
            )?,
        ),
    ];
    println!(
        "tacotron2_encoder B={b} T={t}, {} threads, recurrent kernels {}: median ms over {n}",
        pycandle_runtime::kernel::default_threads(),
        pycandle_runtime::example::kernel_name()
    );
    for (name, ms) in rows {
        println!("{name:<45} {ms:>9.3}");
    }
    println!("(the forward runs 3 x (conv1d + batch_norm + relu))");
    Ok(())
}
