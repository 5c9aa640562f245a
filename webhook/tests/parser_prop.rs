//! Property tests of the Event Grid / CloudEvents parser through its public entry points
//! (issue 10, item 10), from Microsoft's documented payloads (`tests/fixtures/eventgrid`,
//! byte-exact copies of `../shared/fixtures/eventgrid`):
//!
//! - arbitrary bytes and byte-mutated fixtures never panic `plan_event_grid`,
//!   `plan_event`, `plan_cloud_event` or the handler; each event is either planned or
//!   rejected with a clear error (short, no control character), the handler answers 200
//!   or 400 with a clear message, and whatever is queued is a clean request;
//! - wherever the fast path answers a raw body (duplicate keys, escapes, odd spacing
//!   included), it decides as the general path;
//! - re-encoding a fixture (escapes, key order, whitespace) changes no decision.
//!
//! `prop.rs` covers generated JSON values; this file covers raw text and the real
//! payloads. CI runs 256 cases per property (a few seconds). Longer runs:
//! `PROPTEST_CASES=1000000 cargo test --release -p kv-rotator-webhook --test parser_prop`.

mod common;

use axum::http::StatusCode;
use common::*;
use kv_rotator_core::names::{is_secret_name, is_vault_name, is_version};
use kv_rotator_core::{RotationRequest, Trigger};
use kv_rotator_webhook::eventgrid::{
    is_event_id, plan_cloud_event, plan_event, Disposition, EventError, PlannedEvent, SECRET_EXPIRED,
    SECRET_NEAR_EXPIRY,
};
use kv_rotator_webhook::fastpath::plan_event_grid;
use kv_rotator_webhook::SourceFilter;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{contextualize_config, Config as ProptestConfig};
use serde_json::Value;

/// `cases` unless `PROPTEST_CASES` says otherwise.
fn cases(cases: u32) -> ProptestConfig {
    contextualize_config(ProptestConfig { cases, ..ProptestConfig::default() })
}

/// Longest rejection message accepted as clear: quoted values are clipped to 80
/// characters, so a message never grows with its input.
const MAX_MESSAGE: usize = 1024;

/// A delivery as Event Grid sends it: content type, `aeg-event-type`, body.
#[derive(Debug, Clone)]
struct Delivery {
    content_type: &'static str,
    aeg: &'static str,
    body: Vec<u8>,
}

/// The documented payloads, as published and with the rotating event types, in the
/// schema each was published for (a CloudEvents batch also as one structured event).
fn fixtures() -> Vec<Delivery> {
    let event_grid = |aeg, body: String| Delivery { content_type: "application/json", aeg, body: body.into_bytes() };
    let mut out = vec![
        event_grid("SubscriptionValidation", fixture(VALIDATION_EVENT)),
        event_grid("Notification", fixture(KEYVAULT_EVENT)),
    ];
    for event_type in [NEAR_EXPIRY, EXPIRED] {
        out.push(event_grid("Notification", fixture(KEYVAULT_EVENT).replace(NEW_VERSION, event_type)));
        let cloud = fixture(KEYVAULT_CLOUDEVENT).replace(NEW_VERSION, event_type);
        let single = serde_json::to_vec(&serde_json::from_str::<Value>(&cloud).unwrap()[0]).unwrap();
        out.push(Delivery {
            content_type: "application/cloudevents-batch+json",
            aeg: "Notification",
            body: cloud.into(),
        });
        out.push(Delivery { content_type: "application/cloudevents+json", aeg: "Notification", body: single });
    }
    out
}

fn fixture_delivery() -> impl Strategy<Value = Delivery> {
    select(fixtures())
}

/// Byte edits: remove a span, insert bytes (often JSON punctuation), duplicate a span
/// (which repeats keys), flip the case of a letter.
fn mutated(delivery: Delivery) -> impl Strategy<Value = Delivery> {
    let insert = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..4),
        select(vec![
            &b"\""[..],
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b":",
            b"\\",
            b"\\u0000",
            b"null",
            b" ",
            b"\n",
            b"\xff",
            b"\xe2\x80\xae"
        ])
        .prop_map(<[u8]>::to_vec),
    ];
    let edit = prop_oneof![
        (any::<Index>(), 0..6usize, insert).prop_map(|(at, n, bytes)| Edit::Splice(at, n, bytes)),
        (any::<Index>(), 1..40usize).prop_map(|(at, n)| Edit::Duplicate(at, n)),
        any::<Index>().prop_map(Edit::FlipCase),
    ];
    prop::collection::vec(edit, 1..5).prop_map(move |edits| {
        let mut body = delivery.body.clone();
        for edit in edits {
            edit.apply(&mut body);
        }
        Delivery { body, ..delivery.clone() }
    })
}

#[derive(Debug, Clone)]
enum Edit {
    Splice(Index, usize, Vec<u8>),
    Duplicate(Index, usize),
    FlipCase(Index),
}

