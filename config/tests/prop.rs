//! Property tests of the configuration loader (issue 10, item 10): whatever TOML-ish text
//! or bytes arrive, loading never panics, and a refusal names where the problem is — a
//! key path (`for key "default.engine.concurrency"`, `targets.db.accounts: ...`), a line
//! of the file (`TOML parse error at line 3`), or the missing field.
//!
//! CI runs 256 cases per property (about a second in all). Longer runs:
//! `PROPTEST_CASES=1000000 cargo test --release -p kv-rotator-config --test prop`
//! (see docs/testing.md).

use std::io::Write;

use figment::providers::{Format, Toml};
use figment::Figment;
use kv_rotator_config::load::from_figment;
use kv_rotator_config::ConfigError;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{contextualize_config, Config as ProptestConfig};

/// `cases` unless `PROPTEST_CASES` says otherwise.
fn cases(cases: u32) -> ProptestConfig {
    contextualize_config(ProptestConfig { cases, ..ProptestConfig::default() })
}

const VAULT: &str = "[vault]\nurl = \"https://v.vault.azure.net/\"\n";

/// A valid file using most sections, for mutations.
const FULL: &str = r#"[vault]
url = "https://my-vault.vault.azure.net/"
credential = { kind = "workload-identity", client_id = "11111111-1111-1111-1111-111111111111" }
max_retries = 4

[webhook]
listen = "127.0.0.1:9000"
allowed_vaults = ["my-vault"]
auth = { mode = "shared-key", key = { env = "HOOK_KEY" } }

[engine]
max_attempts = 3
target_concurrency = { billing = 2 }

[sweeper]
interval_secs = 600
lead_percent = 40

[alerts]
webhook_url = "https://alerts.example/hook"

[notifications]
expiry_warning_days = [14, 3]
sink = { kind = "event-grid", topic_endpoint = "https://t.westeurope-1.eventgrid.azure.net/api/events", auth = { mode = "key", key = { env = "EG_KEY" } } }

[lease]
ttl_secs = 30

[admin]
listen = "127.0.0.1:9464"

[targets.billing]
kind = "postgres"
accounts = ["billing_*"]
host = "10.1.2.3"
sslmode = "verify-full"
database = "billing"
admin = { username = "kvr_admin", secret = "billing-admin" }
password = { length = 30, symbols = "-_.!", exclude = "0O" }

[targets.site]
kind = "htpasswd"
accounts = ["alice", "bob"]
path = "/etc/nginx/htpasswd"
bcrypt_cost = 10
"#;

/// The top-level sections: every problem `validate` reports starts with one, as a path.
const SECTIONS: [&str; 9] =
    ["vault", "webhook", "engine", "sweeper", "alerts", "notifications", "lease", "admin", "targets"];

/// Whether a refusal says where the problem is.
fn names_a_location(error: &ConfigError) -> bool {
    match error {
        // Several errors are joined with "; ", which a quoted key may hold too: the
        // message is judged whole.
        ConfigError::Parse(message) => {
            message.contains("for key \"")
                || message.contains("TOML parse error at line ")
                || message.starts_with("missing field `")
                || (message.contains("valid UTF-8") && message.contains("TOML file"))
        }
        ConfigError::Invalid(problems) => {
            !problems.is_empty()
                && problems.iter().all(|problem| {
                    let first = problem.split_whitespace().next().unwrap_or_default();
                    SECTIONS.iter().any(|section| first.starts_with(&format!("{section}.")))
                })
        }
    }
}

