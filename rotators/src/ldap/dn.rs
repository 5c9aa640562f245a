//! DNs from untrusted accounts: [`user_dn`] puts a `CredentialId` into the template's first
//! RDN and nowhere else (escaped per RFC 4514, refused when the directory would fold it into
//! another name), `check_template` refuses a template that would let it reach further, and
//! `same_dn` recognizes the admin's own DN however it is written.

use super::quote;
use crate::tls::TlsSetupError;
use crate::{RotatorError, RotatorResult};

/// The placeholder `user_dn_template` holds once, as the whole value of its first RDN.
pub const PLACEHOLDER: &str = "{}";

/// The DN of `account` under `template` (checked by
/// [`LdapRotator::new`](super::LdapRotator::new)): the account escaped per RFC 4514 in place
/// of `{}`. Refused: an empty account, or one with a control character (NUL included).
pub fn user_dn(template: &str, account: &str) -> RotatorResult<String> {
    if account.is_empty() {
        return Err(RotatorError::Permanent("the account name (CredentialId) is empty".to_owned()));
    }
    if account.chars().any(char::is_control) {
        return Err(RotatorError::Permanent(format!("account name {} contains a control character", quote(account))));
    }
    // The directory compares DNs after Unicode folding and space collapsing (the Kelvin
    // sign is a `k`, two spaces are one): a name this rotator would compare as another
    // could still name the admin's entry. Printable ASCII, single inner spaces only.
    if !account.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        || account.starts_with(' ')
        || account.ends_with(' ')
        || account.contains("  ")
    {
        return Err(RotatorError::Permanent(format!(
            "account name {} is refused: LDAP account names are printable ASCII with single inner spaces (the \
             directory folds other characters and spaces into names this rotator cannot compare)",
            quote(account)
        )));
    }
    Ok(template.replacen(PLACEHOLDER, &ldap3::dn_escape(account), 1))
}

/// Refuses a template that would let the account be anything but the first RDN's value.
pub(super) fn check_template(template: &str) -> Result<(), TlsSetupError> {
    let bad = |why: &str| TlsSetupError::Combination(format!("user_dn_template {}: {why}", quote(template)));
    if template.matches(PLACEHOLDER).count() != 1 || template.matches(['{', '}']).count() != 2 {
        return Err(bad("must hold `{}` exactly once, and no other brace"));
    }
    let (attr, rest) = template.split_once('=').ok_or_else(|| bad("must start with `attribute={}`"))?;
    let keystring = attr.starts_with(|c: char| c.is_ascii_alphabetic())
        && attr.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let oid = !attr.is_empty() && attr.split('.').all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    if !(keystring || oid) {
        return Err(bad("must start with an attribute type, then `={}`"));
    }
    let Some(base) = rest.strip_prefix(PLACEHOLDER) else {
        return Err(bad("`{}` must be the whole value of the first RDN (`uid={},ou=people,…`)"));
    };
    if !(base.is_empty() || base.starts_with(',') && base.len() > 1) {
        return Err(bad("`{}` must be followed by `,` and the base DN, or nothing"));
    }
    if template.chars().any(char::is_control) {
        return Err(bad("holds a control character"));
    }
    Ok(())
}

/// The same DN, whatever the case and the spaces after separators (enough to recognize
/// the admin's own DN written from the template).
pub(super) fn same_dn(a: &str, b: &str) -> bool {
    let norm = |dn: &str| dn.split(',').map(|rdn| rdn.trim().to_ascii_lowercase()).collect::<Vec<_>>();
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = "uid={},ou=people,dc=kvr,dc=test";

    #[test]
    fn templates_put_the_account_in_the_first_rdn_only() {
        for good in [TEMPLATE, "cn={}", "2.5.4.3={},o=x", "sAMAccountName={},ou=a b,dc=x"] {
            check_template(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "uid=x,ou=people",
            "uid={},ou={}",
            "uid={}x,ou=people",
            "uid=x{},ou=people",
            "{}=x,ou=people",
            "ou=people,uid={}",
            "uid={},",
            "uid={}+cn=x,dc=y",
            "u id={},dc=x",
            "uid={},ou=p{eople",
            "uid={},ou=\npeople",
        ] {
            assert!(check_template(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn accounts_are_escaped_per_rfc_4514_and_never_reach_beyond_their_rdn() {
        let dn = |account: &str| user_dn(TEMPLATE, account);
        assert_eq!(dn("app-1").unwrap(), "uid=app-1,ou=people,dc=kvr,dc=test");
        assert_eq!(dn("x,ou=admins").unwrap(), "uid=x\\2cou\\3dadmins,ou=people,dc=kvr,dc=test");
        assert_eq!(dn("a+b").unwrap(), "uid=a\\2bb,ou=people,dc=kvr,dc=test");
        assert_eq!(dn("#x").unwrap(), "uid=\\23x,ou=people,dc=kvr,dc=test");
        assert_eq!(dn("a\\b\"c<d>e;f").unwrap(), "uid=a\\5cb\\22c\\3cd\\3ee\\3bf,ou=people,dc=kvr,dc=test");
        assert_eq!(dn("*").unwrap(), "uid=*,ou=people,dc=kvr,dc=test", "`*` means nothing in a DN");
        assert_eq!(dn("{}").unwrap(), "uid={},ou=people,dc=kvr,dc=test", "replaced once, not re-expanded");
        // Names the directory would fold into another (the Kelvin sign is `k`, runs of
        // spaces are one, outer spaces go): the admin's own entry could hide behind one.
        for hostile in ["", "x\0", "a\nb", "\u{1b}[2J", "x\u{7f}", "\u{212A}v-rotator", "kv  rotator", " x", "x ", "ü"]
        {
            let e = dn(hostile).unwrap_err();
            assert!(matches!(e, RotatorError::Permanent(_)), "{hostile:?}");
            assert!(!e.to_string().contains('\n') && !e.to_string().contains('\u{1b}'), "{e}");
        }
        // Every escaped DN has exactly the template's RDN separators.
        for account in ["x,ou=admins", "a,b,c", "\\,", "x\\", ",", "=,+"] {
            let d = dn(account).unwrap();
            assert_eq!(d.matches(',').count(), TEMPLATE.matches(',').count(), "{account:?} → {d}");
        }
    }

    #[test]
    fn admin_dns_are_recognized_whatever_the_case_and_spaces() {
        assert!(same_dn("cn=Admin, dc=kvr, dc=test", "cn=admin,dc=kvr,dc=test"));
        assert!(!same_dn("cn=admin,dc=kvr,dc=test", "cn=admin2,dc=kvr,dc=test"));
    }
}
