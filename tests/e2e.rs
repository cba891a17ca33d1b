//! End to end on the real path: Apache Pulsar broker, `ci-worker emulator` and `ci-worker run` as
//! processes. A few hundred requests in both callback formats, with failing jobs, rejected requests and
//! dead letters; every field of every result is checked against its request.

mod common;
mod stack;

use common::{is_rfc3339_utc, JobRequest, BUCKET, REGION};
use serde_json::{json, Value};
use stack::{collect, Stack};
use std::collections::HashMap;
use std::time::Duration;

/// The watermark text of this test's requests.
const MESSAGE: &str = "e2e-watermark_1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_become_exactly_one_final_result_each() {
    let mut stack = Stack::new("e2e");
    stack.start_emulator().await;
    let mut results = stack.follow(&stack.topics.result).await;
    let mut dead = stack.follow(&stack.topics.dead_letter).await;
    stack.start_worker();

    // 240 valid requests: JSON and XML callbacks alternate, every tenth job fails in CI.
    let mut expected: HashMap<String, Value> = HashMap::new();
    let mut payloads = Vec::new();
    for i in 0..240 {
        let id = format!("req-{i}");
        let fails = i % 10 == 3;
        let object = if fails {
            format!("input/__fail__/{i}.mp4")
        } else {
            format!("input/{i}.mp4")
        };
        let format = if i % 2 == 0 { "JSON" } else { "XML" };
        let user_data = match i % 3 {
            0 => None,
            1 => Some(format!("caller data {i} ;with:marker-like ciw1:x; text")),
            _ => Some("<xml>&amp; \"quotes\"</xml>".to_string()),
        };
        let mut req = JobRequest::watermark(&id, MESSAGE)
            .input(&object)
            .job_level("1")
            .callback_format(format);
        if let Some(u) = &user_data {
            req = req.user_data(u);
        }
        let req = req.json();
        payloads.push(req.to_string().into_bytes());
        expected.insert(id, req);
    }
    // 20 well-formed requests the worker must refuse (bad watermark text, bad bucket).
    let mut rejected_ids = Vec::new();
    for i in 0..20 {
        let id = format!("bad-{i}");
        let mut req = JobRequest::watermark(&id, MESSAGE)
            .input("input/x.mp4")
            .job_level("1")
            .callback_format("JSON")
            .json();
        if i % 2 == 0 {
            req["job"]["Operation"]["DigitalWatermark"]["Message"] = json!("not allowed!");
        } else {
            req["bucket"] = json!("NoAppId");
        }
        payloads.push(req.to_string().into_bytes());
        rejected_ids.push(id);
    }
    // 5 unreadable messages for the dead-letter topic.
    let unreadable: Vec<Vec<u8>> = vec![
        b"this is not json".to_vec(),
        b"{\"job\": {}}".to_vec(),
        b"[1, 2, 3]".to_vec(),
        b"{\"request_id\": \"\"}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x7b],
    ];
    payloads.extend(unreadable.iter().cloned());
    common::publish(&common::pulsar_url(), None, &stack.topics.request, payloads).await;

    // Every valid request: one `submitted` and one final; every bad one: one `rejected`.
    let total_valid = expected.len();
    let seen = collect(&mut results, Duration::from_secs(180), |seen| {
        let finals = seen
            .iter()
            .filter(|(p, _, _)| {
                serde_json::from_slice::<Value>(p).is_ok_and(|v| v["state"] != "submitted")
            })
            .count();
        let submitted = seen.len() - finals;
        finals >= total_valid + rejected_ids.len() && submitted >= total_valid
    })
    .await;

    let mut by_request: HashMap<String, Vec<Value>> = HashMap::new();
    for (payload, props, key) in &seen {
        let v: Value = serde_json::from_slice(payload).unwrap();
        let id = v["request_id"]
            .as_str()
            .expect("request_id set")
            .to_string();
        assert_eq!(
            key.as_deref(),
            Some(id.as_str()),
            "message key = request_id"
        );
        assert_eq!(props.get("state").map(String::as_str), v["state"].as_str());
        by_request.entry(id).or_default().push(v);
    }

    for (id, req) in &expected {
        let results = by_request
            .get(id)
            .unwrap_or_else(|| panic!("no result for {id}"));
        let states: Vec<&str> = results
            .iter()
            .map(|r| r["state"].as_str().unwrap())
            .collect();
        let fails = req["job"]["Input"]["Object"]
            .as_str()
            .unwrap()
            .contains("__fail__");
        let final_state = if fails { "failed" } else { "succeeded" };
        // One of each; usually in this order, but CI may finish before the submitted event is out.
        let mut sorted = states.clone();
        sorted.sort_unstable_by_key(|s| *s != "submitted");
        assert_eq!(sorted, ["submitted", final_state], "{id}");
        let submitted = results.iter().find(|r| r["state"] == "submitted").unwrap();
        let fin = results.iter().find(|r| r["state"] != "submitted").unwrap();
        let job_id = fin["job_id"].as_str().expect("job id");
        assert!(job_id.starts_with('j') && job_id.len() > 10, "{job_id}");
        assert_eq!(submitted["job_id"], fin["job_id"]);
        for r in [submitted, fin] {
            assert_eq!(r["version"], 2);
            assert_eq!(r["workflow"], json!([]), "{id}: a job of no workflow");
            assert_eq!(r["request_id"], id.as_str());
            assert_eq!(r["tag"], "DigitalWatermark");
            assert_eq!(
                r["input"],
                json!({"bucket": BUCKET, "region": REGION, "object": req["job"]["Input"]["Object"]})
            );
            assert_eq!(
                r["output"],
                json!({"bucket": BUCKET, "region": REGION, "object": req["job"]["Operation"]["Output"]["Object"]})
            );
            // The caller's UserData comes back unchanged, whatever the worker put around it.
            assert_eq!(r["user_data"], req["job"]["Operation"]["UserData"], "{id}");
            assert!(
                r["created_at"].as_str().is_some_and(is_rfc3339_utc),
                "{id}: {}",
                r["created_at"]
            );
            assert!(r["queue_id"].as_str().is_some_and(|q| !q.is_empty()));
        }
        assert!(
            fin["started_at"].as_str().is_some_and(is_rfc3339_utc)
                && fin["finished_at"].as_str().is_some_and(is_rfc3339_utc),
            "{fin}"
        );
        assert!(fin["finished_at"].as_str() >= fin["created_at"].as_str());
        if fails {
            assert_ne!(fin["code"], "Success");
            assert!(!fin["message"].as_str().unwrap().is_empty());
        } else {
            assert_eq!(fin["code"], "Success");
            assert!(fin["media_info"].is_object(), "{fin}");
            assert!(fin["media_result"].is_object(), "{fin}");
            // One output file: still an array, as the SDK's `ObjectName` list.
            assert_eq!(
                fin["media_result"]["OutputFile"]["ObjectName"],
                json!([req["job"]["Operation"]["Output"]["Object"]]),
                "{fin}"
            );
            // The Tag's own element, from CI's Operation.
            assert_eq!(
                fin["operation"]["DigitalWatermark"]["Type"],
                req["job"]["Operation"]["DigitalWatermark"]["Type"],
                "{fin}"
            );
            assert!(fin["operation"].get("UserData").is_none(), "{fin}");
        }
    }
    for id in &rejected_ids {
        let results = &by_request[id];
        assert_eq!(results.len(), 1, "{id}: {results:?}");
        let r = &results[0];
        assert_eq!(r["state"], "rejected");
        assert_eq!(r["code"], "InvalidRequest");
        assert!(r["job_id"].is_null());
        assert!(!r["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(by_request.len(), total_valid + rejected_ids.len());

    // Dead letters: payload untouched, reason and source in properties.
    let letters = collect(&mut dead, Duration::from_secs(60), |s| {
        s.len() >= unreadable.len()
    })
    .await;
    let mut payloads_seen: Vec<Vec<u8>> = letters.iter().map(|(p, _, _)| p.clone()).collect();
    let mut wanted = unreadable.clone();
    payloads_seen.sort();
    wanted.sort();
    assert_eq!(payloads_seen, wanted);
    for (_, props, _) in &letters {
        assert!(!props["ci-worker-dlq-reason"].is_empty());
        assert_eq!(props["ci-worker-source-topic"], stack.topics.request);
    }

    // SIGTERM: the worker drains and exits 0.
    let status = stack.stop_worker().unwrap();
    assert!(status.success(), "worker exit: {status}");
}
