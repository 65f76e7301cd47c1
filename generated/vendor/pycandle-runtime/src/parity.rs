//! Parity checking against tensors recorded from PyTorch.
//!
//! `pycandle record` runs the original PyTorch model and stores inputs and
//! outputs (per layer and end to end) in a safetensors file, read back here
//! with [`Golden`] ([`ParityCase`] opens a model's weights and one trace case's
//! goldens). A generated parity test feeds those inputs to the Candle
//! port and records every comparison in a [`ParityReport`], whose
//! [`finish`](ParityReport::finish) prints a table, writes a JSON report and
//! fails the test when any comparison is out of tolerance.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use candle_core::{bail, DType, Device, Error, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Serialize, Serializer};

/// Environment variable naming the directory where [`ParityReport::finish`]
/// writes `{model}.case{case}.json`.
pub const REPORT_DIR_ENV: &str = "PYCANDLE_REPORT_DIR";

/// Environment variable naming the artifacts directory `pycandle parity` was asked to check:
/// [`ParityCase::open`] refuses to run when its compiled-in artifacts are elsewhere (a test
/// binary that cargo reused from another project's crate of the same package name).
pub const ARTIFACTS_ENV: &str = "PYCANDLE_PARITY_ARTIFACTS";

/// Prefix of the lines a parity test prints (to stderr, captured by libtest) for an error the
/// user must act on; `pycandle parity` reports them as they are.
pub const ERROR_PREFIX: &str = "pycandle-error: ";

/// Prints `message` for `pycandle parity` and returns it as an error.
fn user_error<T>(message: String) -> Result<T> {
    eprintln!("{ERROR_PREFIX}{message}");
    Err(Error::Msg(message))
}

