//! Rotator kinds as registrations: a `kind = "…"` name plus the type its profile's
//! settings parse into, which builds the rotator.
//!
//! - [`KindSettings`]: what a kind's settings type implements — which strategies the kind
//!   offers, and how to build its [`Rotator`] for a profile.
//! - [`RotatorKind`]: one registration, made with [`RotatorKind::new`] from a settings type
//!   that deserializes (with `deny_unknown_fields`, so a typo is an error naming the key).
//! - [`Registry`]: the kinds a binary knows. [`Registry::builtin`] has every kind compiled
//!   into this crate; a crate outside the workspace adds its own with [`Registry::with`]
//!   and hands the result to `kv_rotator::run` (see `examples/custom-rotator/`).
//! - [`install`] / [`installed`]: the registry of this process, read when the
//!   configuration is loaded. The configuration is read through serde and figment, which
//!   cannot pass a value down to a field's deserializer; so the registry is set once, at
//!   the start of `main`, before any configuration is read.
//!
//! The built-in kinds are registered exactly as a custom one is: each rotator module
//! implements [`KindSettings`] for its own config type.

use std::any::Any;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;

use crate::common::Strategy;
use crate::{PasswordPolicy, Rotator};

/// Words that mark a setting key or an environment variable name as a secret: such
/// values belong in Key Vault (the admin login), not in the configuration.
pub const SECRET_WORDS: &[&str] = &["password", "passwd", "secret", "token", "credential", "private_key", "api_key"];

/// Whether a key, variable or option name names a secret: it contains one of
/// [`SECRET_WORDS`] (any case, `-` read as `_`) or one of its words is `pass` or `pwd` —
/// unless it names where a secret is kept (its last word is `file`, `path`, `dir` or
/// `env`: `token_file`, `--password-env`), which is configuration.
pub fn looks_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase().replace('-', "_");
    let words: Vec<&str> = name.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).collect();
    if words.last().is_some_and(|last| ["file", "path", "dir", "env"].contains(last)) {
        return false;
    }
    SECRET_WORDS.iter().any(|w| name.contains(w)) || words.iter().any(|w| ["pass", "pwd", "apikey"].contains(w))
}

/// The first key in `settings` (at any depth, tables inside arrays too) that
/// [`looks_secret`], as a dotted path.
pub fn secret_looking_key(settings: &serde_json::Value) -> Option<String> {
    match settings {
        serde_json::Value::Object(map) => map.iter().find_map(|(key, value)| {
            if looks_secret(key) {
                Some(key.clone())
            } else {
                secret_looking_key(value).map(|inner| format!("{key}.{inner}"))
            }
        }),
        serde_json::Value::Array(items) => items.iter().find_map(secret_looking_key),
        _ => None,
    }
}

/// Why a rotator could not be built from valid settings (a CA file that cannot be read…).
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// What a profile gives a kind besides its own settings.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ProfileContext<'a> {
    /// The profile's name (`[targets.NAME]`).
    pub name: &'a str,
    /// The policy for generated passwords.
    pub password: &'a PasswordPolicy,
    /// The profile's strategy; [`KindSettings::offers`] accepted it.
    pub strategy: Strategy,
}

impl<'a> ProfileContext<'a> {
    /// A profile's context.
    pub fn new(name: &'a str, password: &'a PasswordPolicy, strategy: Strategy) -> Self {
        Self { name, password, strategy }
    }
}

/// A kind's parsed settings: everything of a `[targets.NAME]` section that is not a
/// profile-level key (`accounts`, `admin`, `password`, `strategy`…).
///
/// `Debug` is printed in configuration dumps: it must not show a secret (settings name
/// environment variables and files, they do not hold passwords).
pub trait KindSettings: Any + fmt::Debug + Send + Sync {
    /// Whether this kind offers `strategy`; if not, why (the configuration error says it).
    fn offers(&self, strategy: Strategy) -> Result<(), Cow<'static, str>>;

    /// The rotator for one profile.
    fn build(&self, profile: &ProfileContext<'_>) -> Result<Arc<dyn Rotator>, BuildError>;
}

/// For [`KindSettings::offers`] of a kind that offers every strategy but `refused`: `why`
/// for that one.
pub fn all_strategies_but(strategy: Strategy, refused: Strategy, why: &'static str) -> Result<(), Cow<'static, str>> {
    if strategy == refused {
        Err(why.into())
    } else {
        Ok(())
    }
}

type Parse = dyn Fn(serde_json::Value) -> Result<Arc<dyn KindSettings>, String> + Send + Sync;

/// One registered kind: its `kind = "…"` name and how its settings are read.
#[derive(Clone)]
pub struct RotatorKind {
    name: Cow<'static, str>,
    parse: Arc<Parse>,
}

impl fmt::Debug for RotatorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotatorKind").field("name", &self.name).finish_non_exhaustive()
    }
}

