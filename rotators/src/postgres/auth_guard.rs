//! A stream wrapper that holds the server to an honest, strong password check.
//!
//! tokio-postgres answers whatever authentication request the server sends first, and
//! takes `AuthenticationOk` at face value. A server, or anyone on the path of a connection
//! without verified TLS, can exploit both. The guard reads the server's messages up to
//! `AuthenticationOk` and fails the read that carries one of these, so the client never
//! acts on it:
//!
//! - `AuthenticationCleartextPassword`: the answer is the password itself.
//! - `AuthenticationMD5Password`: the answer, `md5(md5(password ‖ user) ‖ salt)`, is
//!   login-equivalent and open to offline guessing.
//! - A SCRAM challenge with fewer than [`MIN_SCRAM_ITERATIONS`] rounds: the client's proof
//!   would make guessing cheap (generated passwords do not care, an admin's may).
//! - `AuthenticationOk` before any password was checked (`trust` in `pg_hba.conf`, or a
//!   fake server): "this password works" would be unproven, and the engine could record a
//!   password the role does not have, or skip a change it needed.
//!
//! With `allow_weak_auth` the first two are answered (the password was still checked).
//! The guard sits above TLS (it reads the protocol, not ciphertext) and passes the TLS
//! stream's channel binding through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

/// PostgreSQL's default `scram_iterations`; fewer is refused.
pub const MIN_SCRAM_ITERATIONS: u32 = 4096;

/// Longest SCRAM server-first-message read (nonce, salt and count: ~100 bytes in practice).
const MAX_SCRAM_CHALLENGE: usize = 1024;

/// Why the guard ended a connection; found in the source chain of the client's error.
#[derive(Debug, thiserror::Error)]
pub enum GuardRefusal {
    #[error(
        "the server asked for the password {0}; refused before sending it (allow_weak_auth = true, with sslmode \"verify-full\", lets a server that cannot use SCRAM have it)"
    )]
    WeakRequest(&'static str),
    #[error(
        "the server offered a SCRAM challenge of {0} iterations (at least {MIN_SCRAM_ITERATIONS} needed); refused before answering"
    )]
    WeakScram(u32),
    #[error(
        "the server accepted the login without checking any password (trust in pg_hba.conf, or not the real server): kv-rotator cannot prove which password works; give the role a password method (scram-sha-256) for kv-rotator's address"
    )]
    NoPasswordCheck,
    #[error("malformed authentication message from the server: {0}")]
    Malformed(&'static str),
}

/// Authentication request codes (the `Int32` after an `R` message's length).
const AUTH_OK: u32 = 0;
const AUTH_CLEARTEXT: u32 = 3;
const AUTH_MD5: u32 = 5;
const AUTH_SASL_CONTINUE: u32 = 11;
const AUTH_SASL_FINAL: u32 = 12;

/// Where the reader is in the server's message stream.
#[derive(Debug, Clone)]
enum State {
    /// Collecting a message header (type byte and length) and, for `R`, the request code.
    Head { buf: [u8; 9], have: usize },
    /// Skipping the rest of a message.
    Skip { left: u64 },
    /// Reading a SCRAM server-first-message to check its iteration count.
    Challenge { body: Vec<u8>, left: usize },
    /// Authentication is over: no more inspection.
    Done,
}

/// Inspects the server's side of a PostgreSQL connection until authentication is over.
#[derive(Debug)]
pub struct AuthGuard<S> {
    inner: S,
    state: State,
    allow_weak: bool,
    /// A password exchange happened: SCRAM reached its final message (whose server
    /// signature tokio-postgres checks), or an allowed cleartext/MD5 request was answered.
    password_checked: bool,
    /// A refusal was made: every later read fails too.
    refused: bool,
}

impl<S> AuthGuard<S> {
    /// Guards `inner`; `allow_weak` lets cleartext and MD5 requests through.
    pub fn new(inner: S, allow_weak: bool) -> Self {
        Self { inner, state: State::Head { buf: [0; 9], have: 0 }, allow_weak, password_checked: false, refused: false }
    }

