//! `ParityReport::finish` honours `$PYCANDLE_REPORT_DIR`.
//!
//! Kept in its own test binary (a single test) so that setting the process
//! environment cannot race with other tests.

use candle_core::{Device, Result, Tensor};
use pycandle_runtime::parity::REPORT_DIR_ENV;
use pycandle_runtime::ParityReport;

#[test]
fn report_dir_env_var_and_override() -> Result<()> {
    let base = std::env::temp_dir().join(format!(
        "pycandle-runtime-env-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let from_env = base.join("from-env");
    let overridden = base.join("override");
    std::env::set_var(REPORT_DIR_ENV, &from_env);

    let x = Tensor::from_slice(&[1f32, 2.0], 2, &Device::Cpu)?;
    let mut report = ParityReport::new("envnet", 1, 1e-5, 1e-5);
    report.check("model", "model", "out", &x, &x)?;
    report.clone().finish()?;
    assert!(from_env.join("envnet.case1.json").is_file());

    // with_output_dir wins over the environment (the directory is created).
    report.with_output_dir(&overridden).finish()?;
    assert!(overridden.join("envnet.case1.json").is_file());

    std::env::remove_var(REPORT_DIR_ENV);
    std::fs::remove_dir_all(&base)?;
    Ok(())
}
