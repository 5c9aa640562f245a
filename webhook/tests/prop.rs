//! Property tests over the parser and the handler: whatever arrives, nothing panics,
//! the status is one Event Grid's retry rules allow, and a rotation is queued only for
//! a well-formed event from the allowed vault whose names all agree.
//!
//! CI runs proptest's default 256 cases per property. Longer runs:
//! `PROPTEST_CASES=100000 cargo test --release -p kv-rotator-webhook --test prop`.

mod common;

use axum::http::StatusCode;
use common::*;
use kv_rotator_core::names::{is_secret_name, is_vault_name};
use kv_rotator_webhook::eventgrid::{
    plan_cloud_event, plan_event, Disposition, SECRET_EXPIRED, SECRET_NEAR_EXPIRY, SUBSCRIPTION_VALIDATION_EVENT,
};
use kv_rotator_webhook::fastpath::plan_event_grid;
use kv_rotator_webhook::SourceFilter;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Map, Value};

const VAULT: &str = "prod-kv";

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "id",
            "eventType",
            "type",
            "specversion",
            "source",
            "topic",
            "subject",
            "data",
            "Id",
            "id ",
            "VaultName",
            "vaultname",
            "ObjectName ",
            "objectName",
            "Version",
            "NBF",
            "EXP",
            "ObjectType",
            "dataVersion",
            "metadataVersion",
            "validationCode",
            "data_base64",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z _]{0,8}",
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            SECRET_NEAR_EXPIRY,
            SECRET_EXPIRED,
            SUBSCRIPTION_VALIDATION_EVENT,
            "Microsoft.KeyVault.SecretNewVersionCreated",
            "1",
            "1.0",
            "2",
            "Secret",
            "Key",
            VAULT,
            "evil-kv",
            "db-password",
            "0123456789abcdef0123456789abcdef",
            "https://prod-kv.vault.azure.net/secrets/db-password/0123456789abcdef0123456789abcdef",
            "https://evil-kv.vault.azure.net/secrets/db-password",
            "https://127.0.0.1:8443/secrets/db-password",
            "/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/prod-kv",
            "/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/evil-kv",
        ])
        .prop_map(str::to_owned),
        ".{0,24}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A well-formed rotation event with some fields replaced or removed: most variants
/// stay close enough to valid to reach the deep checks.
fn mutated_event() -> impl Strategy<Value = Value> {
    let base = secret_event("p-1", SECRET_NEAR_EXPIRY, VAULT, "db-password", "0123456789abcdef0123456789abcdef");
    let edits = prop::collection::vec((any::<bool>(), key(), prop::option::of(json_value())), 0..4);
    (edits, any::<bool>()).prop_map(move |(edits, cloud)| {
        let mut event = base.clone();
        if cloud {
            let envelope = event.as_object().unwrap();
            event = json!({
                "specversion": "1.0", "id": envelope["id"], "source": envelope["topic"],
                "type": envelope["eventType"], "subject": envelope["subject"], "data": envelope["data"],
            });
        }
        for (in_data, field, value) in edits {
            let target: &mut Map<String, Value> = if in_data {
                match event.get_mut("data").and_then(Value::as_object_mut) {
                    Some(data) => data,
                    None => continue,
                }
            } else {
                event.as_object_mut().unwrap()
            };
            match value {
                Some(value) => target.insert(field, value),
                None => target.remove(&field),
            };
        }
        event
    })
}

/// A well-formed Event Grid rotation event with some fields set to strings or removed:
/// the shapes the fast path takes, most of them still reaching the deep checks.
fn string_mutated_event() -> impl Strategy<Value = Value> {
    let base = secret_event("p-3", SECRET_NEAR_EXPIRY, VAULT, "db-password", "0123456789abcdef0123456789abcdef");
    let edits = prop::collection::vec((any::<bool>(), key(), prop::option::of(text())), 0..5);
    edits.prop_map(move |edits| {
        let mut event = base.clone();
        for (in_data, field, value) in edits {
            let target = if in_data { event.get_mut("data") } else { Some(&mut event) };
            let Some(target) = target.and_then(Value::as_object_mut) else { continue };
            match value {
                Some(value) => target.insert(field, Value::from(value)),
                None => target.remove(&field),
            };
        }
        event
    })
}

/// What a queued rotation must satisfy, whatever produced it.
fn check_rotation(event: &Value, vault: &str, secret: &str) -> Result<(), TestCaseError> {
    prop_assert!(vault.eq_ignore_ascii_case(VAULT), "queued a rotation for {vault:?}: {event}");
    prop_assert!(is_vault_name(vault) && is_secret_name(secret), "invalid names {vault:?}/{secret:?}");
    Ok(())
}

