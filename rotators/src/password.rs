//! Password policy and generation.
//!
//! - [`PasswordPolicy`]: what a target accepts — length, which character classes may
//!   appear, how many of each are required, extra characters to avoid. It is read from a
//!   target profile's `password` table (unknown keys are errors) and checked with
//!   [`PasswordPolicy::validate`] when the configuration loads.
//! - [`PasswordPolicy::generate`]: a new password from the thread-local CSPRNG
//!   (`rand::rng()`, ChaCha12 reseeded from the OS), each character drawn uniformly, the
//!   required minimum of each class guaranteed, then shuffled so the required characters
//!   sit at random positions.
//! - [`PolicyError`]: why a policy cannot produce a password.
//!
//! # The default symbol set
//!
//! Passwords end up in connection strings (URLs, libpq `key=value`, ADO.NET/JDBC/ODBC),
//! shell command lines and environment files, YAML and JSON, and Power Automate Desktop
//! variables. The default `symbols` is `-_.`: three of RFC 3986's unreserved characters,
//! which need no escaping in any of those. Left out on purpose: `~` (tilde expansion in
//! shells, also after `=` in assignments), `!` (history expansion), `*` `?` `[` (globs),
//! `+` (a space in form-encoded URLs), `=` `;` `{` `}` `'` `"` (connection-string syntax),
//! `%` (Power Automate Desktop variables, percent-encoding), `@` `:` `/` `#` `?` `&` (URL
//! syntax), `$` `` ` `` `\` (shell and SQL quoting).
//!
//! Symbols add little strength: 32 characters from 65 give about 190 bits. They exist to
//! satisfy targets that demand one; such a profile sets `min_symbols` (and `symbols`
//! when the target wants a particular set).

use rand::seq::{IndexedRandom, SliceRandom};
use secrecy::SecretString;
use serde::Deserialize;

/// Shortest password a policy may ask for.
pub const MIN_LENGTH: usize = 12;
/// Longest password a policy may ask for.
pub const MAX_LENGTH: usize = 256;
/// The default `symbols`; see the module documentation for why these.
pub const DEFAULT_SYMBOLS: &str = "-_.";

const LOWERCASE: &str = "abcdefghijklmnopqrstuvwxyz";
const UPPERCASE: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const DIGITS: &str = "0123456789";

/// Policy for generated passwords, from a target profile's `password` table.
///
/// Defaults: 32 characters; lower case, upper case and digits allowed and at least one of
/// each required; symbols from [`DEFAULT_SYMBOLS`] allowed, none required; nothing
/// excluded.
///
/// ```toml
/// [targets.orders-db.password]
/// length = 24
/// symbols = "-_.!"
/// min_symbols = 1
/// exclude = "lIO01"   # easier to read aloud
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordPolicy {
    /// Number of characters, [`MIN_LENGTH`]..=[`MAX_LENGTH`].
    pub length: usize,
    /// Whether `a`-`z` may appear.
    pub lowercase: bool,
    /// Whether `A`-`Z` may appear.
    pub uppercase: bool,
    /// Whether `0`-`9` may appear.
    pub digits: bool,
    /// The symbols that may appear: printable ASCII punctuation, no letters, digits or
    /// spaces. Empty means no symbols.
    pub symbols: String,
    /// Characters that never appear, whatever their class.
    pub exclude: String,
    /// At least this many lower-case letters.
    pub min_lowercase: usize,
    /// At least this many upper-case letters.
    pub min_uppercase: usize,
    /// At least this many digits.
    pub min_digits: usize,
    /// At least this many symbols.
    pub min_symbols: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            length: 32,
            lowercase: true,
            uppercase: true,
            digits: true,
            symbols: DEFAULT_SYMBOLS.to_owned(),
            exclude: String::new(),
            min_lowercase: 1,
            min_uppercase: 1,
            min_digits: 1,
            min_symbols: 0,
        }
    }
}