    /// Feeds bytes the server sent; an error when they carry a refused request.
    fn inspect(&mut self, mut bytes: &[u8]) -> Result<(), GuardRefusal> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Done => return Ok(()),
                State::Skip { left } => {
                    let n = (*left).min(bytes.len() as u64) as usize;
                    bytes = &bytes[n..];
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::Head { buf: [0; 9], have: 0 };
                    }
                }
                State::Challenge { body, left } => {
                    let n = (*left).min(bytes.len());
                    body.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    *left -= n;
                    if *left == 0 {
                        let iterations = scram_iterations(body).ok_or(GuardRefusal::Malformed("SCRAM challenge"))?;
                        if iterations < MIN_SCRAM_ITERATIONS {
                            return Err(GuardRefusal::WeakScram(iterations));
                        }
                        self.state = State::Head { buf: [0; 9], have: 0 };
                    }
                }
                State::Head { buf, have } => {
                    // An `R` message needs its code (9 bytes); others only type and length.
                    let want = if *have >= 1 && buf[0] == b'R' { 9 } else { 5 };
                    let n = (want - *have).min(bytes.len());
                    buf[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    let want = if buf[0] == b'R' { 9 } else { 5 };
                    if *have < want {
                        continue;
                    }
                    // The length counts itself but not the type byte.
                    let len = u64::from(u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]));
                    if len < (want - 1) as u64 {
                        return Err(GuardRefusal::Malformed("message length"));
                    }
                    let rest = len - (want - 1) as u64;
                    if buf[0] == b'R' {
                        match u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) {
                            AUTH_CLEARTEXT | AUTH_MD5 if self.allow_weak => self.password_checked = true,
                            AUTH_CLEARTEXT => return Err(GuardRefusal::WeakRequest("in clear text")),
                            AUTH_MD5 => return Err(GuardRefusal::WeakRequest("as an MD5 hash")),
                            AUTH_SASL_CONTINUE => {
                                if rest > MAX_SCRAM_CHALLENGE as u64 {
                                    return Err(GuardRefusal::Malformed("SCRAM challenge too long"));
                                }
                                self.state = State::Challenge { body: Vec::new(), left: rest as usize };
                                if rest == 0 {
                                    return Err(GuardRefusal::Malformed("empty SCRAM challenge"));
                                }
                                continue;
                            }
                            AUTH_SASL_FINAL => self.password_checked = true,
                            AUTH_OK if !self.password_checked => return Err(GuardRefusal::NoPasswordCheck),
                            AUTH_OK => {
                                self.state = State::Done;
                                return Ok(());
                            }
                            _ => {}
                        }
                    }
                    self.state =
                        if rest == 0 { State::Head { buf: [0; 9], have: 0 } } else { State::Skip { left: rest } };
                }
            }
        }
        Ok(())
    }
}

/// The `i=` attribute of a SCRAM server-first-message (`r=…,s=…,i=4096`).
fn scram_iterations(message: &[u8]) -> Option<u32> {
    std::str::from_utf8(message).ok()?.split(',').find_map(|attr| attr.strip_prefix("i="))?.parse().ok()
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthGuard<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        if this.refused {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::PermissionDenied, "authentication refused earlier")));
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let Err(refusal) = this.inspect(&buf.filled()[before..]) {
                    // The request never reaches the client, which so never acts on it.
                    buf.set_filled(before);
                    this.refused = true;
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::PermissionDenied, refusal)));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthGuard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: TlsStream + Unpin> TlsStream for AuthGuard<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

/// A [`TlsConnect`] that guards the stream its inner connector returns.
#[derive(Debug)]
pub struct GuardedTls<T> {
    inner: T,
    allow_weak: bool,
}

impl<T> GuardedTls<T> {
    pub fn new(inner: T, allow_weak: bool) -> Self {
        Self { inner, allow_weak }
    }
}

