//! The loader tools: `loader_plan` shows exactly the batches a loader with the same settings
//! delivers, rank by rank, covering the epoch once (less the dropped remainder); the order
//! changes with the seed and the epoch; `loader_probe` reads real batches and says so.

use std::sync::Arc;

use mlinfra_loader::{Loader, Remainder, Shuffle};
use serde_json::{Value, json};

use crate::common::{Fixture, Pipe, call};
use crate::jobs::teacher_parquet;

const ROWS: u64 = 103;

async fn ask(fixture: &Fixture, calls: Vec<Value>) -> Vec<Value> {
    let mut pipe = Pipe::open(fixture.server()).await;
    let mut results = Vec::new();
    for request in calls {
        results.push(pipe.result(request).await);
    }
    pipe.close().await;
    results
}

#[test]
fn the_plan_is_what_the_loader_delivers_and_the_probe_reads_batches() {
    let fixture = Fixture::new();
    let path = fixture.root().join("rows.parquet");
    teacher_parquet(&path, ROWS as usize, 4);
    let plan = |id: i64, extra: Value| {
        let mut arguments =
            json!({"path": "rows.parquet", "batch": 8, "world": 3, "seed": 5, "batches": 4});
        arguments
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        call(id, "loader_plan", arguments)
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let results = runtime.block_on(ask(
        &fixture,
        vec![
            plan(2, json!({})),
            plan(3, json!({"seed": 6})),
            plan(4, json!({"epoch": 1})),
            plan(5, json!({"pad": true, "batches": 5})),
            plan(6, json!({"world": 0})),
            plan(7, json!({"path": "../secret.parquet"})),
            call(
                8,
                "loader_probe",
                json!({"path": "rows.parquet", "batch": 10, "seconds": 10}),
            ),
        ],
    ));
    let report = &results[0]["structuredContent"];
    assert_eq!(report["samples"], ROWS, "{}", results[0]);
    // 103 = 3 × 34 + 1: one sample dropped; each rank reads 34 samples, 4 full batches of 8.
    assert_eq!(report["dropped"], 1);
    let ranks = report["ranks"].as_array().unwrap();
    let dataset = Arc::new(mlinfra_data::Dataset::open(path.to_str().unwrap()).unwrap());
    let mut seen = Vec::new();
    for (rank, shown) in ranks.iter().enumerate() {
        assert_eq!(shown["samples"], 34);
        assert_eq!(shown["batches"], 4);
        let planned: Vec<Vec<u64>> =
            serde_json::from_value(shown["first_batches"].clone()).unwrap();
        // The loader a trainer builds with these settings delivers exactly these batches.
        let delivered: Vec<Vec<u64>> = Loader::builder(Arc::clone(&dataset), 8)
            .shuffle(Shuffle::Exact)
            .seed(5)
            .rank(rank as u64, 3)
            .remainder(Remainder::Drop)
            .build()
            .unwrap()
            .take(4)
            .map(|batch| batch.unwrap().ids)
            .collect();
        assert_eq!(planned, delivered, "rank {rank}");
        seen.extend(planned.into_iter().flatten());
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 96, "the ranks' batches are disjoint");
    let first =
        |result: &Value| result["structuredContent"]["ranks"][0]["first_batches"][0].clone();
    assert_ne!(
        first(&results[1]),
        first(&results[0]),
        "another seed, another order"
    );
    assert_ne!(
        first(&results[2]),
        first(&results[0]),
        "another epoch, another order"
    );
    // Padding: 35 samples each, 2 read twice, and the dropped one is read.
    let padded = &results[3]["structuredContent"];
    assert_eq!(
        (padded["dropped"].as_u64(), padded["repeated"].as_u64()),
        (Some(0), Some(2)),
        "{padded}"
    );
    assert_eq!(padded["ranks"][0]["samples"], 35);
    for refused in &results[4..6] {
        assert_eq!(refused["isError"], true, "{refused}");
    }
    let probe = &results[6]["structuredContent"];
    assert_eq!(probe["epoch_done"], true, "{}", results[6]);
    assert_eq!(probe["samples"], ROWS, "every row once");
    assert_eq!(probe["batches"], 11, "10 batches of 10 and a last one of 3");
    assert!(probe["samples_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(probe["columns"], json!(["features", "label"]));
}
