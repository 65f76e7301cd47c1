//! Recurrent-layer benchmark: PyCandle's `Lstm` / `Gru` (which run on the CPU kernels of
//! `pycandle_runtime::kernel`) against Candle's own `candle_nn::lstm` / `candle_nn::gru` layers, and
//! (driven by `python -m pycandle.bench`) against PyTorch, on the same weights.
//!
//! Contenders, all f32 on the CPU, input and output time-major `(T, B, F)`:
//!
//! * `baseline`: `candle_nn` layers stacked and run with `RNN::seq`, the way
//!   `candle-transformers`' `EncodecLSTM` does it (a backward direction runs
//!   on the time-flipped input; GRU states are stacked with `Tensor::stack`).
//! * `pycandle`: `pycandle_runtime::Lstm` / `Gru` loaded from the same tensors, exactly as
//!   generated code uses them (`forward` on the time-major input).
//!
//! Modes:
//!
//! * no arguments, or `--bench` (what `cargo bench` passes): random weights
//!   for the standard shapes, checks that both contenders agree, then times
//!   them alternately and prints medians.
//! * `--serve`: a line protocol on stdin/stdout for `pycandle.bench`,
//!   which interleaves these runs with PyTorch's in one loop:
//!   `load NAME PREFIX` reads `PREFIX.json` (the shape) and
//!   `PREFIX.safetensors` (PyTorch's parameter names plus `input` and
//!   `output`) and answers with both contenders' errors against `output`
//!   (and the recurrent kernels' path);
//!   `run NAME CONTENDER` answers with the seconds and peak heap bytes of one
//!   forward; `drop NAME` frees a shape; `quit` ends.
//! * `--loop PREFIX CONTENDER N`: `N` forwards of one contender and their
//!   median time, for profilers.
//! * `--paths [ROUNDS]`: PyCandle on every recurrent kernel path the CPU has
//!   (AVX-512, AVX2, portable), interleaved, as ratios to the first. A
//!   contender `pycandle@PATH` (`PATH` as `PYCANDLE_KERNEL` takes it) runs
//!   PyCandle on that path in the other modes too.
//! * `--mem PREFIX CONTENDER`: one forward in this fresh process, reporting
//!   the resident-set high-water mark (Linux `/proc/self/status`, reset just
//!   before the forward) next to the resident size before it.
//!
//! The thread count is Candle's (`RAYON_NUM_THREADS`, else all cores), for
//! the Candle matmuls and the kernels alike.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use candle_core::{bail, DType, Device, Result, Tensor};
use candle_nn::rnn::{Direction, GRUConfig, LSTMConfig, GRU, LSTM, RNN};
use candle_nn::VarBuilder;
use serde::Deserialize;

use pycandle_runtime::kernel;

// ---------------------------------------------------------------------------
// Heap accounting

/// The system allocator, counting live bytes and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` once: `(seconds, peak heap bytes above the level before)`.
fn measure<R>(f: impl FnOnce() -> Result<R>) -> Result<(f64, usize)> {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let start = Instant::now();
    let out = f()?;
    let secs = start.elapsed().as_secs_f64();
    drop(out);
    Ok((secs, PEAK.load(Ordering::Relaxed).saturating_sub(before)))
}

// ---------------------------------------------------------------------------
// Models

/// One benchmark shape, as `pycandle.bench` writes it.
#[derive(Debug, Clone, Deserialize)]
struct Spec {
    name: String,
    /// `"lstm"` or `"gru"`.
    kind: String,
    input_size: usize,
    hidden_size: usize,
    num_layers: usize,
    bidirectional: bool,
    steps: usize,
    batch: usize,
}

impl Spec {
    fn is_lstm(&self) -> bool {
        self.kind == "lstm"
    }

    fn gates(&self) -> usize {
        if self.is_lstm() {
            4
        } else {
            3
        }
    }

    fn dirs(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    fn layer_input(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input_size
        } else {
            self.dirs() * self.hidden_size
        }
    }

    fn suffix(dir: usize) -> &'static str {
        if dir == 1 {
            "_reverse"
        } else {
            ""
        }
    }
}