fn load_text(text: &str) -> Result<kv_rotator_config::Config, ConfigError> {
    from_figment(Figment::from(Toml::string(text)))
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(vec![
            "url", "credential", "kind", "connect_to", "tls_ca_file", "max_retries", "listen", "max_body_bytes",
            "auth", "mode", "key", "env", "file", "allowed_vaults", "queue_capacity", "concurrency", "max_attempts",
            "default_validity_days", "target_concurrency", "min_rotation_interval_secs", "enabled", "interval_secs",
            "window_days", "lead_percent", "webhook_url", "timeout_ms", "ttl_secs", "settle_ms", "host", "port",
            "sslmode", "admin", "username", "secret", "password", "length", "symbols", "accounts", "path",
            "bcrypt_cost", "allow_admin_account", "vault", "webhook", "engine", "targets",
            "sink", "topic_endpoint", "expiry_warning_days",
        ])
        .prop_map(str::to_owned),
        1 => "[A-Za-z_-]{1,10}",
        1 => "\"[ !#-\\[\\]-~]{0,8}\"",
    ]
}

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        select(vec!["0", "1", "-1", "65536", "4294967296", "9223372036854775807", "0x10", "0o7", "1_000", "+1"])
            .prop_map(str::to_owned),
        select(vec!["1.5", "-0.0", "inf", "nan", "1e400", "true", "false"]).prop_map(str::to_owned),
        select(vec!["1979-05-27T07:32:00Z", "1979-05-27", "07:32:00"]).prop_map(str::to_owned),
        // Basic strings with escapes (valid and not), literal strings, multi-line ones.
        "\"([a-z0-9:/._*\\[\\]-]|\\\\[nt\"\\\\]|\\\\u00[0-9a-f]{2}){0,16}\"",
        "'[ -&(-~]{0,16}'",
        select(vec![
            "\"https://v.vault.azure.net/\"",
            "\"http://x/\"",
            "\"127.0.0.1:8080\"",
            "\"localhost:80\"",
            "\"postgres\"",
            "\"htpasswd\"",
            "\"client-secret\"",
            "\"shared-key\"",
            "\"entra-id\"",
            "\"*\"",
            "\"app_[\"",
            "\"\"\"\nmulti\nline\"\"\"",
        ])
        .prop_map(str::to_owned),
    ]
}

fn value() -> impl Strategy<Value = String> {
    scalar().prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|items| format!("[{}]", items.join(", "))),
            prop::collection::vec((key(), inner), 0..4).prop_map(|pairs| {
                let pairs: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", pairs.join(", "))
            }),
        ]
    })
}

fn line() -> impl Strategy<Value = String> {
    let table = prop_oneof![
        select(vec![
            "vault",
            "vault.credential",
            "webhook",
            "webhook.auth",
            "webhook.auth.key",
            "engine",
            "engine.target_concurrency",
            "sweeper",
            "alerts",
            "notifications",
            "notifications.sink",
            "notifications.sink.auth",
            "lease",
            "admin",
            "targets",
            "targets.db",
            "targets.db.admin",
            "targets.db.password",
            "targets.\"we b\"",
        ])
        .prop_map(str::to_owned),
        "[a-z_.]{1,12}",
    ];
    prop_oneof![
        3 => table.clone().prop_map(|t| format!("[{t}]")),
        1 => table.prop_map(|t| format!("[[{t}]]")),
        10 => (key(), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => (key(), key(), value()).prop_map(|(a, b, v)| format!("{a}.{b} = {v}")),
        1 => "#[^\n]{0,10}",
        1 => "[^\n]{0,12}",
    ]
}

/// A TOML-ish document: mostly well-formed lines of known keys and sections, often with
/// a valid `[vault]` first so that loading gets past the required key.
fn document() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(line(), 0..12)).prop_map(|(vault, lines)| {
        let prefix = if vault { VAULT } else { "" };
        format!("{prefix}{}\n", lines.join("\n"))
    })
}

/// Byte edits of a valid file.
fn mutated_full() -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<prop::sample::Index>(), 0..8usize, prop::collection::vec(any::<u8>(), 0..6));
    prop::collection::vec(edit, 1..4).prop_map(|edits| {
        let mut bytes = FULL.as_bytes().to_vec();
        for (at, remove, insert) in edits {
            let at = at.index(bytes.len() + 1);
            let end = (at + remove).min(bytes.len());
            bytes.splice(at..end, insert);
        }
        bytes
    })
}

