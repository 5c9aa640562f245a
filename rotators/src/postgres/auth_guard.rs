//! A stream wrapper that refuses a server's request for a cleartext or MD5 password.
//!
//! tokio-postgres answers `AuthenticationCleartextPassword` with the password itself and
//! `AuthenticationMD5Password` with `md5(md5(password ‖ user) ‖ salt)`, a login-equivalent
//! hash that is open to offline guessing. Any server, or anyone on the path of a
//! connection without verified TLS, can ask for either. The guard reads the server's
//! messages up to `AuthenticationOk` and fails the read that carries such a request, so
//! the client never gets the chance to answer: no byte of the password is written.
//!
//! It sits above TLS (the bytes it reads are the protocol, not ciphertext); with TLS it
//! passes the TLS stream's channel binding through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

/// Why the guard ended a connection; found in the source chain of the client's error.
#[derive(Debug, thiserror::Error)]
#[error(
    "the server asked for the password {0}; refused before sending it (set allow_weak_auth = true on the target \
     profile only if the server cannot use SCRAM)"
)]
pub struct WeakAuthRefused(&'static str);

/// Authentication request codes (the `Int32` after an `R` message's length).
const AUTH_OK: u32 = 0;
const AUTH_CLEARTEXT: u32 = 3;
const AUTH_MD5: u32 = 5;

/// Where the reader is in the server's message stream.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Collecting a message header (type byte and length) and, for `R`, the request code.
    Head { buf: [u8; 9], have: usize },
    /// Skipping the rest of a message.
    Skip { left: u64 },
    /// Authentication is over: no more inspection.
    Done,
}

/// Inspects the server's side of a PostgreSQL connection until authentication is over.
#[derive(Debug)]
pub struct AuthGuard<S> {
    inner: S,
    state: State,
    allow_weak: bool,
}

impl<S> AuthGuard<S> {
    /// Guards `inner`; with `allow_weak` it only watches.
    pub fn new(inner: S, allow_weak: bool) -> Self {
        Self { inner, state: State::Head { buf: [0; 9], have: 0 }, allow_weak }
    }

    /// Feeds bytes the server sent; an error when they carry a refused request.
    fn inspect(&mut self, mut bytes: &[u8]) -> Result<(), WeakAuthRefused> {
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
                    let rest = len.saturating_sub((want - 1) as u64);
                    if buf[0] == b'R' {
                        match u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) {
                            AUTH_CLEARTEXT if !self.allow_weak => return Err(WeakAuthRefused("in clear text")),
                            AUTH_MD5 if !self.allow_weak => return Err(WeakAuthRefused("as an MD5 hash")),
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

impl<S: AsyncRead + Unpin> AsyncRead for AuthGuard<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let Err(refused) = this.inspect(&buf.filled()[before..]) {
                    // The request never reaches the client, which so never answers it.
                    buf.set_filled(before);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::PermissionDenied, refused)));
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

    #[test]
    fn cleartext_and_md5_requests_are_refused_however_split() {
        for request in [auth(AUTH_CLEARTEXT, b""), auth(AUTH_MD5, b"salt")] {
            let mut stream = notice();
            stream.extend(request);
            assert_eq!(verdicts(&stream, false), (true, true));
            assert_eq!(verdicts(&stream, true), (false, false));
        }
    }

    #[test]
    fn scram_exchange_and_what_follows_authentication_pass() {
        let mut stream = auth(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        stream.extend(auth(11, b"r=abc,s=c2FsdA==,i=4096"));
        stream.extend(auth(12, b"v=xyz"));
        stream.extend(auth(AUTH_OK, b""));
        // After AuthenticationOk, bytes that look like a cleartext request are data.
        stream.extend(auth(AUTH_CLEARTEXT, b""));
        assert_eq!(verdicts(&stream, false), (false, false));
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