/// The shapes `cargo bench` runs on its own (`pycandle/bench/layers.py` has the
/// same list).
fn standard_specs() -> Vec<Spec> {
    let spec = |name: &str, kind: &str, input, hidden, layers, bidirectional, steps, batch| Spec {
        name: name.into(),
        kind: kind.into(),
        input_size: input,
        hidden_size: hidden,
        num_layers: layers,
        bidirectional,
        steps,
        batch,
    };
    vec![
        spec("lstm3x256_b1", "lstm", 40, 256, 3, false, 160, 1),
        spec("lstm3x256_b10", "lstm", 40, 256, 3, false, 160, 10),
        spec("bilstm2x512_b16", "lstm", 512, 512, 2, true, 400, 16),
        spec("bigru2x512_b16", "gru", 512, 512, 2, true, 400, 16),
    ]
}

/// Random parameters under PyTorch's names (uniform in `±1/sqrt(H)`, like
/// PyTorch's initialisation) and a random `(T, B, I)` input.
fn random_model(spec: &Spec, dev: &Device) -> Result<HashMap<String, Tensor>> {
    let h = spec.hidden_size;
    let k = 1.0 / (h as f32).sqrt();
    let mut ts = HashMap::new();
    for layer in 0..spec.num_layers {
        for dir in 0..spec.dirs() {
            let s = Spec::suffix(dir);
            let g = spec.gates() * h;
            let shapes = [
                ("weight_ih", vec![g, spec.layer_input(layer)]),
                ("weight_hh", vec![g, h]),
                ("bias_ih", vec![g]),
                ("bias_hh", vec![g]),
            ];
            for (base, shape) in shapes {
                ts.insert(
                    format!("{base}_l{layer}{s}"),
                    Tensor::rand(-k, k, shape, dev)?,
                );
            }
        }
    }
    ts.insert(
        "input".into(),
        Tensor::randn(0f32, 1.0, (spec.steps, spec.batch, spec.input_size), dev)?,
    );
    Ok(ts)
}

/// Candle's own layers, stacked like `EncodecLSTM`.
enum BaselineLayer {
    Lstm(LSTM, Option<LSTM>),
    Gru(GRU, Option<GRU>),
}

struct Baseline {
    layers: Vec<BaselineLayer>,
}

impl Baseline {
    fn load(spec: &Spec, ts: &HashMap<String, Tensor>, dev: &Device) -> Result<Self> {
        let h = spec.hidden_size;
        let mut layers = Vec::new();
        for layer in 0..spec.num_layers {
            let in_dim = spec.layer_input(layer);
            if spec.is_lstm() {
                let vb = VarBuilder::from_tensors(ts.clone(), DType::F32, dev);
                let make = |direction| {
                    let cfg = LSTMConfig {
                        layer_idx: layer,
                        direction,
                        ..Default::default()
                    };
                    candle_nn::lstm(in_dim, h, cfg, vb.clone())
                };
                let bwd = spec
                    .bidirectional
                    .then(|| make(Direction::Backward))
                    .transpose()?;
                layers.push(BaselineLayer::Lstm(make(Direction::Forward)?, bwd));
            } else {
                // `candle_nn::gru` only reads the names of layer 0, forward.
                let make = |dir: usize| {
                    let s = Spec::suffix(dir);
                    let renamed = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
                        .iter()
                        .map(|base| {
                            let t = ts[&format!("{base}_l{layer}{s}")].clone();
                            (format!("{base}_l0"), t)
                        })
                        .collect();
                    let vb = VarBuilder::from_tensors(renamed, DType::F32, dev);
                    candle_nn::gru(in_dim, h, GRUConfig::default(), vb)
                };
                let bwd = spec.bidirectional.then(|| make(1)).transpose()?;
                layers.push(BaselineLayer::Gru(make(0)?, bwd));
            }
        }
        Ok(Self { layers })
    }

