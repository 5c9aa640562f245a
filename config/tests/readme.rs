//! The configuration example in the README is a real configuration: it loads, and says
//! what the README says it does.

use kv_rotator_config::figment::providers::{Format, Toml};
use kv_rotator_config::figment::Figment;
use kv_rotator_config::load::from_figment;
use kv_rotator_config::{CredentialConfig, TargetKind};

/// The first ```toml block after the "## Configuration" heading.
fn readme_example() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = &readme[readme.find("## Configuration").expect("a Configuration section")..];
    let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = start + section[start..].find("```").expect("the block's end");
    section[start..end].to_owned()
}

#[test]
fn the_readme_configuration_example_loads() {
    let config = from_figment(Figment::from(Toml::string(&readme_example())))
        .unwrap_or_else(|e| panic!("README example does not load: {e}"));
    assert_eq!(config.vault.url, "https://my-vault.vault.azure.net/");
    assert_eq!(config.vault.credential, CredentialConfig::default(), "managed identity");
    assert!(matches!(config.targets["orders-db"].target, TargetKind::Postgres(_)));
    assert!(matches!(config.targets["shop-db"].target, TargetKind::Mariadb(_)));
    assert!(matches!(config.targets["sessions-cache"].target, TargetKind::Redis(_)));
    assert!(matches!(config.targets["intranet"].target, TargetKind::Htpasswd(_)));
    assert!(matches!(config.targets["legacy-app"].target, TargetKind::Exec(_)));
    assert_eq!(config.engine.max_attempts, 5);
    assert!(config.admin.enabled && config.admin.listen.ip().is_loopback(), "the admin listener on loopback");
}
