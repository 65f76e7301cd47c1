//! `Golden` loading and `ParityReport` accounting, JSON and verdicts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Result, Tensor};
use pycandle_runtime::{Golden, ParityCase, ParityReport};

/// A fresh, unique directory under the system temp dir.
fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "pycandle-runtime-{tag}-{}-{nanos}-{n}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn t(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape, &Device::Cpu).unwrap()
}

#[test]
fn passing_entries() -> Result<()> {
    let mut report = ParityReport::new("tiny", 0, 1e-5, 1e-4);
    let e = t(&[1.0, -2.0, 3.0, 0.0], &[2, 2]);
    report.check("layer", "enc.0", "out", &e, &e)?;
    // Within rtol: |3.0002 - 3| = 2e-4 <= 1e-5 + 1e-4 * 3.
    let a = t(&[1.0, -2.0, 3.0002, 0.0], &[2, 2]);
    report.check("model", "model", "logits", &a, &e)?;
    assert_eq!(report.failed_count(), 0);
    let entries = report.entries();
    assert_eq!(entries.len(), 2);
    assert!(entries
        .iter()
        .all(|e| e.pass && e.mismatched == 0 && e.note.is_none()));
    assert_eq!(entries[0].max_abs, 0.0);
    assert_eq!(entries[0].cosine, 1.0);
    assert!((entries[1].max_abs - 2e-4).abs() < 1e-6);
    assert!((entries[1].max_rel - 2e-4 / 3.0).abs() < 1e-6);
    assert_eq!(entries[1].numel, 4);
    let dir = temp_dir("pass");
    report.with_output_dir(&dir).finish()?;
    assert!(dir.join("tiny.case0.json").is_file());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn failing_entries_are_counted_and_first_is_named() -> Result<()> {
    let mut report = ParityReport::new("tiny", 3, 1e-5, 0.0);
    let e = t(&[1.0, 2.0, 3.0], &[3]);
    report.check("layer", "enc.0", "out", &e, &e)?;
    report.check("layer", "enc.1", "out", &t(&[1.0, 2.5, 3.1], &[3]), &e)?;
    report.check("model", "model", "logits", &t(&[0.0, 2.0, 3.0], &[3]), &e)?;
    assert_eq!(report.failed_count(), 2);
    let bad = &report.entries()[1];
    assert!(!bad.pass);
    assert_eq!(bad.mismatched, 2);
    assert!((bad.max_abs - 0.5).abs() < 1e-6);
    assert!((bad.max_rel - 0.25).abs() < 1e-6);
    assert!(bad.cosine < 1.0 && bad.cosine > 0.9);

    let msg = report.finish().unwrap_err().to_string();
    assert!(msg.contains("2 of 3 entries failed"), "{msg}");
    assert!(msg.contains("kind=layer layer=enc.1 output=out"), "{msg}");
    assert!(msg.contains("max_abs=5.000e-1"), "{msg}");
    assert!(msg.contains("max_rel=2.500e-1"), "{msg}");
    assert!(!msg.contains("layer=model"), "{msg}");
    Ok(())
}

#[test]
fn shape_mismatch_is_a_failing_entry_not_an_error() -> Result<()> {
    let mut report = ParityReport::new("tiny", 0, 1e-5, 1e-5);
    let a = t(&[1.0, 2.0, 3.0, 4.0], &[4]);
    let e = t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    report.check("layer", "proj", "out", &a, &e)?;
    let entry = &report.entries()[0];
    assert!(!entry.pass);
    assert_eq!(entry.shape, vec![4]);
    assert_eq!(entry.expected_shape, vec![2, 2]);
    assert_eq!(entry.mismatched, 4);
    assert!(entry
        .note
        .as_deref()
        .unwrap_or("")
        .contains("shape mismatch"));
    let json: serde_json::Value = serde_json::from_str(&report.to_json()?).unwrap();
    assert!(json["entries"][0]["max_abs"].is_null());
    assert!(json["entries"][0]["cosine"].is_null());
    let msg = report.finish().unwrap_err().to_string();
    assert!(
        msg.contains("layer=proj") && msg.contains("shape mismatch"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn nan_in_actual_fails() -> Result<()> {
    let mut report = ParityReport::new("tiny", 0, 1e-3, 1e-3);
    let e = t(&[1.0, 2.0], &[2]);
    report.check("model", "model", "out", &t(&[f32::NAN, 2.0], &[2]), &e)?;
    let entry = &report.entries()[0];
    assert!(!entry.pass);
    assert_eq!(entry.mismatched, 1);
    assert!(entry.max_abs.is_infinite());
    assert!(entry.note.as_deref().unwrap_or("").contains("NaN"));
    Ok(())
}

#[test]
fn comparison_is_done_in_f64_across_dtypes() -> Result<()> {
    let mut report = ParityReport::new("tiny", 0, 1e-6, 0.0);
    let a = t(&[0.5, 0.25], &[2]);
    let e = a.to_dtype(DType::F64)?;
    report.check("layer", "l", "o", &a, &e)?;
    let entry = &report.entries()[0];
    assert!(entry.pass);
    assert!(entry.note.as_deref().unwrap_or("").contains("dtype"));
    Ok(())
}

#[test]
fn unknown_kind_is_rejected() {
    let mut report = ParityReport::new("tiny", 0, 1e-5, 1e-5);
    let e = t(&[1.0], &[1]);
    assert!(report.check("module", "l", "o", &e, &e).is_err());
    assert!(report.entries().is_empty());
    for kind in ["layer", "stream", "block", "model"] {
        assert!(report.check(kind, "l", "o", &e, &e).is_ok());
    }
    assert_eq!(report.entries().len(), 4);
}

#[test]
fn empty_report_does_not_pass() {
    let dir = temp_dir("empty");
    let report = ParityReport::new("tiny", 0, 1e-5, 1e-5).with_output_dir(&dir);
    let msg = report.finish().unwrap_err().to_string();
    assert!(msg.contains("no comparisons"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn json_is_written_to_the_output_dir() -> Result<()> {
    let dir = temp_dir("json");
    let mut report = ParityReport::new("tiny_net", 2, 1e-5, 1e-4).with_output_dir(&dir);
    let e = t(&[0.0, 0.0], &[1, 2]);
    report.check("layer", "enc.0", "out", &e, &e)?;
    report.check("model", "model", "logits", &t(&[1.0, 0.0], &[1, 2]), &e)?;
    assert!(report.finish().is_err());

    let path = dir.join("tiny_net.case2.json");
    let text = std::fs::read_to_string(&path)?;
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["model"], "tiny_net");
    assert_eq!(json["case"], 2);
    assert_eq!(json["atol"], 1e-5);
    assert_eq!(json["rtol"], 1e-4);
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let first = &entries[0];
    assert_eq!(first["kind"], "layer");
    assert_eq!(first["layer"], "enc.0");
    assert_eq!(first["output"], "out");
    assert_eq!(first["shape"], serde_json::json!([1, 2]));
    assert_eq!(first["expected_shape"], serde_json::json!([1, 2]));
    assert_eq!(first["numel"], 2);
    assert_eq!(first["mismatched"], 0);
    assert_eq!(first["max_abs"], 0.0);
    assert_eq!(first["max_rel"], 0.0);
    assert_eq!(first["cosine"], 1.0); // both all zero
    assert_eq!(first["pass"], true);
    assert!(first["note"].is_null());
    let second = &entries[1];
    assert_eq!(second["pass"], false);
    assert_eq!(second["mismatched"], 1);
    assert_eq!(second["max_abs"], 1.0);
    assert_eq!(second["max_rel"], 0.0); // no element with |expected| > 0
    assert_eq!(second["cosine"], 0.0);

    // Only the final file is left behind, no temporary.
    let names: Vec<String> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    assert_eq!(names, vec!["tiny_net.case2.json".to_string()]);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn table_lists_every_entry() -> Result<()> {
    let mut report = ParityReport::new("tiny", 0, 1e-5, 1e-5);
    let e = t(&[1.0, 2.0], &[2]);
    report.check("layer", "encoder.layers.0", "out", &e, &e)?;
    report.check("model", "model", "y", &t(&[1.0, 3.0], &[2]), &e)?;
    let table = report.render_table();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].contains("2 entries, 1 failed"), "{table}");
    assert!(lines[2].trim_start().starts_with("ok") && lines[2].contains("encoder.layers.0"));
    assert!(lines[3].trim_start().starts_with("FAIL"));
    // Columns are aligned: "layer" header starts where the layer names start.
    let col = lines[1].find("layer").unwrap();
    assert_eq!(lines[2].find("encoder.layers.0"), Some(col));
    assert_eq!(&lines[3][col..col + 5], "model");
    Ok(())
}

#[test]
fn golden_round_trip_and_errors() -> Result<()> {
    let dir = temp_dir("golden");
    let path = dir.join("tiny.safetensors");
    let mut tensors = HashMap::new();
    tensors.insert("enc.0.out".to_string(), t(&[1.0, 2.0, 3.0], &[3]));
    tensors.insert("model.logits".to_string(), t(&[4.0, 5.0], &[1, 2]));
    candle_core::safetensors::save(&tensors, &path)?;

    let golden = Golden::load(&path, &Device::Cpu)?;
    assert_eq!(golden.path(), path.as_path());
    assert_eq!(golden.keys(), vec!["enc.0.out", "model.logits"]);
    assert!(golden.contains("model.logits"));
    let logits = golden.get("model.logits")?;
    assert_eq!(logits.dims(), &[1, 2]);
    assert_eq!(logits.to_vec2::<f32>()?, vec![vec![4.0, 5.0]]);

    let msg = golden.get("enc.9.out").unwrap_err().to_string();
    assert!(msg.contains("enc.9.out"), "{msg}");
    assert!(msg.contains("tiny.safetensors"), "{msg}");

    assert_eq!(golden.tensors().len(), 2);
    let all = golden.clone().into_tensors();
    assert_eq!(all["enc.0.out"].to_vec1::<f32>()?, vec![1.0, 2.0, 3.0]);

    let missing = dir.join("absent.safetensors");
    let msg = Golden::load(&missing, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("absent.safetensors"), "{msg}");
    assert!(msg.contains("run `pycandle record` first"), "{msg}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn parity_case_opens_weights_and_one_cases_goldens() -> Result<()> {
    let dir = temp_dir("case");
    let weights = HashMap::from([("proj.weight".to_string(), t(&[1.0, 2.0], &[1, 2]))]);
    candle_core::safetensors::save(&weights, dir.join("weights.safetensors"))?;
    let golden = HashMap::from([
        ("c0.x".to_string(), t(&[0.5], &[1])),
        ("c1.x".to_string(), t(&[1.5], &[1])),
    ]);
    candle_core::safetensors::save(&golden, dir.join("golden.safetensors"))?;

    let ParityCase {
        vb, golden, report, ..
    } = ParityCase::open(&dir, "tiny", 1, DType::F64, 1e-5, 1e-4)?;
    let w = vb.get((1, 2), "proj.weight")?;
    assert_eq!(w.dtype(), DType::F64);
    assert_eq!(golden.get("x")?.to_vec1::<f32>()?, vec![1.5]);
    assert!(golden.get("y").unwrap_err().to_string().contains("c1.y"));
    assert_eq!((report.model(), report.case()), ("tiny", 1));

    let empty = temp_dir("case-missing");
    let msg = ParityCase::open(&empty, "tiny", 0, DType::F32, 0.0, 0.0)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("weights.safetensors"), "{msg}");
    Ok(())
}