/// Why a [`PasswordPolicy`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `length` is outside [`MIN_LENGTH`]..=[`MAX_LENGTH`].
    #[error("length = {0} is out of range: it must be between {MIN_LENGTH} and {MAX_LENGTH}")]
    Length(usize),
    /// `symbols` holds something that is not printable ASCII punctuation.
    #[error(
        "symbols contains {0:?}: only printable ASCII punctuation is allowed (no letters, digits, spaces or non-ASCII)"
    )]
    InvalidSymbol(char),
    /// A class has a minimum but no character of it may appear.
    #[error("min_{class} = {min} but no {class} character is allowed ({reason})")]
    ClassImpossible {
        /// `lowercase`, `uppercase`, `digits` or `symbols`.
        class: &'static str,
        /// The configured minimum.
        min: usize,
        /// Why the class is empty.
        reason: &'static str,
    },
    /// The minimums add up to more than `length`.
    #[error("the min_* settings require {required} characters but length is {length}")]
    TooManyRequired {
        /// Sum of the minimums.
        required: usize,
        /// The configured length.
        length: usize,
    },
    /// No character at all may appear.
    #[error("no character is allowed: enable a class or remove characters from exclude")]
    EmptyAlphabet,
}

/// One character class after `exclude` is applied.
struct Class {
    chars: Vec<u8>,
    min: usize,
}