proptest! {
    #[test]
    fn parser_never_panics_and_rotates_only_the_allowed_vault(value in prop_oneof![json_value(), mutated_event()]) {
        let filter = SourceFilter::only([VAULT]);
        for planned in [plan_event(0, value.clone(), &filter), plan_cloud_event(0, value.clone(), &filter)] {
            if let Disposition::Rotate(request) = planned.disposition {
                check_rotation(&value, &request.vault_name, &request.secret_name)?;
            }
        }
    }

    #[test]
    fn handler_answers_every_body_with_an_allowed_status(
        events in prop::collection::vec(prop_oneof![json_value(), mutated_event()], 0..6),
        content_type in select(vec!["application/json", "application/cloudevents+json", "application/cloudevents-batch+json", "text/plain"]),
        raw in prop::option::of(prop::collection::vec(any::<u8>(), 0..256)),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let body = match &raw {
            Some(bytes) => bytes.clone(),
            None => Value::Array(events.clone()).to_string().into_bytes(),
        };
        let (state, mut rx) = new_state(64);
        let state = state.with_source_filter(SourceFilter::only([VAULT]));
        let request = axum::http::Request::post("/api/eventgrid")
            .header("content-type", content_type)
            .header("aeg-event-type", "Notification")
            .body(axum::body::Body::from(body))
            .unwrap();
        let reply = runtime.block_on(send(state, request));
        // Never 401/403/404/413 here (no auth, small bodies), never a 5xx with room in the queue.
        prop_assert!(
            [StatusCode::OK, StatusCode::BAD_REQUEST].contains(&reply.status),
            "status {} for {content_type}: {}", reply.status, reply.text
        );
        let queued = drain(&mut rx);
        if reply.status == StatusCode::OK && reply.json.get("queued").is_some() {
            prop_assert_eq!(reply.json["queued"].as_u64(), Some(queued.len() as u64));
        } else {
            prop_assert!(queued.is_empty());
        }
        for request in &queued {
            check_rotation(&Value::Null, &request.vault_name, &request.secret_name)?;
        }
    }

    #[test]
    fn key_spelling_and_padding_do_not_change_the_request(upper in any::<bool>(), pad in "[ ]{0,3}") {
        let event = secret_event("p-2", SECRET_EXPIRED, VAULT, "db-password", "0123456789abcdef0123456789abcdef");
        let filter = SourceFilter::only([VAULT]);
        let Disposition::Rotate(expected) = plan_event(0, event.clone(), &filter).disposition else {
            panic!("the base event must rotate")
        };
        let data = event["data"].as_object().unwrap().iter().map(|(k, v)| {
            let key = if upper { k.to_ascii_uppercase() } else { k.to_ascii_lowercase() };
            let value = match v { Value::String(s) => Value::from(format!("{pad}{s}{pad}")), other => other.clone() };
            (format!("{key}{pad}"), value)
        });
        let mut respelled = event.clone();
        respelled["data"] = Value::Object(data.collect());
        let Disposition::Rotate(got) = plan_event(0, respelled.clone(), &filter).disposition else {
            return Err(TestCaseError::fail(format!("respelled event did not rotate: {respelled}")));
        };
        prop_assert_eq!(got, expected);
    }
}

proptest! {
    #[test]
    fn fast_path_decides_as_the_general_path(
        events in prop::collection::vec(
            prop_oneof![json_value(), mutated_event(), string_mutated_event(), string_mutated_event().prop_map(|e| json!([e]))],
            0..4,
        ),
    ) {
        // Nested arrays included: an array element that is an array is not an event.
        let filter = SourceFilter::only([VAULT]);
        let body = Value::Array(events.clone()).to_string();
        if let Some(fast) = plan_event_grid(body.as_bytes(), &filter) {
            let general: Vec<_> = events.into_iter().enumerate().map(|(i, e)| plan_event(i, e, &filter)).collect();
            prop_assert_eq!(fast, general, "{}", body);
        }
    }
}

#[test]
fn fast_path_takes_most_mutated_events() {
    // Guards against a vacuous agreement property: the fast path must answer for a fair
    // share of generated events, rotations among them.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let filter = SourceFilter::only([VAULT]);
    let (mut fast, mut rotate, mut reject) = (0, 0, 0);
    for _ in 0..400 {
        let event = string_mutated_event().new_tree(&mut runner).unwrap().current();
        if let Some(planned) = plan_event_grid(Value::Array(vec![event]).to_string().as_bytes(), &filter) {
            fast += 1;
            rotate += usize::from(matches!(planned[0].disposition, Disposition::Rotate(_)));
            reject += usize::from(matches!(planned[0].disposition, Disposition::Reject(_)));
        }
    }
    assert!(fast > 200 && rotate > 40 && reject > 20, "fast {fast}, rotate {rotate}, reject {reject} of 400");
}

#[test]
fn mutated_events_often_reach_the_deep_checks() {
    // Guards against a vacuous property: a fair share of generated events must rotate
    // and a fair share must be dropped.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let filter = SourceFilter::only([VAULT]);
    let (mut rotate, mut reject) = (0, 0);
    for _ in 0..400 {
        let event = mutated_event().new_tree(&mut runner).unwrap().current();
        let planned = if event.get("specversion").is_some() {
            plan_cloud_event(0, event, &filter)
        } else {
            plan_event(0, event, &filter)
        };
        match planned.disposition {
            Disposition::Rotate(_) => rotate += 1,
            Disposition::Reject(_) => reject += 1,
            _ => {}
        }
    }
    assert!(rotate > 40 && reject > 40, "rotate {rotate}, reject {reject} of 400");
}
