//! The scanner: every recorded secret searched in every captured file.
//!
//! - [`Ledger::parse`]: the ledger, deduplicated; secrets shorter than [`MIN_LEN`] are
//!   counted but not searched.
//! - [`Patterns::new`]: for each secret, the forms it may take in text ([`forms`]), in
//!   one Aho-Corasick automaton.
//! - [`Patterns::scan_dir`]: every file under the scan directory, with bytes and files
//!   counted per stream ([`stream_of`]); [`Hit`]s name the file, the byte offset, the
//!   secret's kind and ledger line, the form, and the text before it with every secret
//!   masked — never the secret.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use aho_corasick::AhoCorasick;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;

/// Shorter secrets are not searched: the password policy's minimum length, so only test
/// fixtures written as short literals (`"x"`, `"admin"`) are left out, which would match
/// ordinary text.
pub const MIN_LEN: usize = 12;
/// A part of a derived secret (between `$`, `:` and `*`: a SCRAM verifier's StoredKey
/// and ServerKey, a bcrypt salt and hash, a MariaDB hash without its `*`) is searched
/// alone when at least this long.
pub const MIN_PART_LEN: usize = 20;
/// Needle counted in log files: the audit records' target.
pub const AUDIT_TARGET: &str = "kv_rotator::audit";

/// One recorded secret.
#[derive(Clone)]
pub struct Secret {
    /// `generated`, `handled` or `derived`.
    pub kind: String,
    /// Its first line in the ledger (1-based).
    pub line: usize,
    bytes: Vec<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} at ledger line {}, {} bytes)", self.kind, self.line, self.bytes.len())
    }
}

impl Secret {
    /// The secret's bytes (to plant one in a self-check).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The ledger, deduplicated.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Secrets searched, in ledger order.
    pub secrets: Vec<Secret>,
    /// Distinct secrets per kind, searched or not.
    pub by_kind: BTreeMap<String, usize>,
    /// Distinct secrets shorter than [`MIN_LEN`].
    pub too_short: usize,
}

impl Ledger {
    /// Parses ledger text (`<kind> <hex>` lines); a malformed line is an error naming it.
    pub fn parse(text: &str) -> Result<Ledger, String> {
        let mut ledger = Ledger::default();
        let mut seen = HashSet::new();
        for (index, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let bytes = line
                .split_once(' ')
                .and_then(|(kind, hex)| Some((kind, decode_hex(hex)?)))
                .filter(|(kind, bytes)| !kind.is_empty() && !bytes.is_empty());
            let Some((kind, bytes)) = bytes else {
                return Err(format!("ledger line {} is not `<kind> <hex>`", index + 1));
            };
            if !seen.insert(bytes.clone()) {
                continue;
            }
            *ledger.by_kind.entry(kind.to_owned()).or_default() += 1;
            if bytes.len() < MIN_LEN {
                ledger.too_short += 1;
            } else {
                ledger.secrets.push(Secret { kind: kind.to_owned(), line: index + 1, bytes });
            }
        }
        Ok(ledger)
    }

