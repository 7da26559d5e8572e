//! The software Vulkan adapter: found and named, or a failure that says what to install.

use std::process::Command;

use mlinfra_kernels::wgpu::{SOFTWARE_VULKAN_PACKAGE, software_device};
use mlinfra_test_utils::log_line;

/// Fails (never skips) when the adapter is missing, with the package to install in the message.
/// The adapter name goes straight to stderr, past the test harness's capture, so CI logs show
/// which driver ran the kernels.
#[test]
fn software_adapter_is_present_and_named() {
    let device = software_device().unwrap_or_else(|error| panic!("{}", report(&error)));
    log_line(&format!(
        "wgpu software adapter: {} (driver: {})",
        device.adapter_name(),
        device.driver()
    ));
    assert!(!device.adapter_name().is_empty());
}

/// With the Vulkan loader pointed at no driver, the probe is a typed error naming the package.
/// Runs in a child process: the adapter is initialised once per process.
#[test]
fn missing_driver_is_an_error_naming_the_package() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "runtime::probe_in_child",
            "--ignored",
            "--nocapture",
        ])
        .env("MLINFRA_PROBE_CHILD", "1")
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("probe: "))
        .expect("child printed its probe");
    assert!(
        line.starts_with("error: "),
        "expected an error without a driver, got {line}"
    );
    assert!(line.contains(SOFTWARE_VULKAN_PACKAGE), "{line}");
}

/// The child half of the test above; does nothing unless spawned by it.
#[test]
#[ignore = "spawned by missing_driver_is_an_error_naming_the_package"]
fn probe_in_child() {
    if std::env::var_os("MLINFRA_PROBE_CHILD").is_none() {
        return;
    }
    match software_device() {
        Ok(device) => println!("probe: ok {}", device.adapter_name()),
        Err(error) => println!("probe: error: {error}"),
    }
}

/// The error and its causes, one per line: what a developer needs to fix the machine.
fn report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!("\n  caused by: {cause}"));
        source = cause.source();
    }
    text
}