impl PasswordPolicy {
    /// Checks that the policy can produce passwords; the error names the setting at fault.
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.classes().map(|_| ())
    }

    /// A new password following this policy.
    ///
    /// # Panics
    ///
    /// If the policy is invalid. Configuration loading calls [`PasswordPolicy::validate`],
    /// so a running worker never holds one; use [`PasswordPolicy::try_generate`] for
    /// policies that were not checked.
    pub fn generate(&self) -> SecretString {
        match self.try_generate() {
            Ok(password) => password,
            Err(e) => panic!("invalid password policy: {e}"),
        }
    }

    /// A new password following this policy, or why the policy cannot produce one.
    pub fn try_generate(&self) -> Result<SecretString, PolicyError> {
        let classes = self.classes()?;
        let alphabet: Vec<u8> = classes.iter().flat_map(|c| c.chars.iter().copied()).collect();
        let mut rng = rand::rng();
        // Exact capacity: `SecretString::from(String)` turns it into a `Box<str>`, which
        // reallocates (leaving an unzeroized copy behind) unless capacity == length.
        let mut buf: Vec<u8> = Vec::with_capacity(self.length);
        for class in &classes {
            for _ in 0..class.min {
                // `choose` draws uniformly (rejection sampling, no modulo bias).
                buf.push(*class.chars.choose(&mut rng).expect("classes() drops empty classes"));
            }
        }
        while buf.len() < self.length {
            buf.push(*alphabet.choose(&mut rng).expect("classes() rejects an empty alphabet"));
        }
        // Fisher-Yates: the required characters must not always lead.
        buf.shuffle(&mut rng);
        let password = String::from_utf8(buf).expect("every alphabet is ASCII");
        #[cfg(feature = "leak-ledger")]
        kv_rotator_leakscan::record(kv_rotator_leakscan::Kind::Generated, &password);
        Ok(SecretString::from(password))
    }

    /// The allowed, non-empty classes with their minimums, or why the policy is unusable.
    fn classes(&self) -> Result<Vec<Class>, PolicyError> {
        if !(MIN_LENGTH..=MAX_LENGTH).contains(&self.length) {
            return Err(PolicyError::Length(self.length));
        }
        if let Some(bad) = self.symbols.chars().find(|c| !c.is_ascii_punctuation()) {
            return Err(PolicyError::InvalidSymbol(bad));
        }
        let specs: [(&'static str, bool, &str, usize); 4] = [
            ("lowercase", self.lowercase, LOWERCASE, self.min_lowercase),
            ("uppercase", self.uppercase, UPPERCASE, self.min_uppercase),
            ("digits", self.digits, DIGITS, self.min_digits),
            ("symbols", !self.symbols.is_empty(), &self.symbols, self.min_symbols),
        ];
        let mut classes = Vec::new();
        let mut required = 0usize;
        for (class, allowed, set, min) in specs {
            let mut chars: Vec<u8> = if allowed {
                set.bytes().filter(|b| !self.exclude.as_bytes().contains(b)).collect()
            } else {
                Vec::new()
            };
            // A symbol listed twice would be drawn twice as often.
            chars.sort_unstable();
            chars.dedup();
            if chars.is_empty() {
                if min > 0 {
                    let reason = if !allowed { "the class is disabled" } else { "exclude removes all of them" };
                    return Err(PolicyError::ClassImpossible { class, min, reason });
                }
                continue;
            }
            required = required.saturating_add(min);
            classes.push(Class { chars, min });
        }
        if classes.is_empty() {
            return Err(PolicyError::EmptyAlphabet);
        }
        if required > self.length {
            return Err(PolicyError::TooManyRequired { required, length: self.length });
        }
        Ok(classes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashSet;

    fn count(s: &str, f: impl Fn(char) -> bool) -> usize {
        s.chars().filter(|&c| f(c)).count()
    }

    #[test]
    fn default_policy_is_valid_and_honoured_over_many_samples() {
        let policy = PasswordPolicy::default();
        policy.validate().unwrap();
        let allowed: HashSet<char> =
            LOWERCASE.chars().chain(UPPERCASE.chars()).chain(DIGITS.chars()).chain(DEFAULT_SYMBOLS.chars()).collect();
        let mut seen = HashSet::new();
        let mut distinct = HashSet::new();
        for _ in 0..2000 {
            let p = policy.generate();
            let p = p.expose_secret();
            assert_eq!(p.len(), 32);
            assert!(p.chars().all(|c| allowed.contains(&c)), "character outside the default alphabet");
            assert!(count(p, |c| c.is_ascii_lowercase()) >= 1);
            assert!(count(p, |c| c.is_ascii_uppercase()) >= 1);
            assert!(count(p, |c| c.is_ascii_digit()) >= 1);
            seen.extend(p.chars());
            distinct.insert(p.to_owned());
        }
        assert_eq!(seen, allowed, "every allowed character shows up over 64k draws");
        assert_eq!(distinct.len(), 2000, "no repeated password");
    }

    #[test]
    fn custom_policy_minimums_and_exclusions_are_honoured() {
        let policy = PasswordPolicy {
            length: 12,
            symbols: "!-#".to_owned(),
            exclude: "aeiouAEIOU01#".to_owned(),
            min_lowercase: 2,
            min_uppercase: 3,
            min_digits: 3,
            min_symbols: 4,
            ..PasswordPolicy::default()
        };
        policy.validate().unwrap();
        for _ in 0..2000 {
            let p = policy.generate();
            let p = p.expose_secret();
            assert_eq!(p.len(), 12);
            assert!(!p.chars().any(|c| policy.exclude.contains(c)), "excluded character generated");
            assert!(count(p, |c| c.is_ascii_lowercase()) >= 2);
            assert!(count(p, |c| c.is_ascii_uppercase()) >= 3);
            assert!(count(p, |c| c.is_ascii_digit()) >= 3);
            assert!(count(p, |c| c == '!' || c == '-') >= 4);
            assert!(p.chars().all(|c| c.is_ascii_alphanumeric() || c == '!' || c == '-'));
        }
    }

    #[test]
    fn disabled_classes_never_appear() {
        let policy =
            PasswordPolicy { uppercase: false, min_uppercase: 0, symbols: String::new(), ..PasswordPolicy::default() };
        policy.validate().unwrap();
        for _ in 0..500 {
            let p = policy.generate();
            assert!(p.expose_secret().chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        }
    }

    #[test]
    fn required_characters_are_not_always_at_the_front() {
        // One digit in 12 characters: after the shuffle it lands anywhere.
        let policy = PasswordPolicy {
            length: 12,
            digits: true,
            lowercase: true,
            uppercase: false,
            symbols: String::new(),
            min_uppercase: 0,
            min_lowercase: 11,
            min_digits: 1,
            ..PasswordPolicy::default()
        };
        let mut positions = HashSet::new();
        for _ in 0..1000 {
            let p = policy.generate();
            positions.insert(p.expose_secret().find(|c: char| c.is_ascii_digit()).unwrap());
        }
        assert_eq!(positions.len(), 12);
    }

    #[test]
    fn validation_errors_name_the_problem() {
        let base = PasswordPolicy::default();
        let cases: Vec<(PasswordPolicy, PolicyError, &str)> = vec![
            (PasswordPolicy { length: 11, ..base.clone() }, PolicyError::Length(11), "length = 11"),
            (PasswordPolicy { length: 257, ..base.clone() }, PolicyError::Length(257), "between 12 and 256"),
            (
                PasswordPolicy { symbols: "-a".to_owned(), ..base.clone() },
                PolicyError::InvalidSymbol('a'),
                "symbols contains 'a'",
            ),
            (
                PasswordPolicy { symbols: "- ".to_owned(), ..base.clone() },
                PolicyError::InvalidSymbol(' '),
                "no letters, digits, spaces",
            ),
            (
                PasswordPolicy { digits: false, ..base.clone() },
                PolicyError::ClassImpossible { class: "digits", min: 1, reason: "the class is disabled" },
                "min_digits = 1",
            ),
            (
                PasswordPolicy { exclude: UPPERCASE.to_owned(), ..base.clone() },
                PolicyError::ClassImpossible { class: "uppercase", min: 1, reason: "exclude removes all of them" },
                "exclude removes all",
            ),
            (
                PasswordPolicy { symbols: String::new(), min_symbols: 2, ..base.clone() },
                PolicyError::ClassImpossible { class: "symbols", min: 2, reason: "the class is disabled" },
                "min_symbols = 2",
            ),
            (
                PasswordPolicy { length: 12, min_digits: 11, ..base.clone() },
                PolicyError::TooManyRequired { required: 13, length: 12 },
                "require 13 characters but length is 12",
            ),
            (
                PasswordPolicy {
                    lowercase: false,
                    uppercase: false,
                    digits: false,
                    symbols: String::new(),
                    min_lowercase: 0,
                    min_uppercase: 0,
                    min_digits: 0,
                    ..base.clone()
                },
                PolicyError::EmptyAlphabet,
                "no character is allowed",
            ),
        ];
        for (policy, expected, text) in cases {
            let err = policy.validate().unwrap_err();
            assert_eq!(err, expected);
            assert!(err.to_string().contains(text), "{err} should contain {text:?}");
            assert_eq!(policy.try_generate().unwrap_err(), expected);
        }
    }

    #[test]
    #[should_panic(expected = "invalid password policy: length = 5")]
    fn generate_panics_on_an_invalid_policy() {
        let _ = PasswordPolicy { length: 5, ..PasswordPolicy::default() }.generate();
    }

    #[test]
    fn deserializes_with_defaults_and_rejects_unknown_keys() {
        let p: PasswordPolicy = serde_json::from_str(r#"{"length": 40, "min_symbols": 1}"#).unwrap();
        assert_eq!(p, PasswordPolicy { length: 40, min_symbols: 1, ..PasswordPolicy::default() });
        let p: PasswordPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, PasswordPolicy::default());
        let err = serde_json::from_str::<PasswordPolicy>(r#"{"lenght": 40}"#).unwrap_err().to_string();
        assert!(err.contains("unknown field `lenght`"), "{err}");
    }

    #[test]
    fn generated_password_debug_is_redacted() {
        let p = PasswordPolicy::default().generate();
        assert!(!format!("{p:?}").contains(p.expose_secret()));
    }
}