    /// `(T, B, I)` to `(T, B, D * H)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        fn lstm(l: &LSTM, x: &Tensor) -> Result<Tensor> {
            let states = l.seq(x)?;
            l.states_to_tensor(&states)
        }
        fn gru(l: &GRU, x: &Tensor) -> Result<Tensor> {
            let states = l.seq(x)?;
            let hs: Vec<Tensor> = states.into_iter().map(|s| s.h).collect();
            Tensor::stack(&hs, 1)
        }
        let mut x = x.transpose(0, 1)?.contiguous()?; // (B, T, F)
        for layer in &self.layers {
            let (fwd, bwd) = match layer {
                BaselineLayer::Lstm(f, b) => (
                    lstm(f, &x)?,
                    b.as_ref().map(|b| lstm(b, &x.flip(&[1])?)).transpose()?,
                ),
                BaselineLayer::Gru(f, b) => (
                    gru(f, &x)?,
                    b.as_ref().map(|b| gru(b, &x.flip(&[1])?)).transpose()?,
                ),
            };
            x = match bwd {
                Some(bwd) => Tensor::cat(&[fwd, bwd.flip(&[1])?], 2)?,
                None => fwd,
            };
        }
        x.transpose(0, 1)?.contiguous()
    }
}

/// PyCandle's layers, as generated code uses them.
enum PyCandle {
    Lstm(pycandle_runtime::Lstm),
    Gru(pycandle_runtime::Gru),
}

impl PyCandle {
    fn load(spec: &Spec, ts: &HashMap<String, Tensor>, dev: &Device) -> Result<Self> {
        let vb = VarBuilder::from_tensors(ts.clone(), DType::F32, dev);
        Ok(if spec.is_lstm() {
            let cfg = pycandle_runtime::LstmConfig {
                num_layers: spec.num_layers,
                bidirectional: spec.bidirectional,
                ..pycandle_runtime::LstmConfig::new(spec.input_size, spec.hidden_size)
            };
            Self::Lstm(pycandle_runtime::Lstm::load(cfg, vb)?)
        } else {
            let cfg = pycandle_runtime::GruConfig {
                num_layers: spec.num_layers,
                bidirectional: spec.bidirectional,
                ..pycandle_runtime::GruConfig::new(spec.input_size, spec.hidden_size)
            };
            Self::Gru(pycandle_runtime::Gru::load(cfg, vb)?)
        })
    }

    /// `(T, B, I)` to `(T, B, D * H)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Lstm(l) => Ok(l.forward(x, None)?.0),
            Self::Gru(g) => Ok(g.forward(x, None)?.0),
        }
    }
}

/// Both contenders of one shape, with its input.
struct Loaded {
    spec: Spec,
    input: Tensor,
    expected: Option<Tensor>,
    baseline: Baseline,
    pycandle: PyCandle,
}

impl Loaded {
    fn new(spec: Spec, ts: HashMap<String, Tensor>, dev: &Device) -> Result<Self> {
        let input = ts["input"].clone();
        let expected = ts.get("output").cloned();
        let baseline = Baseline::load(&spec, &ts, dev)?;
        let pycandle = PyCandle::load(&spec, &ts, dev)?;
        Ok(Self {
            spec,
            input,
            expected,
            baseline,
            pycandle,
        })
    }

    fn from_files(prefix: &str, dev: &Device) -> Result<Self> {
        let spec: Spec = serde_json::from_str(&std::fs::read_to_string(format!("{prefix}.json"))?)
            .map_err(candle_core::Error::wrap)?;
        let ts = candle_core::safetensors::load(format!("{prefix}.safetensors"), dev)?;
        Self::new(spec, ts, dev)
    }

