//! The lineage registry: tools and prompts recorded by definition hash when the server
//! starts, a new version when a definition changes, a training run tied to its dataset's
//! fingerprint and the `train_start` definition that started it, and a destructive tool
//! whose definition changed since its approval flagged and asked about again.

use serde_json::{Value, json};

use crate::approval::{connect, train_config};
use crate::common::{Fixture, call};
use crate::jobs::teacher_parquet;

fn entry<'a>(list: &'a Value, kind: &str, name: &str) -> &'a Value {
    list["result"]["structuredContent"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == kind && e["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {list}"))
}

#[test]
fn runs_are_tied_to_their_inputs_and_changed_tools_are_asked_about_again() {
    let fixture = Fixture::new();
    teacher_parquet(&fixture.root().join("train.parquet"), 256, 3);
    let registry = fixture.base.path().join("state/lineage.json");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let none = Value::Null;
    let yes = json!({"action": "accept", "content": {"approve": true}});
    let job = runtime.block_on(async {
        let mut client = connect(&fixture, json!({"elicitation": {}})).await;
        let list = client
            .request(call(2, "lineage_list", json!({})), &none)
            .await;
        for (kind, name) in [
            ("tool", "train_start"),
            ("tool", "job_delete"),
            ("prompt", "explore_dataset"),
        ] {
            let found = entry(&list, kind, name);
            assert!(
                found["hash"].as_str().unwrap().starts_with("blake3:"),
                "{found}"
            );
            assert_eq!(found["changed_since_approval"], false);
        }
        let train_start = entry(&list, "tool", "train_start")["hash"].clone();

        let started = client
            .request(
                call(3, "train_start", json!({"config": train_config()})),
                &none,
            )
            .await;
        let record = &started["result"]["structuredContent"];
        let printed = client
            .request(
                call(4, "dataset_fingerprint", json!({"path": "train.parquet"})),
                &none,
            )
            .await;
        let fingerprint = &printed["result"]["structuredContent"]["fingerprint"];
        assert_eq!(&record["lineage"]["train_dataset"], fingerprint, "{record}");
        assert_eq!(record["lineage"]["tool"], train_start);
        assert!(
            record["lineage"]["config"]
                .as_str()
                .unwrap()
                .starts_with("blake3:")
        );
        let list = client
            .request(call(5, "lineage_list", json!({})), &none)
            .await;
        assert_eq!(
            &entry(&list, "dataset", "train.parquet")["hash"],
            fingerprint
        );
        let job = record["id"].as_str().unwrap().to_owned();
        client
            .request(call(6, "train_wait", json!({"job": job})), &none)
            .await;
        job
    });

    // As if the user had approved an older job_delete, and train_start had another
    // definition before: what a server upgrade leaves in the registry.
    let mut entries: Vec<Value> =
        serde_json::from_slice(&std::fs::read(&registry).unwrap()).unwrap();
    for e in &mut entries {
        if e["name"] == "job_delete" {
            e["approved"] = json!("blake3:old");
        }
        if e["name"] == "train_start" {
            e["hash"] = json!("blake3:v0");
            e["versions"] = json!(["blake3:v0"]);
        }
    }
    std::fs::write(&registry, serde_json::to_vec(&entries).unwrap()).unwrap();

    runtime.block_on(async {
        let mut client = connect(&fixture, json!({"elicitation": {}})).await;
        let list = client
            .request(call(2, "lineage_list", json!({})), &none)
            .await;
        let train_start = entry(&list, "tool", "train_start");
        assert_eq!(
            train_start["versions"].as_array().unwrap().len(),
            2,
            "a new version: {train_start}"
        );
        assert_eq!(train_start["versions"][0], "blake3:v0");
        let delete = entry(&list, "tool", "job_delete");
        assert_eq!(delete["changed_since_approval"], true, "{delete}");

        let deleted = client
            .request(call(3, "job_delete", json!({"job": job})), &yes)
            .await;
        assert_eq!(
            deleted["result"]["structuredContent"]["job"],
            job.as_str(),
            "{deleted}"
        );
        let question = client.asked[0]["message"].as_str().unwrap();
        assert!(
            question.contains("changed since you approved"),
            "{question}"
        );
        let list = client
            .request(call(4, "lineage_list", json!({})), &none)
            .await;
        let delete = entry(&list, "tool", "job_delete");
        assert_eq!(
            delete["changed_since_approval"], false,
            "approved again: {delete}"
        );
        assert_eq!(delete["approved"], delete["hash"]);
    });
}
