//! Log output: where it goes, its format, and which events pass.
//!
//! Logs go to stderr, as text or JSON lines, one line per event whatever the values in
//! it: untrusted text (an event's fields, a tag, an error quoting either) cannot forge a
//! line or reach a terminal. JSON escapes every control character by itself; the text
//! format writes its fields through [`EscapedFields`], which escapes them too (and
//! colours levels only on a terminal, so piped logs hold no escape sequence at all).
//! Lengths are bounded where values enter: the webhook refuses event ids that are not
//! short visible ASCII and clips what it quotes.
//!
//! Which events pass is decided by two filters that must both agree, on one per-layer
//! filter of the formatting layer:
//!
//! 1. the user's filter, `RUST_LOG` (an [`EnvFilter`]; the command's default when it is
//!    unset or invalid);
//! 2. a cap on dependencies ([`dependency_cap`]): events and spans of kv-rotator's own
//!    targets (every target starting with `kv_rotator`: the `kv_rotator` crate,
//!    `kv_rotator::audit`, `kv_rotator_rotators`, `kv_rotator_keyvault`, …) pass at any
//!    level, those of every other target at `INFO` and above only.
//!
//! So `RUST_LOG=trace` makes kv-rotator itself verbose while `tokio_postgres`,
//! `postgres_protocol`, `hyper`, `reqwest`, `h2`, `rustls`, `azure_core`,
//! `azure_identity` and the rest never log below `INFO`, whatever `RUST_LOG` says
//! (`tokio_postgres=trace` included): their debug and trace output carries the SQL
//! statements (`ALTER ROLE … PASSWORD 'SCRAM-SHA-256$…'`), HTTP bodies with secret
//! values and bearer tokens, which must never reach a log. `RUST_LOG` can still lower a
//! dependency's level (`hyper=warn`). Dependencies that log through the `log` crate
//! (tokio-postgres does) reach tracing through the `log` bridge that
//! [`SubscriberInitExt::try_init`] installs, under their own target, so the cap applies
//! to them too.

use std::fmt;
use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets};
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::{FormatFields, MakeWriter};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogFormat;

/// The target prefix of kv-rotator's own events: its crates are `kv_rotator` and
/// `kv_rotator_*`, and its custom targets (`kv_rotator::audit`) start with it too.
pub const OWN_TARGET_PREFIX: &str = "kv_rotator";

/// The most verbose level a target outside [`OWN_TARGET_PREFIX`] may log at.
pub const DEPENDENCY_MAX_LEVEL: LevelFilter = LevelFilter::INFO;

/// Own targets unrestricted (the user's filter decides), every other target capped at
/// [`DEPENDENCY_MAX_LEVEL`]. ([`Targets`] matches a target by prefix.)
pub fn dependency_cap() -> Targets {
    Targets::new().with_target(OWN_TARGET_PREFIX, LevelFilter::TRACE).with_default(DEPENDENCY_MAX_LEVEL)
}

/// Installs the global subscriber (and the `log` bridge): `RUST_LOG`, or
/// `default_filter` when it is unset or invalid, intersected with [`dependency_cap`];
/// then logs the filter in force at `TRACE`. Does nothing if a subscriber is already
/// installed.
pub fn init(format: LogFormat, default_filter: &str) {
    let user = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let shown = user.to_string();
    let filter = user.and(dependency_cap());
    // Colours only for a person at a terminal who has not asked for none (NO_COLOR).
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let layer = format_layer(format, std::io::stderr, ansi);
    let subscriber = tracing_subscriber::registry().with(layer.with_filter(filter));
    // Test builds (`leak-ledger`): every event the cap lets through, whatever `RUST_LOG`
    // says, to the leak scanner too.
    #[cfg(feature = "leak-ledger")]
    let subscriber = subscriber.with(kv_rotator_leakscan::log_layer(dependency_cap()));
    if subscriber.try_init().is_ok() {
        tracing::trace!(
            filter = %shown,
            dependency_max_level = %DEPENDENCY_MAX_LEVEL,
            "logging: kv-rotator's own targets filtered by RUST_LOG, every other target capped"
        );
    }
}

/// The formatting layer of `format` writing to `writer`, level colours only when `ansi`.
pub fn format_layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi);
    match format {
        LogFormat::Text => layer.fmt_fields(EscapedFields::default()).boxed(),
        LogFormat::Json => layer.json().boxed(),
    }
}

/// The text format's fields — an event's message and fields, a span's fields — as
/// [`DefaultFields`] writes them (without colours), then with every control character
/// escaped ([`escape_controls`]). `DefaultFields` quotes `?` values and plain strings
/// (`Debug`) but writes `%` values as they are, and tracing-subscriber escapes ESC in
/// messages only: a `\n` in an error quoting a tag would otherwise start a line of its own.
#[derive(Debug, Default)]
pub struct EscapedFields {
    inner: DefaultFields,
}

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut text = String::new();
        self.inner.format_fields(Writer::new(&mut text), fields)?;
        escape_controls(&text, &mut writer)
    }
}