/// Golden tensors recorded from PyTorch (a safetensors file).
#[derive(Debug, Clone)]
pub struct Golden {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Golden {
    /// Loads every tensor of the safetensors file at `path` onto `device`.
    ///
    /// A missing file is reported with its path and a hint to record the
    /// goldens first.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return user_error(format!(
                "{} not found: run `pycandle record` first",
                path.display()
            ));
        }
        let tensors = match candle_core::safetensors::load(path, device) {
            Ok(tensors) => tensors,
            Err(e) => {
                let reason = e.to_string();
                let reason = reason.lines().next().unwrap_or("").trim();
                return user_error(format!(
                    "{} is not a readable safetensors file ({reason}): it is damaged or cut \
                     short; run `pycandle record --force` to record it again",
                    path.display()
                ));
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// The tensor stored under `key`; an error naming the key and the file if
    /// there is none.
    pub fn get(&self, key: &str) -> Result<Tensor> {
        match self.tensors.get(key) {
            Some(t) => Ok(t.clone()),
            None => bail!(
                "golden tensor `{key}` not found in {} ({} tensors recorded)",
                self.path.display(),
                self.tensors.len()
            ),
        }
    }

    /// Whether a tensor is stored under `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// The recorded keys, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    /// All recorded tensors by key.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// Consumes the goldens and returns the tensors by key, e.g. to build a
    /// `VarBuilder` with `VarBuilder::from_tensors` from a weights file.
    pub fn into_tensors(self) -> HashMap<String, Tensor> {
        self.tensors
    }

    /// The file the goldens were loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What a generated parity test needs for one trace case of a recorded model: the weights
/// as a `VarBuilder`, the case's golden tensors and an empty report.
pub struct ParityCase {
    pub vb: VarBuilder<'static>,
    pub golden: CaseGolden,
    pub report: ParityReport,
}

impl ParityCase {
    /// Loads `weights.safetensors` (as `dtype`) and `golden.safetensors` from the model's
    /// artifacts directory, on the CPU.
    pub fn open(
        artifacts: impl AsRef<Path>,
        model: &str,
        case: usize,
        dtype: DType,
        atol: f64,
        rtol: f64,
    ) -> Result<Self> {
        let device = Device::Cpu;
        let dir = artifacts.as_ref();
        check_identity(dir, model)?;
        let weights = Golden::load(dir.join("weights.safetensors"), &device)?;
        let golden = Golden::load(dir.join("golden.safetensors"), &device)?;
        Ok(Self {
            vb: VarBuilder::from_tensors(weights.into_tensors(), dtype, &device),
            golden: CaseGolden { golden, case },
            report: ParityReport::new(model, case, atol, rtol),
        })
    }
}

/// When `pycandle parity` names the artifacts it was asked to check ([`ARTIFACTS_ENV`]), the
/// ones this test was compiled to read must be those: otherwise cargo ran a test binary built
/// from another project's crate, whose results would say nothing about this one.
fn check_identity(dir: &Path, model: &str) -> Result<()> {
    let Some(root) = std::env::var_os(ARTIFACTS_ENV) else {
        return Ok(());
    };
    let expected = Path::new(&root).join(model);
    let canonical = |p: &Path| p.parent().and_then(|d| d.canonicalize().ok());
    let same = match (canonical(dir), canonical(&expected)) {
        (Some(a), Some(b)) => a == b && dir.file_name() == expected.file_name(),
        _ => dir == expected,
    };
    if same {
        return Ok(());
    }
    user_error(format!(
        "this parity test binary was built to read {}, not {}: if `artifacts:` changed in \
         models.yaml, run `pycandle codegen`; otherwise cargo reused a test binary built from \
         another project's crate (crates with the same package name share CARGO_TARGET_DIR): \
         give this crate a package name of its own in its Cargo.toml, or delete the Cargo.toml \
         and run `pycandle codegen` for a new one, then run parity again",
        dir.display(),
        expected.display()
    ))
}

/// The golden tensors of one trace case, by their key without the `c{case}.` prefix.
pub struct CaseGolden {
    golden: Golden,
    case: usize,
}

impl CaseGolden {
    /// The tensor recorded under `key` for this case.
    pub fn get(&self, key: &str) -> Result<Tensor> {
        self.golden.get(&format!("c{}.{key}", self.case))
    }
}

/// One comparison of a [`ParityReport`].
///
/// `max_abs`, `max_rel` and `cosine` may be non-finite in memory (infinite
/// for a shape mismatch or NaN in the actual values, NaN when the cosine is
/// undefined); JSON has no such numbers, so they are serialised as `null`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParityEntry {
    /// `"layer"` (a layer fed golden inputs in isolation), `"stream"` (in chunks), `"block"`
    /// (a user module or container on its recorded inputs) or `"model"` (end to end).
    pub kind: String,
    /// The layer (module path) compared.
    pub layer: String,
    /// Which output of the layer.
    pub output: String,
    /// Shape of the actual (Candle) tensor.
    pub shape: Vec<usize>,
    /// Shape of the expected (PyTorch) tensor.
    pub expected_shape: Vec<usize>,
    /// Number of elements of the actual tensor.
    pub numel: usize,
    /// Number of elements out of tolerance (all of them on a shape mismatch).
    pub mismatched: usize,
    /// Largest `|actual - expected|`.
    #[serde(serialize_with = "finite_or_null")]
    pub max_abs: f64,
    /// Largest `|actual - expected| / |expected|` over elements with
    /// `|expected| > 0`; 0 when there are none.
    #[serde(serialize_with = "finite_or_null")]
    pub max_rel: f64,
    /// Cosine similarity of the flattened tensors; 1 when both are all zero.
    #[serde(serialize_with = "finite_or_null")]
    pub cosine: f64,
    /// Whether the shapes agree and every element is within tolerance.
    pub pass: bool,
    /// Why the entry failed, when the numbers alone do not say it.
    pub note: Option<String>,
}

/// Serialises a non-finite float as `null`, since JSON cannot represent it.
fn finite_or_null<S: Serializer>(
    value: &f64,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    if value.is_finite() {
        serializer.serialize_f64(*value)
    } else {
        serializer.serialize_none()
    }
}

#[derive(Serialize)]
struct ReportJson<'a> {
    model: &'a str,
    case: usize,
    #[serde(serialize_with = "finite_or_null")]
    atol: f64,
    #[serde(serialize_with = "finite_or_null")]
    rtol: f64,
    entries: &'a [ParityEntry],
}