impl<S, T> TlsConnect<S> for GuardedTls<T>
where
    T: TlsConnect<S> + Send + 'static,
    T::Future: Send,
    S: Send + 'static,
{
    type Stream = AuthGuard<T::Stream>;
    type Error = T::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Stream, T::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let allow_weak = self.allow_weak;
        let handshake = self.inner.connect(stream);
        Box::pin(async move { Ok(AuthGuard::new(handshake.await?, allow_weak)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(code: u32, extra: &[u8]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&(8 + extra.len() as u32).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(extra);
        m
    }

    fn notice() -> Vec<u8> {
        let mut m = vec![b'N'];
        m.extend_from_slice(&(4 + 6u32).to_be_bytes());
        m.extend_from_slice(b"SWARN\0");
        m
    }

    /// Feeds `stream` one byte at a time and in one piece: the answer must not depend on
    /// how the server's bytes are split into reads.
    fn verdicts(stream: &[u8], allow_weak: bool) -> (bool, bool) {
        let mut whole = AuthGuard::new((), allow_weak);
        let mut bytewise = AuthGuard::new((), allow_weak);
        let refused_whole = whole.inspect(stream).is_err();
        let refused_bytewise = stream.iter().any(|b| bytewise.inspect(std::slice::from_ref(b)).is_err());
        (refused_whole, refused_bytewise)
    }

    fn scram(iterations: u32) -> Vec<u8> {
        let mut stream = auth(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        stream.extend(auth(AUTH_SASL_CONTINUE, format!("r=abc,s=c2FsdA==,i={iterations}").as_bytes()));
        stream
    }

    #[test]
    fn cleartext_and_md5_requests_are_refused_however_split() {
        for request in [auth(AUTH_CLEARTEXT, b""), auth(AUTH_MD5, b"salt")] {
            let mut stream = notice();
            stream.extend(request);
            assert_eq!(verdicts(&stream, false), (true, true));
            // Allowed, and answered: the Ok that follows is a checked login.
            stream.extend(auth(AUTH_OK, b""));
            assert_eq!(verdicts(&stream, true), (false, false));
        }
    }

    #[test]
    fn scram_exchange_and_what_follows_authentication_pass() {
        let mut stream = scram(4096);
        stream.extend(auth(AUTH_SASL_FINAL, b"v=xyz"));
        stream.extend(auth(AUTH_OK, b""));
        // After AuthenticationOk, bytes that look like a cleartext request are data.
        stream.extend(auth(AUTH_CLEARTEXT, b""));
        assert_eq!(verdicts(&stream, false), (false, false));
    }

    #[test]
    fn a_cheap_scram_challenge_is_refused_before_the_client_answers_it() {
        for weak in [1, 4095] {
            assert_eq!(verdicts(&scram(weak), false), (true, true), "i={weak}");
            assert_eq!(verdicts(&scram(weak), true), (true, true), "allow_weak_auth does not cover SCRAM: i={weak}");
        }
        assert_eq!(verdicts(&scram(4096), false), (false, false));
        assert_eq!(verdicts(&scram(600_000), false), (false, false));
        let mut garbled = auth(10, b"SCRAM-SHA-256\0\0");
        garbled.extend(auth(AUTH_SASL_CONTINUE, b"r=abc,s=c2FsdA==,i=lots"));
        assert_eq!(verdicts(&garbled, false), (true, true));
        let mut huge = auth(10, b"SCRAM-SHA-256\0\0");
        huge.extend(auth(AUTH_SASL_CONTINUE, &vec![b'x'; MAX_SCRAM_CHALLENGE + 1]));
        assert_eq!(verdicts(&huge, false), (true, true));
    }

    #[test]
    fn ok_without_a_password_check_is_refused() {
        // trust: Ok at once.
        assert_eq!(verdicts(&auth(AUTH_OK, b""), false), (true, true));
        assert_eq!(verdicts(&auth(AUTH_OK, b""), true), (true, true));
        // A SCRAM exchange cut short before its final message.
        let mut stream = scram(4096);
        stream.extend(auth(AUTH_OK, b""));
        assert_eq!(verdicts(&stream, false), (true, true));
    }

    #[test]
    fn a_length_shorter_than_its_own_header_is_malformed() {
        let mut stream = vec![b'N'];
        stream.extend_from_slice(&3u32.to_be_bytes());
        assert_eq!(verdicts(&stream, false), (true, true));
    }

    #[test]
    fn a_request_after_an_error_message_is_still_seen() {
        let mut stream = vec![b'E'];
        stream.extend_from_slice(&(4 + 3u32).to_be_bytes());
        stream.extend_from_slice(b"M\0\0");
        stream.extend(auth(AUTH_CLEARTEXT, b""));
        assert_eq!(verdicts(&stream, false), (true, true));
    }
}
