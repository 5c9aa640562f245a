//! Shared-key authentication: a key in a query parameter or a header, compared by its
//! SHA-256 digest in constant time against up to two accepted keys (the current and,
//! while the key is rotated, the previous one).

use std::borrow::Cow;
use std::fmt;

use axum::http::request::Parts;
use axum::http::{header, HeaderName};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::{config_error, AuthConfigError, AuthError};

/// Default query parameter carrying the shared key.
pub const DEFAULT_KEY_QUERY_PARAMETER: &str = "key";
/// Default header carrying the shared key.
pub const DEFAULT_KEY_HEADER: &str = "x-kv-rotator-key";
/// Shortest shared key accepted.
pub const MIN_KEY_LEN: usize = 16;

/// Shared-key authentication. Holds the SHA-256 digests of the accepted keys, never
/// the keys; comparing digests in constant time also hides the key's length.
pub struct SharedKey {
    digests: Vec<[u8; 32]>,
    query_parameter: String,
    header: HeaderName,
}

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedKey")
            .field("keys", &self.digests.len())
            .field("query_parameter", &self.query_parameter)
            .field("header", &self.header)
            .finish()
    }
}

impl SharedKey {
    /// Accepts `current`, and `previous` too while a key rotation is under way.
    /// Keys shorter than [`MIN_KEY_LEN`] are refused.
    pub fn new(current: &SecretString, previous: Option<&SecretString>) -> Result<Self, AuthConfigError> {
        let mut digests = Vec::with_capacity(2);
        for (setting, key) in [("shared key", Some(current)), ("previous shared key", previous)] {
            let Some(key) = key else { continue };
            let key = key.expose_secret();
            if key.chars().count() < MIN_KEY_LEN {
                return Err(config_error(setting, format!("shorter than {MIN_KEY_LEN} characters")));
            }
            if key.trim() != key {
                return Err(config_error(setting, "has leading or trailing whitespace"));
            }
            digests.push(Sha256::digest(key.as_bytes()).into());
        }
        Ok(Self {
            digests,
            query_parameter: DEFAULT_KEY_QUERY_PARAMETER.to_owned(),
            header: HeaderName::from_static(DEFAULT_KEY_HEADER),
        })
    }

    /// The query parameter carrying the key (default [`DEFAULT_KEY_QUERY_PARAMETER`]).
    pub fn with_query_parameter(mut self, name: &str) -> Result<Self, AuthConfigError> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(config_error("query_parameter", format!("{name:?} is not a plain parameter name")));
        }
        self.query_parameter = name.to_owned();
        Ok(self)
    }

    /// The header carrying the key (default [`DEFAULT_KEY_HEADER`]); any case.
    pub fn with_header(mut self, name: &str) -> Result<Self, AuthConfigError> {
        let header = HeaderName::try_from(name.to_ascii_lowercase())
            .map_err(|_| config_error("header", format!("{name:?} is not a header name")))?;
        if header == header::AUTHORIZATION {
            return Err(config_error("header", "Authorization is reserved for Entra ID tokens"));
        }
        self.header = header;
        Ok(self)
    }

    pub(super) fn check(&self, parts: &Parts) -> Result<(), AuthError> {
        let from_header = parts.headers.get(&self.header).map(|v| Cow::Borrowed(v.as_bytes()));
        let from_query = parts.uri.query().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes()).find(|(name, _)| name == self.query_parameter.as_str()).map(
                |(_, value)| match value {
                    Cow::Borrowed(value) => Cow::Borrowed(value.as_bytes()),
                    Cow::Owned(value) => Cow::Owned(value.into_bytes()),
                },
            )
        });
        if from_header.is_none() && from_query.is_none() {
            return Err(AuthError::Missing("no shared key in the query or the header"));
        }
        let mut accepted = Choice::from(0);
        for candidate in from_header.iter().chain(from_query.iter()) {
            let digest: [u8; 32] = Sha256::digest(candidate).into();
            // Every accepted key is compared, so timing says nothing about which matched.
            for known in &self.digests {
                accepted |= known.ct_eq(&digest);
            }
        }
        if bool::from(accepted) {
            Ok(())
        } else {
            Err(AuthError::Invalid("shared key does not match".to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::parts;

    fn key(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn shared_key_from_query_or_header_and_two_keys_for_rotation() {
        let auth = SharedKey::new(&key("current-key-0123456789"), Some(&key("previous-key-0123456789"))).unwrap();
        assert_eq!(auth.check(&parts("/api/eventgrid?key=current-key-0123456789", &[])), Ok(()));
        assert_eq!(auth.check(&parts("/?a=b&key=previous-key-0123456789", &[])), Ok(()));
        assert_eq!(auth.check(&parts("/", &[("X-KV-Rotator-Key", "current-key-0123456789")])), Ok(()));
        assert!(matches!(auth.check(&parts("/?key=current-key-012345678", &[])), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.check(&parts("/?code=current-key-0123456789", &[])), Err(AuthError::Missing(_))));
        // Percent-encoding in the query is decoded.
        let auth = SharedKey::new(&key("a+b/c=d&e 0123456789"), None).unwrap().with_query_parameter("code").unwrap();
        assert_eq!(auth.check(&parts("/?code=a%2Bb%2Fc%3Dd%26e%200123456789", &[])), Ok(()));
    }

    #[test]
    fn shared_key_settings_are_checked() {
        assert_eq!(SharedKey::new(&key("short"), None).unwrap_err().setting, "shared key");
        assert_eq!(SharedKey::new(&key(" padded-key-0123456789"), None).unwrap_err().setting, "shared key");
        let ok = || SharedKey::new(&key("0123456789abcdef"), None).unwrap();
        assert!(ok().with_header("Authorization").is_err());
        assert!(ok().with_header("bad header").is_err());
        assert!(ok().with_query_parameter("a&b").is_err());
        let debug = format!("{:?}", ok());
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
    }
}