/// Keys of known type in known places, as (table, key); each gets a value of another type.
fn wrongly_typed() -> impl Strategy<Value = (String, String, &'static str)> {
    let integers = select(vec![
        ("engine", "concurrency"),
        ("engine", "max_attempts"),
        ("engine", "queue_capacity"),
        ("sweeper", "interval_secs"),
        ("sweeper", "lead_percent"),
        ("alerts", "timeout_ms"),
        ("notifications", "queue_capacity"),
        ("lease", "ttl_secs"),
        ("webhook", "max_body_bytes"),
        ("webhook", "max_connections"),
    ]);
    let bools = select(vec![("sweeper", "enabled"), ("admin", "enabled")]);
    let addresses = select(vec![("webhook", "listen"), ("admin", "listen")]);
    let lists = select(vec![("webhook", "allowed_vaults")]);
    let not_integer = prop_oneof![
        "\"[0-9a-z ]{0,6}\"",
        Just("true".to_owned()),
        Just("1.5".to_owned()),
        Just("[1]".to_owned()),
        Just("{}".to_owned()),
        Just("-1".to_owned()),
    ];
    let not_bool = prop_oneof!["\"(true|false|yes|no)\"", Just("1".to_owned()), Just("[]".to_owned())];
    let not_address =
        prop_oneof!["\"[a-z0-9.:\\[\\]-]{0,16}\"", Just("8080".to_owned()), Just("[\"127.0.0.1:1\"]".to_owned()),];
    let not_list = prop_oneof!["\"[a-z-]{0,8}\"", Just("3".to_owned()), Just("{ a = 1 }".to_owned())];
    prop_oneof![
        (integers, not_integer).prop_map(|((t, k), v)| (format!("{t}.{k}"), v, "integer")),
        (bools, not_bool).prop_map(|((t, k), v)| (format!("{t}.{k}"), v, "bool")),
        (addresses, not_address).prop_map(|((t, k), v)| (format!("{t}.{k}"), v, "address")),
        (lists, not_list).prop_map(|((t, k), v)| (format!("{t}.{k}"), v, "list")),
    ]
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn toml_ish_text_never_panics_and_refusals_name_a_location(text in document()) {
        if let Err(e) = load_text(&text) {
            prop_assert!(names_a_location(&e), "no location in {e}\n--- input:\n{text}");
        }
    }

    #[test]
    fn mutated_files_never_panic_and_refusals_name_a_location(bytes in mutated_full()) {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        // No KV_ROTATOR_* variable is set in this test binary: the file alone is loaded.
        if let Err(e) = kv_rotator_config::load(Some(file.path())) {
            prop_assert!(names_a_location(&e), "no location in {e}\n--- input:\n{}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_naming_its_key((path, value, kind) in wrongly_typed()) {
        let (table, key) = path.split_once('.').unwrap();
        let text = format!("{VAULT}[{table}]\n{key} = {value}\n");
        match load_text(&text) {
            // A quoted integer-looking string is still a string; only an address may
            // happen to be valid.
            Ok(_) => prop_assert!(kind == "address", "accepted {path} = {value}"),
            Err(e) => {
                let message = e.to_string();
                prop_assert!(message.contains(&path), "{path} = {value} ({kind}): the key is not named: {message}");
            }
        }
    }
}

#[test]
fn generated_documents_often_get_past_the_parser() {
    // Guards against a vacuous property: a fair share of documents must parse as TOML and
    // reach the model and validation, and a few must load.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut loaded, mut model, mut syntax) = (0, 0, 0);
    for _ in 0..400 {
        let text = document().new_tree(&mut runner).unwrap().current();
        match load_text(&text) {
            Ok(_) => loaded += 1,
            Err(ConfigError::Parse(m)) if m.contains("TOML parse error") => syntax += 1,
            Err(_) => model += 1,
        }
    }
    assert!(
        loaded >= 4 && model >= 100 && syntax >= 40,
        "loaded {loaded}, refused by the model {model}, by the parser {syntax}"
    );
}

#[test]
fn the_file_mutations_start_from_loads() {
    let config = load_text(FULL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.targets.len(), 2);
}
