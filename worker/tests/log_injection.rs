//! Untrusted text in deliveries cannot forge or bloat the worker's log lines, in either
//! log format. `kv-rotator dev` (its real logging, piped as a log collector reads it, at
//! `RUST_LOG=debug`) gets, in one batch, the demo secret's good event and events whose ids
//! carry CR/LF and a forged log line, ANSI escapes, or 300,000 characters, one with a
//! forged line in its event type, under a 20 KB subscription name; then validation
//! handshakes with such an id and with such a `validationUrl`, and a CloudEvent with such
//! an id. Then:
//!
//! - the good event is queued and rotated (its batch is answered 200, the bad events
//!   counted as rejected; a handshake with a bad id gets 400 naming the field);
//! - every line of the output is one log record (text: starts with a timestamp; JSON:
//!   parses), no line starts with the forged text, which is there, escaped, in the lines
//!   that report the drops;
//! - no ESC byte and no CR appear anywhere;
//! - no line carries the oversized id or header, nor more than a clipped part of the URL.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[allow(dead_code)] // each suite uses some of the shared helpers
mod common;

use common::proc::Proc;

const BIN: &str = env!("CARGO_BIN_EXE_kv-rotator");

/// The text a forged line would start with.
const FORGED: &str = "FORGED-LINE";

/// The oversized id's character, repeated.
const HUGE_ID_LEN: usize = 300_000;

