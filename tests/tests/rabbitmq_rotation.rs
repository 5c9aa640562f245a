//! End to end against the machine's RabbitMQ through the exec plugin
//! (`examples/plugins/rabbitmq.py`): a user with a known password, its secret in the dev
//! vault with rotation tags, the admin's password in the vault too, a `SecretNearExpiry`
//! delivery over HTTP to the webhook — then an AMQP client (amqprs, not the plugin's
//! probe) holding the latest Key Vault value connects, and the old value is refused.
//!
//! Needs `scripts/setup-rabbitmq.sh` (the management API on 127.0.0.1:15672; the test
//! administers the server as guest).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::rabbitmq::{self, amqp_login, api, create_user};
use common::suffix;
use kv_rotator::engine::Outcome;
use kv_rotator_config::{AdminRef, TargetProfile};
use kv_rotator_rotators::common::Strategy;
use kv_rotator_rotators::PasswordPolicy;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_expiry_event_rotates_a_rabbitmq_user_through_the_exec_plugin() {
    let (user, admin) = (format!("kvr_e2e_{}", suffix()), format!("kvr_e2e_mqadm_{}", suffix()));
    let (p0, admin_password) = (PasswordPolicy::default().generate(), PasswordPolicy::default().generate());
    // A consumer's account (no tags: it cannot use the management API) and an admin.
    create_user(&user, &p0, "").await;
    let permissions = json!({ "configure": "^kvr-", "write": "^kvr-", "read": "^kvr-" });
    assert_eq!(api(reqwest::Method::PUT, &format!("permissions/%2F/{user}"), Some(permissions)).await, 201);
    create_user(&admin, &admin_password, "administrator").await;
    let remove = || async {
        for name in [&user, &admin] {
            api(reqwest::Method::DELETE, &format!("users/{name}"), None).await;
        }
    };
    assert!(amqp_login(&user, &p0).await.is_ok(), "the first password logs in");

    let profile = TargetProfile {
        target: rabbitmq::target(),
        admin: Some(AdminRef { username: admin.clone(), secret: "mq-admin".into() }),
        password: Default::default(),
        accounts: vec!["kvr_e2e_*".to_owned()],
        allow_admin_account: false,
        strategy: Strategy::SingleUser,
        grace_period_secs: None,
        twin_suffix: None,
        rotation_window: None,
    };
    let mut h = common::Harness::start(BTreeMap::from([("mq".to_owned(), profile)])).await;
    h.seed("mq-admin", &admin_password, &[]).await;
    let secret = format!("mq-{}", user.replace('_', "-"));
    let v1 = h.seed(&secret, &p0, &[("rotator", "mq"), ("CredentialId", &user), ("ValidityPeriodDays", "7")]).await;

    assert_eq!(h.deliver(&secret, &v1).await, 200);
    let report = h.report_for(&secret, Duration::from_secs(60)).await;
    assert!(matches!(report.outcome, Outcome::Rotated { .. }), "{report:?}");
    let latest = h.store.get_latest(&secret).await.unwrap();
    assert_ne!(latest.version, v1);
    if let Err(e) = amqp_login(&user, &latest.value).await {
        panic!("a client holding the new Key Vault value cannot connect: {e}");
    }
    match amqp_login(&user, &p0).await {
        Ok(()) => panic!("the old value still logs in"),
        // amqprs does not ask for the server's 403: RabbitMQ drops a refused login's
        // connection. A vhost refusal (NOT_ALLOWED) would mean the password worked.
        Err(e) => assert!(e.contains("network io error") && !e.contains("NOT_ALLOWED"), "not a refused login: {e}"),
    }
    h.stop().await;
    remove().await;
}
