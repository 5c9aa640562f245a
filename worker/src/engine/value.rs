//! What a managed secret's value holds, and so which login on the target it stands for.
//!
//! - [`Shape::Plain`] (single-user and multi-password): the value is the password of the
//!   account the secret's `CredentialId` names.
//! - [`Shape::Pair`] (alternating-users): the value is a JSON object carrying the
//!   active account too, `{"username": "app_clone", "password": "…"}` — the shape AWS's
//!   rotation functions use, so consumers written for it read it as they are. Other
//!   fields of the object (`host`, `dbname`, …) are carried over to new versions. The
//!   account is the `CredentialId` (the primary) or its twin (the primary's name plus the
//!   profile's `twin_suffix`), nothing else: a value naming another account is refused,
//!   so an edited value cannot point the admin login elsewhere. A plain value (a secret
//!   onboarded with the primary's password) stands for the primary.
//!
//! Journal records hold exactly the value `finish` writes, so the comparisons of journal
//! and version values hold in both shapes.

use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// How a profile's secrets hold their login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// The value is the password of the `CredentialId` account.
    Plain,
    /// A JSON `{"username", "password"}` naming the primary or its twin.
    Pair {
        /// Appended to the primary's name to name its twin.
        twin_suffix: String,
    },
}

/// A login a value stands for.
#[derive(Clone)]
pub struct Login {
    /// The account.
    pub user: String,
    /// Its password.
    pub password: SecretString,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("user", &self.user).finish_non_exhaustive()
    }
}

/// The JSON form: `username` and `password` exactly once each (a duplicate, or a key
/// that differs only in case, is refused: readers that take the last one, or ignore case,
/// would see another login than kv-rotator); other fields are kept as they are.
struct PairValue {
    username: String,
    password: SecretString,
    rest: Vec<(String, serde_json::Value)>,
}

impl<'de> Deserialize<'de> for PairValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = PairValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object with \"username\" and \"password\"")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<PairValue, A::Error> {
                use serde::de::Error;
                let (mut username, mut password, mut rest) = (None, None, Vec::<(String, serde_json::Value)>::new());
                while let Some(key) = map.next_key::<String>()? {
                    let lower = key.to_ascii_lowercase();
                    let seen = |k: &str| rest.iter().any(|(r, _)| r.eq_ignore_ascii_case(k));
                    match key.as_str() {
                        "username" if username.is_none() => username = Some(map.next_value::<String>()?),
                        "password" if password.is_none() => password = Some(map.next_value::<SecretString>()?),
                        _ if lower == "username" || lower == "password" => {
                            return Err(A::Error::custom("\"username\" or \"password\" more than once"))
                        }
                        _ if seen(&key) => return Err(A::Error::custom("a field more than once")),
                        _ => rest.push((key, map.next_value()?)),
                    }
                }
                match (username, password) {
                    (Some(username), Some(password)) => Ok(PairValue { username, password, rest }),
                    _ => Err(A::Error::custom("\"username\" and \"password\" are both required")),
                }
            }
        }
        d.deserialize_map(Visit)
    }
}

impl Shape {
    /// The twin of `primary` under this shape.
    pub fn twin(&self, primary: &str) -> Option<String> {
        match self {
            Shape::Plain => None,
            Shape::Pair { twin_suffix } => Some(format!("{primary}{twin_suffix}")),
        }
    }

    /// The login `value` stands for, in a secret whose `CredentialId` is `primary`.
    /// Errors never quote the value: a field holding a password by mistake stays out.
    pub fn login_of(&self, primary: &str, value: &SecretString) -> Result<Login, String> {
        let plain = || Login { user: primary.to_owned(), password: value.clone() };
        let Some(twin) = self.twin(primary) else { return Ok(plain()) };
        let pair = match parse_pair(value) {
            None => return Ok(plain()),
            Some(Err(why)) => {
                return Err(format!("the value is a JSON object kv-rotator cannot read as a login ({why})"))
            }
            Some(Ok(pair)) => pair,
        };
        if pair.username != primary && pair.username != twin {
            return Err(format!(
                "the value names an account (not shown) that is neither the secret's CredentialId {primary:?} nor \
                 its twin {twin:?}"
            ));
        }
        Ok(Login { user: pair.username, password: pair.password })
    }

