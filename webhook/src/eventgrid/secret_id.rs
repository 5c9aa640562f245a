//! Key Vault secret ids (`https://{vault}.vault.azure.net/secrets/{name}[/{version}]`),
//! split into vault, name and version: by a plain scan for the ids Key Vault sends, and
//! by the URL parser for anything else; a test checks both agree where the scan answers.

use std::borrow::Cow;

use super::EventError;
use crate::text::{quote, same_name, split_slash};
use kv_rotator_core::names::has_only_name_characters;

/// The parts of a secret id URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretIdParts {
    /// The first label of the host; `None` when the host is an IP address or a
    /// single label such as `localhost` (a dev vault), which names no vault.
    pub vault_name: Option<String>,
    /// The secret's name.
    pub secret_name: String,
    /// The version, when the id has one.
    pub version: Option<String>,
}

/// Splits `https://{vault}.vault.azure.net/secrets/{name}[/{version}]`.
///
/// Any host is accepted so sovereign clouds (`vault.azure.cn`,
/// `vault.usgovcloudapi.net`) work; the host's first label is the vault name.
pub fn parse_secret_id(id: &str) -> Result<SecretIdParts, EventError> {
    let (vault_name, secret_name, version) = secret_id_parts(id)?;
    Ok(SecretIdParts {
        vault_name: vault_name.map(Cow::into_owned),
        secret_name: secret_name.into_owned(),
        version: version.map(Cow::into_owned),
    })
}

/// (vault, name, version) of [`parse_secret_id`], borrowed from `id` when it is plain.
pub(crate) type IdParts<'a> = (Option<Cow<'a, str>>, Cow<'a, str>, Option<Cow<'a, str>>);

pub(crate) fn secret_id_parts(id: &str) -> Result<IdParts<'_>, EventError> {
    if let Some((vault_name, secret_name, version)) = plain_secret_id(id) {
        // The URL parser lower-cases the host.
        let vault_name = vault_name.map(|v| match v.bytes().any(|b| b.is_ascii_uppercase()) {
            true => Cow::Owned(v.to_ascii_lowercase()),
            false => Cow::Borrowed(v),
        });
        return Ok((vault_name, Cow::Borrowed(secret_name), version.map(Cow::Borrowed)));
    }
    let parts = url_secret_id(id)?;
    Ok((parts.vault_name.map(Cow::Owned), Cow::Owned(parts.secret_name), parts.version.map(Cow::Owned)))
}

/// [`parse_secret_id`] by the URL parser, for every id.
fn url_secret_id(id: &str) -> Result<SecretIdParts, EventError> {
    let invalid = |reason: &str| EventError::InvalidId { id: quote(id), reason: reason.to_owned() };
    let url = url::Url::parse(id).map_err(|e| invalid(&e.to_string()))?;
    if url.scheme() != "https" {
        return Err(invalid("scheme is not https"));
    }
    let vault_name = match url.host() {
        Some(url::Host::Domain(host)) => host.split_once('.').map(|(label, _)| label.to_owned()),
        Some(_) => None,
        None => return Err(invalid("no host")),
    };
    let mut segments: Vec<&str> = url.path_segments().map(|s| s.collect()).unwrap_or_default();
    // Tolerate a trailing slash.
    if segments.last() == Some(&"") {
        segments.pop();
    }
    match segments.as_slice() {
        [collection, name] if collection.eq_ignore_ascii_case("secrets") => {
            Ok(SecretIdParts { vault_name, secret_name: (*name).to_owned(), version: None })
        }
        [collection, name, version] if collection.eq_ignore_ascii_case("secrets") => {
            Ok(SecretIdParts { vault_name, secret_name: (*name).to_owned(), version: Some((*version).to_owned()) })
        }
        _ => Err(invalid("path is not /secrets/{name}[/{version}]")),
    }
}