/// A running `kv-rotator dev` in `format`, and what its `endpoints.json` says.
async fn start_dev(format: &str, state: &Path) -> (Proc, Value) {
    let proc = Proc::spawn(
        Command::new(BIN)
            .args(["--log-format", format, "dev", "--vault-addr", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0", "--state-dir"])
            .arg(state)
            .env("RUST_LOG", "debug")
            .env_remove("NO_COLOR"),
    );
    let mut proc = proc;
    let endpoints = common::proc::dev_endpoints(&mut proc, state).await;
    (proc, endpoints)
}

/// POSTs `body` as `content_type` with `aeg-event-type: kind` (and `extra` headers).
async fn post(url: &str, kind: &str, content_type: &str, body: &Value, extra: &[(&str, String)]) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("aeg-event-type", kind)
        .header("content-type", content_type)
        .body(body.to_string());
    for (name, value) in extra {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Ids and event types an attacker who can deliver might choose.
fn hostile_ids() -> Vec<String> {
    vec![
        format!("evil\n2030-01-01T00:00:00.000000Z  INFO kv_rotator: {FORGED} rotation request queued"),
        format!("evil\r\n{FORGED}"),
        "\u{1b}[31mRED\u{1b}[0m\u{1b}]0;title\u{7}".to_owned(),
        "Q".repeat(HUGE_ID_LEN),
    ]
}

fn validation(id: &str, url: &str) -> Value {
    json!([{
        "id": id, "topic": "t", "subject": "", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "data": {"validationCode": "code-1", "validationUrl": url}, "dataVersion": "1", "metadataVersion": "1"
    }])
}

/// Sends every hostile delivery; returns the good event's id once its rotation is counted.
async fn deliver(endpoints: &Value, proc: &mut Proc) -> String {
    let url = endpoints["webhook_url"].as_str().unwrap();
    let sample: Value =
        serde_json::from_slice(&std::fs::read(endpoints["sample_event"].as_str().unwrap()).unwrap()).unwrap();
    let good = sample[0].clone();
    let good_id = good["id"].as_str().unwrap().to_owned();
    let mut batch = vec![good.clone()];
    for id in hostile_ids() {
        let mut bad = good.clone();
        bad["id"] = json!(id);
        batch.push(bad);
    }
    let mut odd_type = good.clone();
    odd_type["id"] = json!("odd-type-1");
    odd_type["eventType"] = json!(format!("Other\n{FORGED} \u{1b}[2J"));
    batch.push(odd_type);
    let subscription = ("aeg-subscription-name", "S".repeat(20_000));
    let (status, reply) = post(url, "Notification", "application/json", &Value::Array(batch), &[subscription]).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply, json!({"queued": 1, "ignored": 1, "rejected": hostile_ids().len()}), "the good event is kept");

    // Handshakes: a bad id is refused, naming the field; a hostile URL is only logged.
    let (status, reply) =
        post(url, "SubscriptionValidation", "application/json", &validation(&hostile_ids()[0], "https://x/"), &[])
            .await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply["error"].as_str().unwrap().starts_with("id \"evil\\n"), "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("is not an event id"), "{reply}");
    let hostile_url = format!("https://x/\r\n{FORGED} \u{1b}[31m{}", "U".repeat(HUGE_ID_LEN));
    let (status, reply) =
        post(url, "SubscriptionValidation", "application/json", &validation("v-1", &hostile_url), &[]).await;
    assert_eq!((status, reply), (200, json!({"validationResponse": "code-1"})));

    // CloudEvents take the same rule.
    let cloud = json!({"specversion": "1.0", "id": format!("ce\n{FORGED}"), "source": good["topic"], "type": good["eventType"], "data": good["data"]});
    let (status, reply) = post(url, "Notification", "application/cloudevents+json", &cloud, &[]).await;
    assert_eq!((status, reply), (200, json!({"queued": 0, "ignored": 0, "rejected": 1})));

    // The good event's rotation, counted on the admin listener.
    let metrics_url = endpoints["metrics_url"].as_str().expect("dev mode's admin listener");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        proc.assert_running();
        let metrics = reqwest::get(metrics_url).await.unwrap().text().await.unwrap();
        if metrics
            .contains("kv_rotator_rotations_total{outcome=\"rotated\",rotator=\"htpasswd\",trigger=\"event_grid\"} 1")
        {
            return good_id;
        }
        assert!(Instant::now() < deadline, "the good event was not rotated within 60 s:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lines of `output` that break a rule of the module docs, each with why (clipped).
fn broken_lines(format: &str, output: &str) -> Vec<String> {
    let mut broken = Vec::new();
    for line in output.lines().filter(|line| !line.is_empty()) {
        let shown: String = line.chars().take(300).collect();
        let one_record = match format {
            "json" => serde_json::from_str::<Value>(line).is_ok_and(|v| v.is_object()),
            _ => line.len() > 4 && line.as_bytes()[..4].iter().all(u8::is_ascii_digit) && line.as_bytes()[4] == b'-',
        };
        if !one_record {
            broken.push(format!("not one log record: {shown}"));
        }
        if line.starts_with(FORGED) {
            broken.push(format!("forged: {shown}"));
        }
        if line.contains(&"Q".repeat(100)) || line.contains(&"S".repeat(100)) || line.contains(&"U".repeat(2100)) {
            broken.push(format!("oversized value ({} bytes): {shown}", line.len()));
        }
    }
    broken
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_event_fields_neither_forge_nor_bloat_log_lines_in_either_format() {
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let (mut proc, endpoints) = start_dev(format, &dir.path().join("state")).await;
        let good_id = deliver(&endpoints, &mut proc).await;
        let output = proc.terminate();

        assert!(!output.contains('\u{1b}'), "{format}: an ESC byte in the output:\n{output:?}");
        assert!(!output.contains('\r'), "{format}: a CR in the output");
        let broken = broken_lines(format, &output);
        assert!(broken.is_empty(), "{format}: {} bad line(s):\n{}", broken.len(), broken.join("\n"));

        // The hostile values did reach the log, escaped, where the drops are reported.
        let reported = output.lines().filter(|l| l.contains("event dropped") && l.contains(FORGED)).count();
        assert!(reported >= 2, "{format}: the dropped events are reported:\n{output}");
        assert!(output.lines().any(|l| l.contains("is not an event id")), "{format}: the reason names the field");
        assert!(output
            .lines()
            .any(|l| l.contains("answering Event Grid subscription validation") && l.contains(FORGED)));
        // The good event's rotation carries its id on its lines.
        let finished = output.lines().find(|l| l.contains("rotation request finished")).expect("a rotation");
        assert!(finished.contains(&good_id), "{format}: {finished}");
        println!("{format}: {} lines, {} bytes, none forged or oversized", output.lines().count(), output.len());
    }
}
