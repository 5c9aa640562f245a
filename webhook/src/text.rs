//! Small helpers for the untrusted text of an event: trimming, name comparison, splitting
//! of ids, and quoting for logs and errors. Used by the event parsing
//! ([`eventgrid`](crate::eventgrid), [`fastpath`](crate::fastpath)) and the
//! [`source`](crate::source) check alike.

/// Longest piece of a received value quoted in an error; values are untrusted input.
const MAX_QUOTED: usize = 80;

/// `a.eq_ignore_ascii_case(b)`, trying an exact match first: what is sent is nearly
/// always spelled as documented, and a plain comparison costs a fraction of a folding one.
pub(crate) fn same_name(a: &str, b: &str) -> bool {
    a == b || a.eq_ignore_ascii_case(b)
}

/// `s.trim()`, skipping the Unicode whitespace tables when both ends are visible ASCII,
/// as in nearly every value Event Grid sends.
pub(crate) fn trim(s: &str) -> &str {
    match s.as_bytes() {
        [first, .., last] if first.is_ascii_graphic() && last.is_ascii_graphic() => s,
        [only] if only.is_ascii_graphic() => s,
        _ => s.trim(),
    }
}

/// `{:?}`-quotes an untrusted value, clipped to [`MAX_QUOTED`] characters.
pub(crate) fn quote(value: &str) -> String {
    quote_clipped(value, MAX_QUOTED)
}

/// `{:?}`-quotes an untrusted value (control characters escaped), clipped to `max`
/// characters.
pub(crate) fn quote_clipped(value: &str, max: usize) -> String {
    match value.char_indices().nth(max) {
        None => format!("{value:?}"),
        Some((end, _)) => format!("{:?}…", &value[..end]),
    }
}

/// `s.split('/')`, by a plain byte scan: resource ids and secret ids have short
/// segments, where `str::split`'s searcher costs more than it saves.
pub(crate) fn split_slash(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.bytes().position(|b| b == b'/') {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_slash_splits_as_str_split() {
        for s in ["", "/", "a", "a/b", "/a//b/", "é/ü/", "//"] {
            assert_eq!(split_slash(s).collect::<Vec<_>>(), s.split('/').collect::<Vec<_>>(), "{s:?}");
        }
    }
}