impl Edit {
    fn apply(self, body: &mut Vec<u8>) {
        match self {
            Edit::Splice(at, n, bytes) => {
                let at = at.index(body.len() + 1);
                let end = (at + n).min(body.len());
                body.splice(at..end, bytes);
            }
            Edit::Duplicate(at, n) if !body.is_empty() => {
                let at = at.index(body.len());
                let span = body[at..(at + n).min(body.len())].to_vec();
                body.splice(at..at, span);
            }
            Edit::FlipCase(at) if !body.is_empty() => {
                let at = at.index(body.len());
                body[at] = if body[at].is_ascii_lowercase() {
                    body[at].to_ascii_uppercase()
                } else {
                    body[at].to_ascii_lowercase()
                };
            }
            _ => {}
        }
    }
}

/// A mutated fixture, or (one time in four) arbitrary bytes in a fixture's envelope.
fn hostile_delivery() -> impl Strategy<Value = Delivery> {
    prop_oneof![
        3 => fixture_delivery().prop_flat_map(mutated),
        1 => (fixture_delivery(), prop::collection::vec(any::<u8>(), 0..512)).prop_map(|(d, body)| Delivery { body, ..d }),
    ]
}

fn check_clear(error: &EventError) -> Result<(), TestCaseError> {
    let message = error.to_string();
    prop_assert!(!message.is_empty() && message.len() <= MAX_MESSAGE, "{} bytes: {message:.200}", message.len());
    prop_assert!(!message.chars().any(char::is_control), "control character in {message:?}");
    Ok(())
}

/// What any queued rotation must be, whatever produced it: valid names, a lower-case
/// version, a checked event id and one of the two rotating event types.
fn check_clean(request: &RotationRequest) -> Result<(), TestCaseError> {
    prop_assert!(is_vault_name(&request.vault_name) && is_secret_name(&request.secret_name), "{request:?}");
    if let Some(version) = &request.version {
        prop_assert!(is_version(version) && !version.bytes().any(|b| b.is_ascii_uppercase()), "{request:?}");
    }
    let Trigger::EventGrid { event_id, event_type } = &request.trigger else {
        return Err(TestCaseError::fail(format!("not an Event Grid trigger: {request:?}")));
    };
    prop_assert!(is_event_id(event_id), "{request:?}");
    prop_assert!(
        [SECRET_NEAR_EXPIRY, SECRET_EXPIRED].iter().any(|t| t.eq_ignore_ascii_case(event_type)),
        "{request:?}"
    );
    Ok(())
}

fn check_planned(planned: &[PlannedEvent]) -> Result<(), TestCaseError> {
    for event in planned {
        if let Some(id) = &event.event_id {
            prop_assert!(is_event_id(id), "{event:?}");
        }
        match &event.disposition {
            Disposition::Reject(error) => check_clear(error)?,
            Disposition::Rotate(request) => check_clean(request)?,
            Disposition::Validate(_) | Disposition::Ignore { .. } => {}
        }
    }
    Ok(())
}

/// Every entry point on `body`: the fast path, and the general path on whatever JSON it
/// holds. When the fast path answers, the general path must decide the same.
fn plan_everywhere(body: &[u8], filter: &SourceFilter) -> Result<(), TestCaseError> {
    let fast = plan_event_grid(body, filter);
    if let Some(fast) = &fast {
        check_planned(fast)?;
    }
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        prop_assert!(fast.is_none(), "the fast path planned a body that is not JSON");
        return Ok(());
    };
    let events = match value {
        Value::Array(events) => events,
        other => vec![other],
    };
    let general: Vec<PlannedEvent> = events.iter().enumerate().map(|(i, e)| plan_event(i, e.clone(), filter)).collect();
    check_planned(&general)?;
    let cloud: Vec<PlannedEvent> =
        events.into_iter().enumerate().map(|(i, e)| plan_cloud_event(i, e, filter)).collect();
    check_planned(&cloud)?;
    if let Some(fast) = fast {
        prop_assert_eq!(fast, general, "{}", String::from_utf8_lossy(body));
    }
    Ok(())
}

/// What the handler made of a delivery: status, reply and queued requests.
type Handled = (StatusCode, Value, Vec<RotationRequest>);