    /// The value to store for `login`: the password itself, or the JSON object with the
    /// fields of `template` (the latest version's value) other than the login's.
    pub fn value_for(&self, login: &Login, template: &SecretString) -> SecretString {
        match self {
            Shape::Plain => login.password.clone(),
            Shape::Pair { .. } => {
                let rest = parse_pair(template).and_then(Result::ok).map(|p| p.rest).unwrap_or_default();
                let mut text = Zeroizing::new(String::from("{"));
                text.push_str(&format!("\"username\":{}", serde_json::Value::String(login.user.clone())));
                let password =
                    Zeroizing::new(serde_json::to_string(login.password.expose_secret()).expect("a string serializes"));
                text.push_str(",\"password\":");
                text.push_str(&password);
                for (key, value) in &rest {
                    text.push_str(&format!(",{}:{value}", serde_json::Value::String(key.clone())));
                }
                text.push('}');
                SecretString::from(text.to_string())
            }
        }
    }
}

/// `None` for a value that is not a JSON object (a plain password); `Some(Err(why))` for
/// one that looks like an object but is not a login kv-rotator can read (without the
/// value in `why`: serde's messages here name the problem and a position only).
fn parse_pair(value: &SecretString) -> Option<Result<PairValue, String>> {
    let text = value.expose_secret().trim_start();
    if !text.starts_with('{') {
        return None;
    }
    Some(serde_json::from_str(text).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        format!("{:?} error at line {line} column {column}", e.classify())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn plain_values_are_the_primary_password() {
        let login = Shape::Plain.login_of("app", &secret("{\"username\":\"x\",\"password\":\"y\"}")).unwrap();
        assert_eq!(
            (login.user.as_str(), login.password.expose_secret()),
            ("app", "{\"username\":\"x\",\"password\":\"y\"}")
        );
        let value = Shape::Plain.value_for(&login, &secret("old"));
        assert_eq!(value.expose_secret(), login.password.expose_secret());
    }

    #[test]
    fn pairs_name_the_primary_or_its_twin_and_keep_other_fields() {
        let shape = Shape::Pair { twin_suffix: "_clone".into() };
        assert_eq!(shape.twin("app").as_deref(), Some("app_clone"));
        // Onboarded with the primary's plain password.
        let login = shape.login_of("app", &secret("s3cr\"t")).unwrap();
        assert_eq!((login.user.as_str(), login.password.expose_secret()), ("app", "s3cr\"t"));
        let template = secret(r#"{"username":"app","password":"old","host":"db.internal","port":5432}"#);
        let next = Login { user: "app_clone".into(), password: secret("n\"e\\w") };
        let value = shape.value_for(&next, &template);
        let parsed: serde_json::Value = serde_json::from_str(value.expose_secret()).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"username": "app_clone", "password": "n\"e\\w", "host": "db.internal", "port": 5432})
        );
        let back = shape.login_of("app", &value).unwrap();
        assert_eq!((back.user.as_str(), back.password.expose_secret()), ("app_clone", "n\"e\\w"));
        let hostile = secret(r#"{"username":"postgres-pw-1","password":"x"}"#);
        let e = shape.login_of("app", &hostile).unwrap_err();
        assert!(!e.contains("postgres-pw-1") && !e.contains("\"x\""), "the value is not quoted: {e}");
        for unreadable in [
            r#"{"username":"app","password":"x","username":"app_clone"}"#,
            r#"{"username":"app","password":"x","Password":"stale"}"#,
            r#"{"username":"app","password":"x","host":"a","host":"b"}"#,
            r#"{"username":"app","password":7}"#,
            r#"{"username":"app"}"#,
            r#"{"username":"app","password":"x"} trailing"#,
        ] {
            let e = shape.login_of("app", &secret(unreadable)).unwrap_err();
            assert!(e.contains("cannot read") && !e.contains("stale") && !e.contains("\"x\""), "{unreadable}: {e}");
        }
        assert!(!format!("{back:?}").contains("n\\\"e"), "Debug shows no password");
    }
}