/// [`parse_secret_id`] without a URL parser, for the ids Key Vault sends: `https://`,
/// a host of plain letter-led labels, `/secrets/{name}[/{version}][/]` of letters,
/// digits and hyphens. `None` for anything else (ports, IP addresses, escapes, empty
/// segments, punycode), which the URL parser reads; on what this accepts both agree.
fn plain_secret_id(id: &str) -> Option<(Option<&str>, &str, Option<&str>)> {
    let rest = id.get(..8).filter(|scheme| scheme.eq_ignore_ascii_case("https://")).map(|_| &id[8..])?;
    let (host, path) = rest.split_at(rest.bytes().position(|b| b == b'/')?);
    // One pass over the host: labels start with a letter, hold letters, digits and single
    // hyphens, and do not end with a hyphen.
    let (mut previous, mut first_dot) = (b'.', None);
    for (i, b) in host.bytes().enumerate() {
        let plain = match b {
            b'.' | b'-' => previous != b'.' && previous != b'-',
            _ if b.is_ascii_digit() => previous != b'.',
            _ => b.is_ascii_alphabetic(),
        };
        if !plain {
            return None;
        }
        if b == b'.' && first_dot.is_none() {
            first_dot = Some(i);
        }
        previous = b;
    }
    if previous == b'.' || previous == b'-' {
        return None;
    }
    let vault_name = first_dot.map(|dot| &host[..dot]);
    let path = &path[1..];
    let path = path.strip_suffix('/').unwrap_or(path);
    let plain_segment = |s: &str| !s.is_empty() && has_only_name_characters(s);
    let mut segments = split_slash(path);
    let (collection, name, version) = (segments.next()?, segments.next()?, segments.next());
    if segments.next().is_some()
        || !same_name(collection, "secrets")
        || !plain_segment(name)
        || !version.is_none_or(plain_segment)
    {
        return None;
    }
    Some((vault_name, name, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_ids() {
        let parts = parse_secret_id("https://my-kv.vault.azure.cn/secrets/db-password/abc").unwrap();
        assert_eq!(parts.vault_name.as_deref(), Some("my-kv"));
        assert_eq!(parts.version.as_deref(), Some("abc"));
        // A dev vault on an IP or `localhost` names no vault; VaultName must.
        assert_eq!(parse_secret_id("https://127.0.0.1:8443/secrets/s").unwrap().vault_name, None);
        assert_eq!(parse_secret_id("https://localhost:8443/secrets/s/v").unwrap().vault_name, None);
        for bad in [
            "not a url",
            "http://sample-kv.vault.azure.net/secrets/s",
            "https://sample-kv.vault.azure.net/keys/k/v",
            "https://sample-kv.vault.azure.net/secrets",
            "https://sample-kv.vault.azure.net/secrets/s/v/extra",
        ] {
            assert!(matches!(parse_secret_id(bad), Err(EventError::InvalidId { .. })), "{bad}");
        }
    }

    #[test]
    fn plain_secret_ids_read_as_the_url_parser_reads_them() {
        let mut plain = 0;
        for id in [
            "https://sample-kv.vault.azure.net/secrets/newsecret/ee059b2bb5bc48398a53b168c6cdcb10",
            "HTTPS://Sample-KV.Vault.Azure.NET/Secrets/NewSecret/",
            "https://sample-kv.vault.azure.net/secrets/s",
            "https://localhost/secrets/s/v",
            "https://a.b/secrets/s/v/",
            "https://sample-kv.vault.azure.net/secrets/s//",
            "https://sample-kv.vault.azure.net/secrets//v",
            "https://sample-kv.vault.azure.net/secrets/s/v/x",
            "https://sample-kv.vault.azure.net:443/secrets/s",
            "https://xn--bcher-kva.example/secrets/s",
            "https://a--b.vault.azure.net/secrets/s",
            "https://-a.vault.azure.net/secrets/s",
            "https://sample-kv.1/secrets/s",
            "https://sample-kv.vault.azure.net/secrets/s%41",
            "https://sample-kv.vault.azure.net/secrets/s/./v",
            "https://user@sample-kv.vault.azure.net/secrets/s",
            "https://sample-kv.vault.azure.net",
            "https://a-b.c9/secrets/s",
            "https://a-.b/secrets/s",
            "https://a..b/secrets/s",
            "https://.a/secrets/s",
            "https://a./secrets/s",
            "https://1a.b/secrets/s",
            "https://a.b-/secrets/s",
            "https:///secrets/s",
        ] {
            if plain_secret_id(id).is_some() {
                plain += 1;
                assert_eq!(parse_secret_id(id), url_secret_id(id), "{id}");
            }
        }
        assert_eq!(plain, 6, "the ids Key Vault sends take the plain path");
    }
}