    fn run(&self, contender: &str) -> Result<Tensor> {
        match contender.split_once('@') {
            None if contender == "pycandle" => self.pycandle.forward(&self.input),
            None if contender == "baseline" => self.baseline.forward(&self.input),
            Some(("pycandle", path)) => {
                let path = kernel::kernel_path_for(Some(path))
                    .map_err(candle_core::Error::msg)?
                    .unwrap_or_else(kernel::kernel_path);
                kernel::with_kernel_path(path, || self.pycandle.forward(&self.input))
                    .map_err(candle_core::Error::msg)?
            }
            _ => bail!(
                "unknown contender {contender:?} (expected pycandle, pycandle@PATH or baseline)"
            ),
        }
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

// ---------------------------------------------------------------------------
// Modes

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// `cargo bench`: random weights, baseline against PyCandle.
fn standalone() -> Result<()> {
    let dev = Device::Cpu;
    let threads = kernel::default_threads();
    println!(
        "PyCandle vs candle-nn, f32, {threads} threads (PyTorch: run python -m pycandle.bench)"
    );
    println!(
        "{:<18} {:>12} {:>12} {:>16} {:>11}",
        "shape", "pycandle ms", "baseline ms", "baseline/pycandle", "max |diff|"
    );
    for spec in standard_specs() {
        let ts = random_model(&spec, &dev)?;
        let m = Loaded::new(spec, ts, &dev)?;
        let diff = max_abs_diff(&m.run("pycandle")?, &m.run("baseline")?)?;
        let big = m.spec.steps * m.spec.batch * m.spec.hidden_size > 1_000_000;
        let rounds = if big { 3 } else { 15 };
        let (mut k, mut b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let tk = measure(|| m.run("pycandle"))?.0;
            let tb = measure(|| m.run("baseline"))?.0;
            k.push(tk);
            b.push(tb);
            ratios.push(tb / tk);
        }
        println!(
            "{:<18} {:>12.2} {:>12.2} {:>16.2} {:>11.2e}",
            m.spec.name,
            median(&mut k) * 1e3,
            median(&mut b) * 1e3,
            median(&mut ratios),
            diff
        );
    }
    Ok(())
}

/// The shapes of `--paths`: the standard ones, and batch 1 and 4 with GRUs
/// and other hidden sizes, where the kernel paths differ most.
fn path_specs() -> Vec<Spec> {
    let spec = |name: &str, kind: &str, input, hidden, layers, bidirectional, steps, batch| Spec {
        name: name.into(),
        kind: kind.into(),
        input_size: input,
        hidden_size: hidden,
        num_layers: layers,
        bidirectional,
        steps,
        batch,
    };
    let mut specs = standard_specs();
    specs.extend([
        spec("lstm1x64_b1", "lstm", 40, 64, 1, false, 400, 1),
        spec("gru3x256_b1", "gru", 40, 256, 3, false, 160, 1),
        spec("lstm2x512_b1", "lstm", 80, 512, 2, false, 200, 1),
        spec("gru2x512_b1", "gru", 80, 512, 2, false, 200, 1),
        spec("bilstm2x256_b4", "lstm", 80, 256, 2, true, 200, 4),
        spec("bigru2x256_b4", "gru", 80, 256, 2, true, 200, 4),
    ]);
    specs
}

/// `--paths [ROUNDS]`: PyCandle on every kernel path this CPU has,
/// interleaved round by round, each path's median time as a ratio to the
/// first's (the fastest the CPU has, by default selected), with the median
/// of the per-round ratios (less sensitive to a busy machine).
fn paths(rounds: usize) -> Result<()> {
    let dev = Device::Cpu;
    let threads = kernel::default_threads();
    let paths: Vec<kernel::KernelPath> = kernel::KernelPath::available().collect();
    let first = paths[0];
    println!("PyCandle per kernel path, f32, {threads} threads, {rounds} rounds");
    print!("{:<18} {:>10}", "shape", format!("{first} ms"));
    for p in &paths[1..] {
        print!(" {:>20}", format!("{p}/{first} (rounds)"));
    }
    println!(" {:>11}", "max |diff|");
    for spec in path_specs() {
        let ts = random_model(&spec, &dev)?;
        let m = Loaded::new(spec, ts, &dev)?;
        let run = |p: kernel::KernelPath| m.run(&format!("pycandle@{p}"));
        let want = run(first)?;
        let mut diff = 0f32;
        for &p in &paths[1..] {
            diff = diff.max(max_abs_diff(&run(p)?, &want)?);
        }
        let mut times = vec![Vec::new(); paths.len()];
        let mut ratios = vec![Vec::new(); paths.len()];
        for _ in 0..rounds {
            for (i, &p) in paths.iter().enumerate() {
                times[i].push(measure(|| run(p))?.0);
            }
            for i in 1..paths.len() {
                let r = times[i].last().unwrap() / times[0].last().unwrap();
                ratios[i].push(r);
            }
        }
        let base = median(&mut times[0]);
        print!("{:<18} {:>10.2}", m.spec.name, base * 1e3);
        for i in 1..paths.len() {
            let of_medians = median(&mut times[i]) / base;
            let cell = format!("{of_medians:.3} ({:.3})", median(&mut ratios[i]));
            print!(" {cell:>20}");
        }
        println!(" {diff:>11.2e}");
    }
    Ok(())
}

/// `--serve`: the line protocol for `pycandle.bench`.
fn serve() -> Result<()> {
    let dev = Device::Cpu;
    let mut models: HashMap<String, Loaded> = HashMap::new();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["load", name, prefix] => {
                let m = Loaded::from_files(prefix, &dev)?;
                let (k, b) = (m.run("pycandle")?, m.run("baseline")?);
                let err = |t: &Tensor| -> Result<serde_json::Value> {
                    Ok(match &m.expected {
                        Some(e) => max_abs_diff(t, e)?.into(),
                        None => serde_json::Value::Null,
                    })
                };
                let reply = serde_json::json!({
                    "pycandle_err": err(&k)?,
                    "baseline_err": err(&b)?,
                    "pycandle_vs_baseline": max_abs_diff(&k, &b)?,
                    "threads": kernel::default_threads(),
                    "kernel_path": pycandle_runtime::example::kernel_name(),
                });
                models.insert(name.to_string(), m);
                reply
            }
            ["run", name, contender] => {
                let Some(m) = models.get(*name) else {
                    bail!("{name} is not loaded")
                };
                let (seconds, heap) = measure(|| m.run(contender))?;
                serde_json::json!({ "seconds": seconds, "heap_peak": heap })
            }
            ["drop", name] => {
                models.remove(*name);
                serde_json::json!({ "dropped": name })
            }
            ["quit"] => break,
            _ => bail!("unknown command {line:?}"),
        };
        writeln!(stdout, "{reply}")?;
        stdout.flush()?;
    }
    Ok(())
}