    /// Distinct secrets recorded.
    pub fn total(&self) -> usize {
        self.by_kind.values().sum()
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

/// The forms `secret` may take in captured text, each with its name: as is,
/// percent-encoded, JSON-escaped, `{:?}`-escaped, base64 (standard and URL-safe, without
/// padding), hex (both cases), as a `{:?}` byte list; then each part of at least
/// [`MIN_PART_LEN`] between `$`, `:` and `*`, as is and, when hex, in lower case.
pub fn forms(secret: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let text = String::from_utf8_lossy(secret);
    let debug = format!("{text:?}");
    let bytes_debug = format!("{secret:?}");
    let candidates: [(&'static str, Vec<u8>); 9] = [
        ("as is", secret.to_vec()),
        ("URL-encoded", percent_encode(secret)),
        ("JSON-escaped", json_escape(&text)),
        ("Debug-escaped", debug.as_bytes()[1..debug.len() - 1].to_vec()),
        ("base64", STANDARD_NO_PAD.encode(secret).into_bytes()),
        ("base64url", URL_SAFE_NO_PAD.encode(secret).into_bytes()),
        ("hex", secret.iter().map(|b| format!("{b:02x}")).collect::<String>().into_bytes()),
        ("HEX", secret.iter().map(|b| format!("{b:02X}")).collect::<String>().into_bytes()),
        ("byte list", bytes_debug.as_bytes()[1..bytes_debug.len() - 1].to_vec()),
    ];
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    for (name, form) in candidates {
        if !out.iter().any(|(_, f)| *f == form) {
            out.push((name, form));
        }
    }
    for part in secret.split(|b| matches!(b, b'$' | b':' | b'*')) {
        if part.len() >= MIN_PART_LEN && part != secret {
            out.push(("part", part.to_vec()));
            if part.iter().all(u8::is_ascii_hexdigit) && part.iter().any(u8::is_ascii_uppercase) {
                out.push(("part, lower case", part.to_ascii_lowercase()));
            }
        }
    }
    out
}

fn percent_encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

fn json_escape(text: &str) -> Vec<u8> {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.into_bytes()
}

/// Every form of every secret, searched at once.
#[derive(Debug)]
pub struct Patterns {
    automaton: AhoCorasick,
    /// Per pattern: the index of its secret and the form's name.
    labels: Vec<(usize, &'static str)>,
    secrets: Vec<Secret>,
}

/// One place a secret was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The file, relative to the scan directory.
    pub file: String,
    /// Byte offset of the match in the file.
    pub offset: usize,
    /// The secret's kind.
    pub kind: String,
    /// The secret's line in the ledger.
    pub ledger_line: usize,
    /// The form found.
    pub form: &'static str,
    /// Up to 80 bytes of the line before the match, every secret in them masked.
    pub before: String,
}

impl fmt::Display for Hit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at byte {}: a {} secret (ledger line {}) {}, after: {:?}",
            self.file, self.offset, self.kind, self.ledger_line, self.form, self.before
        )
    }
}

/// Files and bytes of one stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Volume {
    /// Files read.
    pub files: usize,
    /// Bytes read.
    pub bytes: u64,
}

/// What [`Patterns::scan_dir`] found.
#[derive(Debug, Default)]
pub struct Report {
    /// Per stream ([`stream_of`]).
    pub streams: BTreeMap<String, Volume>,
    /// Every hit, in file order.
    pub hits: Vec<Hit>,
    /// Occurrences of [`AUDIT_TARGET`] in log files.
    pub audit_records: usize,
}

impl Report {
    /// Files and bytes over all streams.
    pub fn total(&self) -> Volume {
        self.streams
            .values()
            .fold(Volume::default(), |a, v| Volume { files: a.files + v.files, bytes: a.bytes + v.bytes })
    }
}

/// The stream a captured file belongs to: its name up to the first `.` (`log.4711` is
/// `log`, `cargo-test.log` is `cargo-test`).
pub fn stream_of(file_name: &str) -> &str {
    file_name.split('.').next().unwrap_or(file_name)
}

impl Patterns {
    /// The automaton over every form of every secret of `ledger`.
    pub fn new(ledger: &Ledger) -> Result<Patterns, String> {
        let mut patterns = Vec::new();
        let mut labels = Vec::new();
        for (index, secret) in ledger.secrets.iter().enumerate() {
            for (form, pattern) in forms(&secret.bytes) {
                patterns.push(pattern);
                labels.push((index, form));
            }
        }
        let automaton = AhoCorasick::new(&patterns).map_err(|e| format!("building the automaton: {e}"))?;
        Ok(Patterns { automaton, labels, secrets: ledger.secrets.clone() })
    }