impl RotatorKind {
    /// The kind `name`, whose settings deserialize into `S`.
    pub fn new<S: KindSettings + DeserializeOwned>(name: impl Into<Cow<'static, str>>) -> Self {
        let parse = |settings: serde_json::Value| {
            serde_json::from_value::<S>(settings)
                .map(|s| Arc::new(s) as Arc<dyn KindSettings>)
                .map_err(|e| e.to_string())
        };
        Self { name: name.into(), parse: Arc::new(parse) }
    }

    /// A kind name that is known but refused, with `why` (e.g. `mysql`: say what to use
    /// instead rather than "unknown kind").
    pub fn refused(name: impl Into<Cow<'static, str>>, why: &'static str) -> Self {
        Self { name: name.into(), parse: Arc::new(move |_| Err(why.to_owned())) }
    }

    /// The `kind = "…"` spelling.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The kinds one binary knows, by name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<Cow<'static, str>, RotatorKind>,
}

/// A second registration of a name.
#[derive(Debug, thiserror::Error)]
#[error("rotator kind {0:?} is registered twice")]
pub struct DuplicateKind(pub String);

impl Registry {
    /// No kinds at all.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Every kind compiled into this crate (by its cargo features).
    // One push per cargo feature: `vec![…]` cannot leave out an element by `cfg`.
    #[allow(clippy::vec_init_then_push)]
    pub fn builtin() -> Self {
        let mut kinds = Vec::new();
        #[cfg(feature = "postgres")]
        kinds.push(RotatorKind::new::<crate::postgres::PostgresConfig>("postgres"));
        #[cfg(feature = "mariadb")]
        kinds.push(RotatorKind::new::<crate::mariadb::MariaDbConfig>("mariadb"));
        kinds.push(RotatorKind::refused(
            "mysql",
            "not supported (MariaDB only): the rotator uses MariaDB's SQL and proves each login by \
             the hash MariaDB prints in SHOW GRANTS, which MySQL does not; use kind = \"mariadb\" for a MariaDB \
             server",
        ));
        #[cfg(feature = "redis")]
        kinds.push(RotatorKind::new::<crate::redis::RedisConfig>("redis"));
        #[cfg(feature = "ldap")]
        kinds.push(RotatorKind::new::<crate::ldap::LdapConfig>("ldap"));
        #[cfg(feature = "htpasswd")]
        kinds.push(RotatorKind::new::<crate::htpasswd::HtpasswdConfig>("htpasswd"));
        #[cfg(feature = "exec")]
        kinds.push(RotatorKind::new::<crate::exec::ExecConfig>("exec"));
        kinds.into_iter().fold(Self::empty(), Self::with)
    }

    /// Adds `kind`, or says it is there already.
    pub fn register(&mut self, kind: RotatorKind) -> Result<(), DuplicateKind> {
        if self.kinds.contains_key(&kind.name) {
            return Err(DuplicateKind(kind.name.into_owned()));
        }
        self.kinds.insert(kind.name.clone(), kind);
        Ok(())
    }

    /// This registry and `kind`.
    ///
    /// # Panics
    /// If the name is registered already: two kinds of one name are a mistake in the
    /// binary's `main`, found the first time it starts.
    pub fn with(mut self, kind: RotatorKind) -> Self {
        if let Err(e) = self.register(kind) {
            panic!("{e}");
        }
        self
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(|k| k.as_ref())
    }

    /// Reads `settings` as kind `kind`'s, or says what is wrong (unknown kind, unknown or
    /// missing key, wrong type).
    /// Every kind's keys are checked first: one that [`looks_secret`] is refused, since the
    /// configuration holds no secret (a kind reads its passwords from Key Vault).
    pub fn parse(&self, kind: &str, settings: serde_json::Value) -> Result<Arc<dyn KindSettings>, String> {
        if let Some(key) = secret_looking_key(&settings) {
            return Err(format!(
                "{key} looks like a secret: the configuration holds none (the profile's admin login comes from Key \
                 Vault)"
            ));
        }
        match self.kinds.get(kind) {
            Some(registered) => (registered.parse)(settings),
            None => Err(format!(
                "unknown kind {kind:?}; this build knows {}",
                self.names().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

static INSTALLED: OnceLock<Registry> = OnceLock::new();

/// Makes `registry` this process's; fails (giving it back) if one was installed already,
/// or if a configuration was read before — which fixed [`Registry::builtin`].
pub fn install(registry: Registry) -> Result<(), Registry> {
    INSTALLED.set(registry)
}

/// This process's registry: the one [`install`]ed, or the built-in kinds if none was.
pub fn installed() -> &'static Registry {
    INSTALLED.get_or_init(Registry::builtin)
}