/// A field of `/proc/self/status` in kB (Linux), 0 elsewhere.
fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `--mem PREFIX CONTENDER`: peak memory of one forward in a fresh process.
fn memory(prefix: &str, contender: &str) -> Result<()> {
    let m = Loaded::from_files(prefix, &Device::Cpu)?;
    // Writing 5 to clear_refs resets the high-water mark to the current size.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let rss_before = proc_status_kb("VmRSS");
    let (seconds, heap) = measure(|| m.run(contender))?;
    let reply = serde_json::json!({
        "rss_before_kb": rss_before,
        "hwm_kb": proc_status_kb("VmHWM"),
        "hwm_reset": reset,
        "heap_peak": heap,
        "seconds": seconds,
    });
    println!("{reply}");
    Ok(())
}

/// `--loop PREFIX CONTENDER N`: repeated forwards of one contender.
fn repeat(prefix: &str, contender: &str, n: &str) -> Result<()> {
    let n: usize = n.parse().map_err(candle_core::Error::wrap)?;
    let m = Loaded::from_files(prefix, &Device::Cpu)?;
    let mut times = (0..n.max(1))
        .map(|_| measure(|| m.run(contender)).map(|(s, _)| s))
        .collect::<Result<Vec<_>>>()?;
    println!(
        "{contender}: median {:.3} ms over {n} runs",
        median(&mut times) * 1e3
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] | ["--bench", ..] => standalone(),
        ["--serve"] => serve(),
        // `cargo bench -- --paths` appends `--bench`.
        ["--paths", rest @ ..] => paths(rest.iter().find_map(|a| a.parse().ok()).unwrap_or(15)),
        ["--mem", prefix, contender] => memory(prefix, contender),
        ["--loop", prefix, contender, n] => repeat(prefix, contender, n),
        _ => bail!(
            "usage: recurrent [--bench | --serve | --paths [ROUNDS] | --mem PREFIX CONTENDER \
             | --loop PREFIX CONTENDER N]"
        ),
    }
}