    /// Number of patterns searched.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is nothing to search.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The hits in `bytes`, reported as file `name`.
    pub fn scan_bytes(&self, name: &str, bytes: &[u8]) -> Vec<Hit> {
        self.automaton
            .find_iter(bytes)
            .map(|m| {
                let (index, form) = self.labels[m.pattern().as_usize()];
                let secret = &self.secrets[index];
                Hit {
                    file: name.to_owned(),
                    offset: m.start(),
                    kind: secret.kind.clone(),
                    ledger_line: secret.line,
                    form,
                    before: self.masked_before(bytes, m.start()),
                }
            })
            .collect()
    }

    /// Up to 80 bytes before `at`, from the start of its line, cut at a word boundary (so
    /// no partial secret is shown) and with every whole secret replaced by `<secret>`.
    fn masked_before(&self, bytes: &[u8], at: usize) -> String {
        let line_start = bytes[..at].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut start = line_start.max(at.saturating_sub(80));
        if start > line_start {
            while start < at && (bytes[start].is_ascii_alphanumeric() || b"+/=-_.".contains(&bytes[start])) {
                start += 1;
            }
        }
        let window = &bytes[start..at];
        let mut shown = Vec::new();
        let mut last = 0;
        for m in self.automaton.find_iter(window) {
            shown.extend_from_slice(&window[last..m.start()]);
            shown.extend_from_slice(b"<secret>");
            last = m.end();
        }
        shown.extend_from_slice(&window[last..]);
        String::from_utf8_lossy(&shown).into_owned()
    }

