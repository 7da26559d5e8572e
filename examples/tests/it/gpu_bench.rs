//! `gpu_bench` (issue 25, item 5) as a smoke test on the software Vulkan adapter: every kernel
//! timed with its roofline figures in the last JSON line (figures of a CPU emulating a GPU:
//! only their presence and consistency are checked here).

#[test]
fn gpu_bench_reports_every_kernel_against_the_copy_bandwidth() {
    let output = crate::example("gpu_bench")
        .args(["--device", "wgpu", "--small", "--runs", "3"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let copy = summary["copy_gb_per_s"].as_f64().unwrap();
    assert!(copy > 0.0);
    let kernels = summary["kernels"].as_array().unwrap();
    let names: Vec<&str> = kernels
        .iter()
        .map(|k| k["kernel"].as_str().unwrap())
        .collect();
    for expected in [
        "swiglu",
        "swiglu_backward",
        "rms_norm_residual",
        "rms_norm_backward",
        "cross_entropy",
        "cross_entropy_grad_in_place",
        "paged_decode_attention_f16",
        "quant_gemv_Q4_0_q8_1",
        "quant_gemv_Q4_1_f32",
        "quant_gemv_Q8_0_q8_1",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    for k in kernels {
        let (median, p10, p90) = (
            k["median_ms"].as_f64().unwrap(),
            k["p10_ms"].as_f64().unwrap(),
            k["p90_ms"].as_f64().unwrap(),
        );
        assert!(p10 <= median && median <= p90 && p10 > 0.0, "{k}");
        let gb = k["gb_per_s"].as_f64().unwrap();
        let bytes = k["bytes"].as_f64().unwrap();
        assert!(
            (gb - bytes / (median / 1e3) / 1e9).abs() <= 1e-6 * gb,
            "{k}"
        );
        assert!(
            (k["fraction_of_copy"].as_f64().unwrap() - gb / copy).abs() < 1e-9,
            "{k}"
        );
    }
    let bad = crate::example("gpu_bench")
        .args(["--runs", "0"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
