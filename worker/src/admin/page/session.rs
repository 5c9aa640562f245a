//! The status page's browser sessions: an unguessable random id in an `HttpOnly`,
//! `SameSite=Strict` cookie for the page's paths only (`Path=/status`), kept here (never the
//! admin token: the token is checked once, at login) with who logged in, its ends and the
//! session's CSRF token.
//!
//! A session ends [`SESSION_TTL`] after login, or earlier once unused for
//! [`IDLE_TIMEOUT`] (a browser left open on a desk). Sessions are held by the SHA-256 digest
//! of their id, in memory (a restart logs everyone out), at most [`MAX_SESSIONS`]: a new
//! one pushes out the one closest to its end.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The cookie that carries the session id.
pub const COOKIE: &str = "kv_rotator_session";
/// How long a session lasts from login, whatever is done with it.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// How long a session lasts unused: each request that finds it starts this again.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Sessions held at most.
pub const MAX_SESSIONS: usize = 64;
/// Random bytes in a session id and in a CSRF token (hex in the cookie and the forms).
const ID_BYTES: usize = 32;

/// A logged-in browser.
#[derive(Clone)]
pub struct Session {
    /// Who logged in (the admin API's caller name), for the log and the jobs.
    pub who: String,
    /// The token every form of this session carries.
    pub csrf: String,
    /// The absolute end ([`SESSION_TTL`] after login).
    expires: Instant,
    /// When a request last found it (the idle end is [`IDLE_TIMEOUT`] later).
    last_used: Instant,
    /// Opening order: of sessions ending at the same instant, the older goes first.
    serial: u64,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("who", &self.who).finish_non_exhaustive()
    }
}

impl Session {
    /// Whether `presented` is this session's CSRF token, compared in constant time.
    pub fn csrf_matches(&self, presented: &str) -> bool {
        !presented.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }

    /// When it ends unless used again: its absolute end or its idle end, the earlier.
    fn ends(&self) -> Instant {
        self.expires.min(self.last_used + IDLE_TIMEOUT)
    }
}

/// The sessions of a running service.
#[derive(Default)]
pub struct Sessions {
    by_digest: Mutex<HashMap<[u8; 32], Session>>,
    opened: AtomicU64,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let open = self.by_digest.lock().map_or(0, |s| s.len());
        f.debug_struct("Sessions").field("open", &open).finish_non_exhaustive()
    }
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; ID_BYTES]>())
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// A new session for `who`; its id (for the cookie only) and the session.
    pub fn open(&self, who: &str) -> (String, Session) {
        self.open_at(who, Instant::now())
    }

    fn open_at(&self, who: &str, now: Instant) -> (String, Session) {
        let id = random_hex();
        let serial = self.opened.fetch_add(1, Ordering::Relaxed);
        let session =
            Session { who: who.to_owned(), csrf: random_hex(), expires: now + SESSION_TTL, last_used: now, serial };
        let mut sessions = self.by_digest.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.ends() > now);
        while sessions.len() >= MAX_SESSIONS {
            let Some(oldest) = sessions.iter().min_by_key(|(_, s)| (s.ends(), s.serial)).map(|(d, _)| *d) else {
                break;
            };
            sessions.remove(&oldest);
        }
        sessions.insert(digest(&id), session.clone());
        (id, session)
    }

    /// The live session whose id the request's cookie carries, if any; finding it counts
    /// as a use (its idle end moves on).
    pub fn find(&self, headers: &HeaderMap) -> Option<Session> {
        self.find_at(headers, Instant::now())
    }

    fn find_at(&self, headers: &HeaderMap, now: Instant) -> Option<Session> {
        let id = cookie_id(headers)?;
        let mut sessions = self.by_digest.lock().unwrap_or_else(|p| p.into_inner());
        let session = sessions.get_mut(&digest(id)).filter(|s| s.ends() > now)?;
        session.last_used = now;
        Some(session.clone())
    }

    /// Ends the session the request's cookie carries.
    pub fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie_id(headers) {
            self.by_digest.lock().unwrap_or_else(|p| p.into_inner()).remove(&digest(id));
        }
    }
}