fn handle(runtime: &tokio::runtime::Runtime, delivery: &Delivery) -> Handled {
    let (state, mut rx) = new_state(64);
    let state = state.with_source_filter(SourceFilter::only(["sample-kv"]));
    let request = axum::http::Request::post("/api/eventgrid")
        .header("content-type", delivery.content_type)
        .header("aeg-event-type", delivery.aeg)
        .body(axum::body::Body::from(delivery.body.clone()))
        .unwrap();
    let reply = runtime.block_on(send(state, request));
    (reply.status, reply.json, drain(&mut rx))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Re-encodes a JSON value: string characters escaped as `\uXXXX` where `escape` says
/// (cycling), keys in reverse order when `reverse`, `space` between tokens.
fn encode(value: &Value, escape: &[bool], reverse: bool, space: &str, out: &mut String) {
    let string = |s: &str, out: &mut String| {
        out.push('"');
        for (i, c) in s.chars().enumerate() {
            if escape.get(i % escape.len().max(1)).copied().unwrap_or(false) || c == '"' || c == '\\' || c.is_control()
            {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            } else {
                out.push(c);
            }
        }
        out.push('"');
    };
    match value {
        Value::String(s) => string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                out.push_str(if i == 0 { space } else { "," });
                out.push_str(space);
                encode(item, escape, reverse, space, out);
            }
            out.push_str(space);
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            let mut entries: Vec<_> = map.iter().collect();
            if reverse {
                entries.reverse();
            }
            for (i, (key, item)) in entries.into_iter().enumerate() {
                out.push_str(if i == 0 { space } else { "," });
                out.push_str(space);
                string(key, out);
                out.push_str(space);
                out.push(':');
                out.push_str(space);
                encode(item, escape, reverse, space, out);
            }
            out.push_str(space);
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn hostile_bytes_are_planned_or_refused_clearly_by_every_entry_point(delivery in hostile_delivery()) {
        for filter in [SourceFilter::default(), SourceFilter::only(["sample-kv"])] {
            plan_everywhere(&delivery.body, &filter)?;
        }
    }

    #[test]
    fn hostile_deliveries_get_200_or_a_clear_400_and_queue_only_clean_requests(delivery in hostile_delivery()) {
        let (status, reply, queued) = handle(&runtime(), &delivery);
        prop_assert!([StatusCode::OK, StatusCode::BAD_REQUEST].contains(&status), "{status} {reply}");
        if status == StatusCode::BAD_REQUEST {
            let message = reply["error"].as_str().unwrap_or_default();
            prop_assert!(!message.is_empty() && message.len() <= MAX_MESSAGE, "{reply}");
            prop_assert!(!message.chars().any(char::is_control), "{reply}");
            prop_assert!(queued.is_empty());
        }
        if let Some(count) = reply.get("queued").and_then(Value::as_u64) {
            prop_assert_eq!(count, queued.len() as u64);
        }
        for request in &queued {
            check_clean(request)?;
        }
    }

    #[test]
    fn re_encoded_fixtures_decide_as_the_originals(
        delivery in fixture_delivery(),
        escape in prop::collection::vec(any::<bool>(), 1..7),
        reverse in any::<bool>(),
        space in select(vec!["", " ", "\n", "\t", "\r\n  "]),
    ) {
        let value: Value = serde_json::from_slice(&delivery.body).unwrap();
        let mut text = String::new();
        encode(&value, &escape, reverse, space, &mut text);
        prop_assert_eq!(&serde_json::from_str::<Value>(&text).unwrap(), &value, "not the same JSON: {}", text);
        let again = Delivery { body: text.clone().into_bytes(), ..delivery.clone() };
        let runtime = runtime();
        prop_assert_eq!(handle(&runtime, &again), handle(&runtime, &delivery), "{}", text);
        let filter = SourceFilter::only(["sample-kv"]);
        plan_everywhere(&again.body, &filter)?;
        if let (Some(original), Some(encoded)) = (plan_event_grid(&delivery.body, &filter), plan_event_grid(&again.body, &filter)) {
            prop_assert_eq!(original, encoded, "{}", text);
        }
    }
}

#[test]
fn the_fixtures_are_decided_as_documented() {
    // Anchors the properties: each fixture, untouched, is answered as its schema says.
    let runtime = runtime();
    for delivery in fixtures() {
        let (status, reply, queued) = handle(&runtime, &delivery);
        assert_eq!(status, StatusCode::OK, "{delivery:?}: {reply}");
        let text = String::from_utf8(delivery.body.clone()).unwrap();
        let rotates = text.contains(NEAR_EXPIRY) || text.contains(EXPIRED);
        assert_eq!(queued.len(), usize::from(rotates), "{delivery:?}: {reply}");
        if delivery.aeg == "SubscriptionValidation" {
            assert_eq!(reply, fixture_json(VALIDATION_RESPONSE));
        }
    }
}

#[test]
fn mutations_often_keep_a_fixture_meaningful() {
    // Guards against vacuous properties: a fair share of mutated fixtures must still parse
    // as JSON, some still queue a rotation, and some take the fast path.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let runtime = runtime();
    let filter = SourceFilter::only(["sample-kv"]);
    let (mut json, mut queued, mut fast) = (0, 0, 0);
    for _ in 0..300 {
        let delivery = hostile_delivery().new_tree(&mut runner).unwrap().current();
        json += usize::from(serde_json::from_slice::<Value>(&delivery.body).is_ok());
        fast += usize::from(plan_event_grid(&delivery.body, &filter).is_some());
        queued += usize::from(!handle(&runtime, &delivery).2.is_empty());
    }
    assert!(json >= 60 && queued >= 15 && fast >= 15, "of 300: JSON {json}, queued {queued}, fast path {fast}");
}