    /// Scans every regular file under `dir` (recursively).
    pub fn scan_dir(&self, dir: &Path) -> std::io::Result<Report> {
        let mut report = Report::default();
        let mut pending = vec![dir.to_path_buf()];
        let mut files: Vec<PathBuf> = Vec::new();
        while let Some(next) = pending.pop() {
            for entry in std::fs::read_dir(&next)? {
                let entry = entry?;
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    pending.push(entry.path());
                } else if kind.is_file() {
                    files.push(entry.path());
                }
            }
        }
        files.sort();
        for path in files {
            let bytes = std::fs::read(&path)?;
            let name = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().into_owned();
            let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let stream = stream_of(&file_name).to_owned();
            if stream == "log" {
                report.audit_records += count(&bytes, AUDIT_TARGET.as_bytes());
            }
            let volume = report.streams.entry(stream).or_default();
            volume.files += 1;
            volume.bytes += bytes.len() as u64;
            report.hits.extend(self.scan_bytes(&name, &bytes));
        }
        Ok(report)
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    AhoCorasick::new([needle]).map_or(0, |a| a.find_iter(haystack).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "Xy7-kq.Zp_3mVtR9wLs2";

    fn ledger(entries: &[(&str, &str)]) -> Ledger {
        let text: String = entries
            .iter()
            .map(|(kind, secret)| {
                format!("{kind} {}\n", secret.bytes().map(|b| format!("{b:02x}")).collect::<String>())
            })
            .collect();
        Ledger::parse(&text).unwrap()
    }

    #[test]
    fn the_ledger_is_deduplicated_and_short_secrets_are_counted_not_searched() {
        let l = ledger(&[("generated", PASSWORD), ("handled", PASSWORD), ("handled", "admin"), ("derived", "x")]);
        assert_eq!(l.total(), 3);
        assert_eq!(l.too_short, 2);
        assert_eq!(l.secrets.len(), 1);
        assert_eq!((l.secrets[0].kind.as_str(), l.secrets[0].line), ("generated", 1));
        assert!(Ledger::parse("generated zz\n").unwrap_err().contains("line 1"));
        assert!(Ledger::parse("nohex\n").is_err());
        assert!(!format!("{:?}", l.secrets[0]).contains(PASSWORD));
    }

    #[test]
    fn every_encoding_is_found_and_no_hit_shows_the_secret() {
        let odd = "p\"a/ss w0rd+é\\x\u{1}";
        let l = ledger(&[("generated", PASSWORD), ("handled", odd)]);
        let patterns = Patterns::new(&l).unwrap();
        for (secret, forms) in [(PASSWORD, forms(PASSWORD.as_bytes())), (odd, forms(odd.as_bytes()))] {
            for (name, form) in forms {
                let mut text = b"level=INFO msg=\"x\" value=".to_vec();
                text.extend_from_slice(&form);
                text.extend_from_slice(b" end\n");
                let hits = patterns.scan_bytes("log.1", &text);
                assert!(!hits.is_empty(), "{name} of a secret not found");
                let shown = hits.iter().map(|h| h.to_string()).collect::<String>();
                assert!(!shown.contains(secret), "{shown}");
                assert!(shown.contains("log.1 at byte 25"), "{shown}");
            }
        }
        let names: Vec<&str> = forms(odd.as_bytes()).into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"URL-encoded") && names.contains(&"JSON-escaped") && names.contains(&"Debug-escaped"));
        assert!(patterns.scan_bytes("clean", b"Xy7-kq.Zp_3mVtR9wLs nothing here").is_empty());
    }

    #[test]
    fn the_parts_of_derived_secrets_are_found_alone() {
        let scram = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$U3RvcmVkS2V5U3RvcmVkS2V5U3RvcmVkS2V5MTIzNDU=:U2VydmVyS2V5U2VydmVyS2V5U2VydmVyS2V5MTIzNDU=";
        let mysql = "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19";
        let patterns = Patterns::new(&ledger(&[("derived", scram), ("derived", mysql)])).unwrap();
        let found = |text: &str| patterns.scan_bytes("f", text.as_bytes()).len();
        assert_eq!(found("stored U3RvcmVkS2V5U3RvcmVkS2V5U3RvcmVkS2V5MTIzNDU= leaked"), 1);
        assert_eq!(found("hash 2470c0c06dee42fd1618bb99005adca2ec9d1e19"), 1);
        assert_eq!(found("the mechanism SCRAM-SHA-256 with 4096 iterations"), 0, "short parts are not searched");
    }

    #[test]
    fn the_text_before_a_hit_masks_secrets_and_cuts_partial_ones() {
        let other = "Other-Secret-0123456789";
        let patterns = Patterns::new(&ledger(&[("generated", PASSWORD), ("generated", other)])).unwrap();
        let text = format!("first line\nrotating {other} then {PASSWORD}");
        let hits = patterns.scan_bytes("f", text.as_bytes());
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[1].before, "rotating <secret> then ");
        let long = format!("{}{PASSWORD}", "a".repeat(100));
        let hits = patterns.scan_bytes("f", long.as_bytes());
        assert_eq!(hits[0].before, "", "a window starting inside a word shows nothing of it");
    }

    #[test]
    fn a_password_planted_in_a_captured_log_fails_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let patterns = Patterns::new(&ledger(&[("generated", PASSWORD)])).unwrap();
        let (log, metrics) = ("2026 INFO kv_rotator::audit: rotation audit record\n", "kv_rotator_rotations_total 1\n");
        std::fs::write(dir.path().join("log.42"), log).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/metrics.42"), metrics).unwrap();
        let clean = patterns.scan_dir(dir.path()).unwrap();
        assert!(clean.hits.is_empty());
        assert_eq!(clean.total(), Volume { files: 2, bytes: (log.len() + metrics.len()) as u64 });
        assert_eq!((clean.streams["log"].files, clean.streams["metrics"].files, clean.audit_records), (1, 1, 1));

        std::fs::write(dir.path().join("stderr.43"), format!("error: login as app with {PASSWORD} failed\n")).unwrap();
        let leaked = patterns.scan_dir(dir.path()).unwrap();
        assert_eq!(leaked.hits.len(), 1);
        let hit = &leaked.hits[0];
        assert_eq!((hit.file.as_str(), hit.offset, hit.form, hit.ledger_line), ("stderr.43", 25, "as is", 1));
        assert_eq!(hit.before, "error: login as app with ");
    }
}