/// The session id in the request's `Cookie` headers: only a value of the right shape.
fn cookie_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, id)| id)
        .filter(|id| id.len() == 2 * ID_BYTES && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The `Set-Cookie` value that hands `id` to the browser: script cannot read it, no other
/// site's request carries it, and only the page's paths get it. Not `Secure`: the admin
/// listener serves plain HTTP (on loopback by default), where a browser would drop it.
pub fn set_cookie(id: &str, path: &str) -> String {
    format!("{COOKIE}={id}; Path={path}; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_TTL.as_secs())
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(path: &str) -> String {
    format!("{COOKIE}=; Path={path}; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn a_session_is_found_by_its_cookie_only_and_ends_when_closed() {
        let sessions = Sessions::default();
        let (id, session) = sessions.open("static-token");
        assert_eq!((id.len(), session.csrf.len()), (64, 64));
        assert_ne!(id, session.csrf);
        let headers = with_cookie(&format!("other=1; {COOKIE}={id}"));
        let found = sessions.find(&headers).unwrap();
        assert_eq!(found.who, "static-token");
        assert!(found.csrf_matches(&session.csrf));
        assert!(!format!("{found:?} {sessions:?}").contains(&session.csrf), "no token in Debug");
        assert!(!found.csrf_matches("") && !found.csrf_matches(&id));
        // Another id of the same shape, a malformed one, none: no session.
        assert!(sessions.find(&with_cookie(&format!("{COOKIE}={}", "0".repeat(64)))).is_none());
        assert!(sessions.find(&with_cookie(&format!("{COOKIE}={id}x"))).is_none());
        assert!(sessions.find(&HeaderMap::new()).is_none());
        sessions.close(&headers);
        assert!(sessions.find(&headers).is_none());
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::default();
        let (first, _) = sessions.open("a");
        for _ in 0..MAX_SESSIONS {
            sessions.open("b");
        }
        assert_eq!(sessions.by_digest.lock().unwrap().len(), MAX_SESSIONS);
        assert!(sessions.find(&with_cookie(&format!("{COOKIE}={first}"))).is_none(), "the oldest went");
    }

    #[test]
    fn an_idle_session_is_refused_and_each_use_keeps_it_alive_until_its_absolute_end() {
        let sessions = Sessions::default();
        let login = Instant::now();
        let (id, _) = sessions.open_at("static-token", login);
        let headers = with_cookie(&format!("{COOKIE}={id}"));
        // Used every 10 minutes: alive past the idle timeout counted from login.
        let mut at = login;
        while at + Duration::from_secs(600) < login + SESSION_TTL {
            at += Duration::from_secs(600);
            assert!(sessions.find_at(&headers, at).is_some(), "used at {:?}", at - login);
        }
        // Past its absolute end, however recently used.
        assert!(sessions.find_at(&headers, login + SESSION_TTL).is_none());

        let (idle_id, _) = sessions.open_at("static-token", login);
        let idle = with_cookie(&format!("{COOKIE}={idle_id}"));
        assert!(sessions.find_at(&idle, login + IDLE_TIMEOUT - Duration::from_secs(1)).is_some());
        let last_use = login + IDLE_TIMEOUT - Duration::from_secs(1);
        assert!(sessions.find_at(&idle, last_use + IDLE_TIMEOUT).is_none(), "idle for the whole timeout");
        // An idle session is dropped when the next one opens.
        sessions.open_at("b", last_use + IDLE_TIMEOUT);
        assert!(!sessions.by_digest.lock().unwrap().contains_key(&digest(&idle_id)));
    }

    #[test]
    fn the_cookie_is_http_only_and_same_site_strict() {
        let cookie = set_cookie("ab", "/status");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/status"));
        assert!(clear_cookie("/status").contains("Max-Age=0"));
    }
}
