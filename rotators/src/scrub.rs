//! Redaction of known secrets from text that leaves a rotator.
//!
//! A driver's or a server's error message is no place to rely on for not echoing a
//! password, so a rotator passes such text through a [`Scrubber`] holding every secret
//! of the request (passwords, and what is derived from them, such as a SCRAM verifier)
//! before the text becomes a [`RotatorError`](crate::RotatorError).
//!
//! The scrubber's copies of the secrets are [`SecretString`]s, zeroized when it is
//! dropped, and so is every intermediate copy of the text it cleans: the text it is
//! given may hold a secret, and only its redacted result survives.

use std::fmt;

use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};

use crate::SetPasswordRequest;

/// What a redacted secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Longest text from a server (or a library's error) [`Scrubber::shown`] keeps.
pub const MAX_SHOWN_TEXT: usize = 200;

/// Known secrets to remove from text; see the [module docs](self).
pub struct Scrubber {
    /// Non-empty, longest first, so a secret containing another is removed whole.
    secrets: Vec<SecretString>,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scrubber({} secrets)", self.secrets.len())
    }
}

impl Scrubber {
    /// A scrubber for `secrets` (copied; empty ones are ignored).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a SecretString>) -> Self {
        let mut secrets: Vec<SecretString> =
            secrets.into_iter().filter(|s| !s.expose_secret().is_empty()).cloned().collect();
        // Test builds: every secret a rotator guards is one the leak scanner searches for.
        #[cfg(feature = "leak-ledger")]
        for secret in &secrets {
            kv_rotator_leakscan::record(kv_rotator_leakscan::Kind::Handled, secret.expose_secret());
        }
        secrets.sort_by_key(|s| std::cmp::Reverse(s.expose_secret().len()));
        Self { secrets }
    }

    /// Every password of `req` (pending, current, previous, admin), plus `derived`
    /// secrets the rotator computed from them (e.g. the verifier it sends).
    pub fn for_request<'a>(req: &SetPasswordRequest, derived: impl IntoIterator<Item = &'a str>) -> Self {
        let derived: Vec<SecretString> = derived.into_iter().map(|s| SecretString::from(s.to_owned())).collect();
        #[cfg(feature = "leak-ledger")]
        for secret in &derived {
            kv_rotator_leakscan::record(kv_rotator_leakscan::Kind::Derived, secret.expose_secret());
        }
        let passwords = [&req.pending, &req.current].into_iter().chain(&req.previous);
        Self::new(passwords.chain(req.admin.as_ref().map(|admin| &admin.password)).chain(&derived))
    }

    /// The secrets held, e.g. to build a larger scrubber once more become known
    /// (`Scrubber::new(more.iter().chain(scrub.secrets()))`).
    pub fn secrets(&self) -> impl Iterator<Item = &SecretString> {
        self.secrets.iter()
    }

    /// Text from a server, or a library's error, as a message shows it: scrubbed whole,
    /// then cut to [`MAX_SHOWN_TEXT`] characters (cut first, a password echoed across the
    /// cut would leave its prefix), then escaped like names (`{:?}`: no line break or
    /// terminal escape of a server's reaches a log).
    pub fn shown(&self, text: String) -> String {
        let clean = Zeroizing::new(self.clean(text));
        let cut = Zeroizing::new(clean.chars().take(MAX_SHOWN_TEXT).collect::<String>());
        format!("{:?}", cut.as_str())
    }

    /// `text` with every known secret replaced by [`REDACTED`]. The text given, and each
    /// intermediate copy, is zeroized.
    pub fn clean(&self, text: String) -> String {
        let mut text = Zeroizing::new(text);
        for secret in &self.secrets {
            let secret = secret.expose_secret();
            if text.contains(secret) {
                text = Zeroizing::new(text.replace(secret, REDACTED));
            }
        }
        std::mem::take(&mut *text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Credential;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn every_secret_is_removed_whole_and_none_is_shown() {
        let secrets = [secret("hunter2"), secret(""), secret("hunter2hunter2")];
        let s = Scrubber::new(&secrets);
        assert_eq!(s.clean("a hunter2hunter2 b hunter2 c".into()), "a [REDACTED] b [REDACTED] c");
        assert_eq!(s.clean("nothing secret".into()), "nothing secret");
        assert_eq!(format!("{s:?}"), "Scrubber(2 secrets)");

        let more = [secret("hash-of-old-pw")];
        let larger = Scrubber::new(more.iter().chain(s.secrets()));
        assert_eq!(larger.clean("hunter2 hash-of-old-pw".into()), "[REDACTED] [REDACTED]");

        // Scrubbed before the cut, so a secret across it leaves nothing; then escaped.
        let long = format!("{}hunter2hunter2\n\x1b[2J", "x".repeat(MAX_SHOWN_TEXT - 3));
        let shown = s.shown(long);
        assert!(!shown.contains("hun") && !shown.contains('\n') && !shown.contains('\x1b'), "{shown}");
        assert_eq!(s.shown("a\nb hunter2".into()), "\"a\\nb [REDACTED]\"");
    }

    #[test]
    fn a_request_scrubs_each_password_and_what_was_derived() {
        let req = SetPasswordRequest {
            username: "app".into(),
            pending: secret("pending-pw"),
            current: secret("current-pw"),
            previous: vec![secret("previous-pw")],
            admin: Some(Credential { username: "admin".into(), password: secret("admin-pw") }),
            pending_is_new: false,
        };
        let s = Scrubber::for_request(&req, ["SCRAM-SHA-256$4096:salt$key"]);
        let text = "pending-pw current-pw previous-pw admin-pw SCRAM-SHA-256$4096:salt$key app".to_owned();
        assert_eq!(s.clean(text), "[REDACTED] [REDACTED] [REDACTED] [REDACTED] [REDACTED] app");
    }
}