/// Accumulates comparisons between Candle outputs and PyTorch goldens.
///
/// Elements pass when `|actual - expected| <= atol + rtol * |expected|`
/// (computed in f64), as in `torch.allclose`.
#[derive(Debug, Clone)]
pub struct ParityReport {
    model: String,
    case: usize,
    atol: f64,
    rtol: f64,
    entries: Vec<ParityEntry>,
    output_dir: Option<PathBuf>,
}

impl ParityReport {
    /// An empty report for test case `case` of `model`.
    pub fn new(model: &str, case: usize, atol: f64, rtol: f64) -> Self {
        Self {
            model: model.to_string(),
            case,
            atol,
            rtol,
            entries: Vec::new(),
            output_dir: None,
        }
    }

    /// Writes the JSON report to `dir` instead of `$PYCANDLE_REPORT_DIR`.
    pub fn with_output_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.output_dir = Some(dir.into());
        self
    }

    /// Compares `actual` with `expected` element-wise and records the result.
    ///
    /// `kind` is `"layer"` (a layer fed golden inputs), `"stream"` (a recurrent layer run
    /// in chunks, carrying its state), `"block"` (a user module or container fed the inputs of
    /// its recorded call) or `"model"` (end to end). A shape or value mismatch is recorded
    /// as a failing entry, not returned as an error; errors come only from
    /// tensor operations (or an unknown `kind`).
    pub fn check(
        &mut self,
        kind: &str,
        layer: &str,
        output: &str,
        actual: &Tensor,
        expected: &Tensor,
    ) -> Result<()> {
        if !matches!(kind, "layer" | "stream" | "block" | "model") {
            bail!(
                "parity check kind must be \"layer\", \"stream\", \"block\" or \"model\", \
                 got {kind:?}"
            );
        }
        let shape = actual.dims().to_vec();
        let expected_shape = expected.dims().to_vec();
        let numel = actual.elem_count();
        let mut entry = ParityEntry {
            kind: kind.to_string(),
            layer: layer.to_string(),
            output: output.to_string(),
            shape,
            expected_shape,
            numel,
            mismatched: 0,
            max_abs: 0.0,
            max_rel: 0.0,
            cosine: 1.0,
            pass: true,
            note: None,
        };
        if entry.shape != entry.expected_shape {
            entry.mismatched = numel.max(expected.elem_count());
            entry.max_abs = f64::INFINITY;
            entry.max_rel = f64::INFINITY;
            entry.cosine = f64::NAN;
            entry.pass = false;
            entry.note = Some(format!(
                "shape mismatch: actual {:?} vs expected {:?}",
                entry.shape, entry.expected_shape
            ));
            self.entries.push(entry);
            return Ok(());
        }

        let a = to_f64_vec(actual)?;
        let e = to_f64_vec(expected)?;
        let stats = compare(&a, &e, self.atol, self.rtol);
        entry.mismatched = stats.mismatched;
        entry.max_abs = stats.max_abs;
        entry.max_rel = stats.max_rel;
        entry.cosine = stats.cosine;
        entry.pass = stats.mismatched == 0;
        if stats.nan_actual > 0 {
            entry.note = Some(format!("{} NaN value(s) in actual", stats.nan_actual));
        }
        if actual.dtype() != expected.dtype() {
            let dtypes = format!(
                "dtype differs: actual {:?} vs expected {:?}",
                actual.dtype(),
                expected.dtype()
            );
            entry.note = Some(match entry.note.take() {
                Some(n) => format!("{n}; {dtypes}"),
                None => dtypes,
            });
        }
        self.entries.push(entry);
        Ok(())
    }

    /// The entries recorded so far, in check order.
    pub fn entries(&self) -> &[ParityEntry] {
        &self.entries
    }

    /// Number of failing entries.
    pub fn failed_count(&self) -> usize {
        self.entries.iter().filter(|e| !e.pass).count()
    }

    /// The model name the report is for.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The test case index the report is for.
    pub fn case(&self) -> usize {
        self.case
    }

    /// The report as pretty-printed JSON (non-finite numbers as `null`).
    pub fn to_json(&self) -> Result<String> {
        let doc = ReportJson {
            model: &self.model,
            case: self.case,
            atol: self.atol,
            rtol: self.rtol,
            entries: &self.entries,
        };
        serde_json::to_string_pretty(&doc).map_err(Error::wrap)
    }

    /// Writes `{model}.case{case}.json` into `dir` (created if needed) via a
    /// temporary file renamed into place, and returns the final path.
    pub fn write_json(&self, dir: &Path) -> Result<PathBuf> {
        if self.model.is_empty() || self.model.contains(['/', '\\']) {
            bail!(
                "parity report model name {:?} cannot be used as a file name",
                self.model
            );
        }
        std::fs::create_dir_all(dir)?;
        let file_name = format!("{}.case{}.json", self.model, self.case);
        let path = dir.join(&file_name);
        let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
        let mut json = self.to_json()?;
        json.push('\n');
        std::fs::write(&tmp, json)?;
        if let Err(err) = std::fs::rename(&tmp, &path) {
            // Best effort: do not leave the temporary file behind.
            let _ = std::fs::remove_file(&tmp);
            return Err(err.into());
        }
        Ok(path)
    }

    /// A compact, column-aligned text table of the entries.
    pub fn render_table(&self) -> String {
        let header = [
            "status", "kind", "layer", "output", "shape", "max_abs", "max_rel", "cosine",
            "mismatch",
        ];
        let rows: Vec<[String; 9]> = self
            .entries
            .iter()
            .map(|e| {
                [
                    if e.pass { "ok" } else { "FAIL" }.to_string(),
                    e.kind.clone(),
                    e.layer.clone(),
                    e.output.clone(),
                    if e.shape == e.expected_shape {
                        format!("{:?}", e.shape)
                    } else {
                        format!("{:?}!={:?}", e.shape, e.expected_shape)
                    },
                    fmt_num(e.max_abs),
                    fmt_num(e.max_rel),
                    format!("{:.6}", e.cosine),
                    format!("{}/{}", e.mismatched, e.numel),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }

        let mut out = String::new();
        let _ = writeln!(
            out,
            "parity {} case {} (atol {:e}, rtol {:e}): {} entries, {} failed",
            self.model,
            self.case,
            self.atol,
            self.rtol,
            self.entries.len(),
            self.failed_count()
        );
        let mut push_row = |cells: &[&str]| {
            let line: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            let _ = writeln!(out, "  {}", line.join("  ").trim_end());
        };
        push_row(&header);
        for row in &rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            push_row(&cells);
        }
        out
    }

    /// Ends the check: writes the JSON report to the directory given with
    /// [`with_output_dir`](Self::with_output_dir), or else to
    /// `$PYCANDLE_REPORT_DIR` when that is set; prints the table to stdout;
    /// and returns an error if any entry failed, naming the first failing
    /// entry in check order and the number of failures. A report with no
    /// entries is an error too, since it proves nothing.
    pub fn finish(self) -> Result<()> {
        let dir = self.output_dir.clone().or_else(|| {
            std::env::var_os(REPORT_DIR_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        if let Some(dir) = dir {
            self.write_json(&dir)?;
        }
        print!("{}", self.render_table());

        if self.entries.is_empty() {
            bail!(
                "parity {} case {}: no comparisons were recorded",
                self.model,
                self.case
            );
        }
        let failed = self.failed_count();
        if let Some(first) = self.entries.iter().find(|e| !e.pass) {
            let note = first
                .note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            bail!(
                "parity {} case {}: {failed} of {} entries failed; first: kind={} layer={} output={} max_abs={} max_rel={}{note}",
                self.model,
                self.case,
                self.entries.len(),
                first.kind,
                first.layer,
                first.output,
                fmt_num(first.max_abs),
                fmt_num(first.max_rel),
            );
        }
        Ok(())
    }
}

fn to_f64_vec(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

fn fmt_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3e}")
    } else {
        format!("{v}")
    }
}

struct Stats {
    mismatched: usize,
    nan_actual: usize,
    max_abs: f64,
    max_rel: f64,
    cosine: f64,
}

/// Element-wise statistics of `actual` against `expected` (same length).
fn compare(actual: &[f64], expected: &[f64], atol: f64, rtol: f64) -> Stats {
    let mut stats = Stats {
        mismatched: 0,
        nan_actual: 0,
        max_abs: 0.0,
        max_rel: 0.0,
        cosine: 1.0,
    };
    let (mut dot, mut norm_a, mut norm_e) = (0.0f64, 0.0f64, 0.0f64);
    for (&a, &e) in actual.iter().zip(expected) {
        if a.is_nan() {
            stats.nan_actual += 1;
        }
        // Equal values (infinities included) match; NaN never does.
        let diff = if a == e {
            0.0
        } else {
            let d = (a - e).abs();
            if d.is_nan() {
                f64::INFINITY
            } else {
                d
            }
        };
        if !(a == e || diff <= atol + rtol * e.abs()) {
            stats.mismatched += 1;
        }
        stats.max_abs = stats.max_abs.max(diff);
        let mag = e.abs();
        if mag > 0.0 {
            let rel = if diff == 0.0 { 0.0 } else { diff / mag };
            stats.max_rel = stats.max_rel.max(rel);
        }
        dot += a * e;
        norm_a += a * a;
        norm_e += e * e;
    }
    stats.cosine = if norm_a == 0.0 && norm_e == 0.0 {
        1.0
    } else if norm_a == 0.0 || norm_e == 0.0 {
        0.0
    } else {
        dot / (norm_a.sqrt() * norm_e.sqrt())
    };
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_counts_tolerance_and_nan() {
        let s = compare(&[1.0, 2.0, f64::NAN], &[1.0, 2.1, 3.0], 1e-3, 0.0);
        assert_eq!(s.mismatched, 2);
        assert_eq!(s.nan_actual, 1);
        assert!(s.max_abs.is_infinite());
        assert!(s.cosine.is_nan());
    }

    #[test]
    fn compare_all_zero_cosine_is_one() {
        let s = compare(&[0.0, 0.0], &[0.0, 0.0], 0.0, 0.0);
        assert_eq!(s.mismatched, 0);
        assert_eq!(s.cosine, 1.0);
        assert_eq!(s.max_rel, 0.0);
    }

    #[test]
    fn compare_rtol_scales_with_expected() {
        // |1010 - 1000| = 10 <= 0 + 0.01 * 1000.
        let s = compare(&[1010.0], &[1000.0], 0.0, 1e-2);
        assert_eq!(s.mismatched, 0);
        assert!((s.max_rel - 1e-2).abs() < 1e-12);
        let s = compare(&[1011.0], &[1000.0], 0.0, 1e-2);
        assert_eq!(s.mismatched, 1);
    }

    #[test]
    fn non_finite_serialises_as_null() {
        let report = ParityReport::new("m", 0, 1e-5, 1e-4);
        let mut entry = ParityEntry {
            kind: "model".into(),
            layer: "l".into(),
            output: "o".into(),
            shape: vec![1],
            expected_shape: vec![1],
            numel: 1,
            mismatched: 1,
            max_abs: f64::INFINITY,
            max_rel: f64::NAN,
            cosine: 0.5,
            pass: false,
            note: None,
        };
        let mut report = report;
        report.entries.push(entry.clone());
        let v: serde_json::Value = serde_json::from_str(&report.to_json().unwrap()).unwrap();
        assert!(v["entries"][0]["max_abs"].is_null());
        assert!(v["entries"][0]["max_rel"].is_null());
        assert_eq!(v["entries"][0]["cosine"], 0.5);
        entry.max_abs = 0.25;
        assert_eq!(serde_json::to_value(&entry).unwrap()["max_abs"], 0.25);
    }
}
