//! A kind registered from outside the workspace loads like a built-in one: its keys are
//! read by its own type, a typo in them is named, its strategy rule is applied, and the
//! built-in kinds stay. One test: the registry is installed once per process.

use std::borrow::Cow;
use std::sync::Arc;

use kv_rotator_config::figment::providers::{Format, Toml};
use kv_rotator_config::figment::Figment;
use kv_rotator_config::load::from_figment;
use kv_rotator_config::Config;
use kv_rotator_rotators::common::Strategy;
use kv_rotator_rotators::htpasswd::{HtpasswdConfig, HtpasswdRotator};
use kv_rotator_rotators::registry::{self, BuildError, KindSettings, ProfileContext, Registry, RotatorKind};
use kv_rotator_rotators::Rotator;
use serde::Deserialize;

/// A legacy application that keeps its users in an htpasswd file of its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyApp {
    users_file: std::path::PathBuf,
    site: String,
}

impl KindSettings for LegacyApp {
    fn offers(&self, strategy: Strategy) -> Result<(), Cow<'static, str>> {
        match strategy {
            Strategy::SingleUser => Ok(()),
            _ => Err("the legacy app has one password per user".into()),
        }
    }

    fn build(&self, profile: &ProfileContext<'_>) -> Result<Arc<dyn Rotator>, BuildError> {
        let file = HtpasswdConfig::new(&self.users_file);
        Ok(Arc::new(HtpasswdRotator::new(file, profile.password.clone())))
    }
}

const VAULT: &str = "[vault]\nurl = \"https://v.vault.azure.net/\"\n";

fn load(profile: &str) -> Result<Config, String> {
    from_figment(Figment::from(Toml::string(&format!("{VAULT}{profile}")))).map_err(|e| e.to_string())
}

#[test]
fn a_registered_kind_loads_checks_its_keys_and_strategies_and_builds() {
    registry::install(Registry::builtin().with(RotatorKind::new::<LegacyApp>("legacy-app"))).unwrap();
    assert!(registry::install(Registry::builtin()).is_err(), "a second registry is refused");

    let profile = "[targets.legacy]\nkind = \"legacy-app\"\nusers_file = \"/srv/legacy/users\"\nsite = \"eu\"\n\
                   accounts = [\"bot_*\"]\n";
    let config = load(profile).unwrap();
    let target = &config.targets["legacy"].target;
    assert_eq!(target.name(), "legacy-app");
    let settings = target.settings::<LegacyApp>().expect("the kind's own type");
    assert_eq!((settings.users_file.to_str(), settings.site.as_str()), (Some("/srv/legacy/users"), "eu"));
    let policy = config.targets["legacy"].password.clone();
    let rotator = target.build(&ProfileContext::new("legacy", &policy, Strategy::SingleUser)).unwrap();
    assert_eq!(rotator.kind(), "htpasswd");

    // A typo in the kind's keys is named, with the profile it is in.
    let e = load(&profile.replace("site =", "sight =")).unwrap_err();
    assert!(e.contains("unknown field `sight`") && e.contains("targets.legacy"), "{e}");
    let e = load(&profile.replace("site = \"eu\"\n", "")).unwrap_err();
    assert!(e.contains("missing field `site`"), "{e}");
    // No kind's settings hold a secret, whatever its own type would accept.
    let e = load(&profile.replace("site = \"eu\"", "site = \"eu\"\nhosts = [{ name = \"a\", api-token = \"x\" }]"))
        .unwrap_err();
    assert!(e.contains("hosts.api-token looks like a secret"), "{e}");
    // The kind's own strategy rule.
    let e = load(&format!("{profile}strategy = \"multi-password\"\n")).unwrap_err();
    assert!(e.contains("the legacy app has one password per user"), "{e}");
    // An unknown kind lists what this build knows, the new one and the built-in ones.
    let e = load(&profile.replace("legacy-app", "legacy-ap")).unwrap_err();
    assert!(
        e.contains("unknown kind \"legacy-ap\"") && e.contains("\"legacy-app\"") && e.contains("\"postgres\""),
        "{e}"
    );
    // Built-in kinds are still there.
    let config = load("[targets.intranet]\nkind = \"htpasswd\"\npath = \"/srv/users\"\naccounts = [\"*\"]\n").unwrap();
    assert!(config.targets["intranet"].target.settings::<HtpasswdConfig>().is_some());
}

#[test]
fn a_name_registered_twice_is_refused() {
    let mut registry = Registry::builtin();
    let e = registry.register(RotatorKind::new::<LegacyApp>("postgres")).unwrap_err();
    assert_eq!(e.to_string(), "rotator kind \"postgres\" is registered twice");
    assert!(registry.names().any(|n| n == "postgres"));
}
