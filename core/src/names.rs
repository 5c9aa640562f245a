//! Key Vault's name rules, checked wherever a name enters kv-rotator: the configuration,
//! an Event Grid event, the admin API, the Functions handler and the dev vault.

/// Key Vault names: 3–24 characters, letters, digits and hyphens, starting with a letter.
pub fn is_vault_name(name: &str) -> bool {
    (3..=24).contains(&name.len()) && name.as_bytes()[0].is_ascii_alphabetic() && all_name_bytes(name, true)
}

/// Key Vault secret names: `^[0-9a-zA-Z-]{1,127}$`.
pub fn is_secret_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && all_name_bytes(name, true)
}

/// Secret versions are 32 hex digits; other letters and digits (up to 64) are
/// tolerated, e.g. for a dev vault.
pub fn is_version(version: &str) -> bool {
    (1..=64).contains(&version.len()) && all_name_bytes(version, false)
}

/// Whether `s` holds only the characters of a vault or secret name (ASCII letters,
/// digits, hyphens), whatever its length: a cheap first reading of a URL's segments.
pub fn has_only_name_characters(s: &str) -> bool {
    all_name_bytes(s, true)
}

/// Whether every byte of `s` is an ASCII letter or digit (or a hyphen, if allowed).
fn all_name_bytes(s: &str, hyphen: bool) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || (hyphen && b == b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        assert!(is_secret_name("a") && is_secret_name(&"a".repeat(127)) && is_secret_name("Db-Pass-1"));
        assert!(!is_secret_name("") && !is_secret_name(&"a".repeat(128)));
        assert!(!is_secret_name("a_b") && !is_secret_name("a.b") && !is_secret_name("a b") && !is_secret_name("é"));
        assert!(is_vault_name("sample-kv") && !is_vault_name("kv") && !is_vault_name("1kv") && !is_vault_name("a_b-c"));
        assert!(is_vault_name(&format!("a{}", "b".repeat(23))) && !is_vault_name(&format!("a{}", "b".repeat(24))));
        assert!(!is_vault_name("kvé") && !is_vault_name("-kv"));
        assert!(is_version("0123456789abcdef0123456789abcdef") && is_version("v2"));
        assert!(!is_version("") && !is_version("ee05-9b") && !is_version(&"a".repeat(65)));
        assert!(has_only_name_characters(&"a-1".repeat(100)) && has_only_name_characters(""));
        assert!(!has_only_name_characters("a/b") && !has_only_name_characters("a_b"));
    }
}
