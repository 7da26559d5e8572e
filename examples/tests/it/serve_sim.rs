//! `serve_sim`'s contract: its JSON keys, no leaked blocks, and outputs that depend on the
//! seed and prompt only, not on concurrency, KV size or preemptions.

use mlinfra_examples::serve_sim::{SimConfig, simulate};

fn config(concurrency: usize, kv_blocks: usize) -> SimConfig {
    SimConfig {
        requests: 12,
        concurrency,
        prompt_len: 8..=40,
        gen_len: 4..=16,
        kv_blocks,
        block_size: 4,
        seed: 3,
        prefix_share: 0.5,
        speculative: false,
    }
}

#[test]
fn outputs_do_not_depend_on_concurrency_or_kv_pressure() {
    let relaxed = simulate(&config(1, 64)).unwrap();
    let crowded = simulate(&config(8, 16)).unwrap();
    for report in [&relaxed, &crowded] {
        for key in [
            "tokens_per_s",
            "ttft_p50_ms",
            "ttft_p99_ms",
            "preemptions",
            "prefix_hit_rate",
            "kv_peak_utilisation",
            "blocks_leaked",
        ] {
            assert!(
                report.metrics.get(key).is_some(),
                "metric {key} missing: {}",
                report.metrics
            );
        }
        assert_eq!(report.metrics["blocks_leaked"], 0);
        assert_eq!(report.requests.len(), 12);
        for (id, request) in report.requests.iter().enumerate() {
            assert_eq!(request["id"], id);
            let output = request["output_ids"].as_array().unwrap();
            assert!((4..=16).contains(&output.len()), "{request}");
            assert!(request["preempted"].is_boolean() && request["prefix_hit_tokens"].is_u64());
        }
    }
    assert!(
        crowded.metrics["preemptions"].as_u64().unwrap() > 0,
        "{}",
        crowded.metrics
    );
    assert!(crowded.metrics["prefix_hit_rate"].as_f64().unwrap() > 0.0);
    let speculative = simulate(&SimConfig {
        speculative: true,
        ..config(8, 16)
    })
    .unwrap();
    assert!(
        speculative.metrics["spec_acceptance_rate"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    for ((a, b), c) in relaxed
        .requests
        .iter()
        .zip(&crowded.requests)
        .zip(&speculative.requests)
    {
        assert_eq!(
            a["output_ids"], c["output_ids"],
            "speculative request {}",
            a["id"]
        );
        assert_eq!(a["prompt_ids"], b["prompt_ids"]);
        assert_eq!(a["output_ids"], b["output_ids"], "request {}", a["id"]);
    }
}

#[test]
fn a_request_that_cannot_fit_is_refused() {
    let error = simulate(&config(2, 3)).unwrap_err();
    assert!(format!("{error:#}").contains("more than the"), "{error:#}");
}