/// Writes `text` with its control characters (C0 — `\n`, `\r`, `\t`, ESC … —, DEL, C1)
/// and the Unicode line and paragraph separators escaped: `\n`, `\r` and `\t` as such,
/// the others as `\u{..}`.
pub fn escape_controls(text: &str, out: &mut impl fmt::Write) -> fmt::Result {
    let mut rest = text;
    while let Some(at) = rest.find(is_unsafe_char) {
        out.write_str(&rest[..at])?;
        let c = rest[at..].chars().next().expect("found at this index");
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            other => write!(out, "\\u{{{:x}}}", u32::from(other))?,
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.write_str(rest)
}

/// Characters that can forge or hide text on a line or a terminal: control characters
/// (line breaks, ESC, C1 such as the 8-bit CSI), the Unicode line and paragraph
/// separators, and the invisible direction marks and overrides that make a viewer show
/// text in another order than it is (Trojan Source, CVE-2021-42574).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// Longest error text an outcome keeps: what a target or Key Vault says goes into every
/// attempt's log line, the audit record, the alert and `rotate`'s output.
pub const MAX_ERROR_CHARS: usize = 2048;

/// `text` from outside (a target's or Key Vault's error message, a tag value) made safe
/// for every place it goes, whatever that place escapes: unsafe characters escaped (as
/// [`escape_controls`] does) and, past `max` characters, the middle cut out (an error's
/// context is at its start, its cause often at its end), saying how much.
pub fn sanitized(text: &str, max: usize) -> String {
    let mut escaped = String::with_capacity(text.len().min(4 * max));
    let _ = escape_controls(text, &mut escaped);
    let chars = escaped.chars().count();
    if chars <= max {
        return escaped;
    }
    let byte_at = |n: usize| escaped.char_indices().nth(n).map_or(escaped.len(), |(i, _)| i);
    let (head_end, tail_start) = (byte_at(max / 2), byte_at(chars - max / 2));
    format!("{} … ({} bytes cut) … {}", &escaped[..head_end], tail_start - head_end, &escaped[tail_start..])
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn direction_overrides_are_escaped_and_long_text_is_clipped() {
        let mut out = String::new();
        escape_controls("db\u{202e}drowssap\u{2066}x\u{2069}\u{200f}", &mut out).unwrap();
        assert_eq!(out, r"db\u{202e}drowssap\u{2066}x\u{2069}\u{200f}");
        assert_eq!(sanitized("short\nline", 100), r"short\nline");
        let long = format!("start {} cause\u{1b}[2J", "é".repeat(3000));
        let clipped = sanitized(&long, MAX_ERROR_CHARS);
        assert!(clipped.starts_with("start éé"), "{}", &clipped[..20]);
        assert!(clipped.ends_with(r"éé cause\u{1b}[2J"), "{}", &clipped[clipped.len() - 40..]);
        assert!(clipped.contains(" … (1946 bytes cut) … "), "{clipped}");
        assert_eq!(clipped.chars().count(), MAX_ERROR_CHARS + " … (1946 bytes cut) … ".chars().count());
        assert!(!clipped.contains('\u{1b}'));
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut out = String::new();
        escape_controls("a\nb\rc\td\u{1b}[31me\u{7f}f\u{85}g\u{2028}h é", &mut out).unwrap();
        assert_eq!(out, r"a\nb\rc\td\u{1b}[31me\u{7f}f\u{85}g\u{2028}h é");
    }

    #[test]
    fn untrusted_values_stay_on_their_line_in_both_formats() {
        let hostile = "x\nFORGED-LINE \u{1b}[31mred\r\n";
        for format in [LogFormat::Text, LogFormat::Json] {
            let file = tempfile::NamedTempFile::new().unwrap();
            let writer = file.reopen().unwrap();
            let layer = format_layer(format, move || writer.try_clone().unwrap(), false);
            let subscriber = tracing_subscriber::registry().with(layer);
            tracing::subscriber::with_default(subscriber, || {
                let span = tracing::info_span!("rotation", secret = %hostile, event_id = hostile);
                let _entered = span.enter();
                tracing::warn!(error = %hostile, debug = ?hostile, "a message with {hostile} in it");
            });
            let output = std::fs::read_to_string(file.path()).unwrap();
            assert_eq!(output.lines().count(), 1, "{format:?}: {output}");
            assert!(!output.contains('\u{1b}') && !output.contains('\r'), "{format:?}: {output:?}");
            assert!(!output.lines().any(|line| line.starts_with("FORGED-LINE")), "{format:?}: {output}");
            assert!(output.contains("FORGED-LINE"), "{format:?}: the value is there, escaped: {output}");
            if let LogFormat::Json = format {
                serde_json::from_str::<serde_json::Value>(&output).unwrap();
            }
        }
    }

    #[test]
    fn own_targets_pass_at_every_level_and_others_at_info_and_above() {
        let cap = dependency_cap();
        for target in ["kv_rotator", "kv_rotator::audit", "kv_rotator_rotators::postgres", "kv_rotator_keyvault"] {
            assert!(cap.would_enable(target, &Level::TRACE), "{target}");
        }
        for target in ["tokio_postgres::query", "postgres_protocol", "hyper", "reqwest", "azure_core", "log"] {
            assert!(cap.would_enable(target, &Level::INFO), "{target}");
            assert!(!cap.would_enable(target, &Level::DEBUG), "{target}");
            assert!(!cap.would_enable(target, &Level::TRACE), "{target}");
        }
    }
}
