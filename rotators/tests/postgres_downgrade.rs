//! The PostgreSQL rotator against fake servers that try to get the password out of it,
//! or to make it believe a password works: asking for it in clear text or as MD5 (with
//! and without TLS), a cheap SCRAM challenge, `AuthenticationOk` without any check, or
//! refusing TLS. Each fake records every byte the rotator sends, and the test searches
//! them for the passwords.
#![cfg(feature = "postgres")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kv_rotator_rotators::postgres::{ChannelBinding, PostgresConfig, PostgresRotator, SslMode};
use kv_rotator_rotators::testkit::contains_secret;
use kv_rotator_rotators::{
    Credential, PasswordPolicy, Rotator, RotatorError, SetPasswordRequest, VerifyRequest, VerifyResponse,
};
use secrecy::SecretString;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the fake server asks for once the startup message is in.
#[derive(Debug, Clone, Copy)]
enum Ask {
    Cleartext,
    Md5,
    /// `AuthenticationOk` at once, as `trust` would.
    Trust,
    /// A SCRAM exchange whose challenge has this many iterations.
    Scram(u32),
}

fn auth(code: u32, extra: &[u8]) -> Vec<u8> {
    let mut m = vec![b'R'];
    m.extend_from_slice(&(8 + extra.len() as u32).to_be_bytes());
    m.extend_from_slice(&code.to_be_bytes());
    m.extend_from_slice(extra);
    m
}

/// How the fake treats TLS.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tls {
    /// Plain TCP: the client sends the startup message at once.
    None,
    /// Answers the SSLRequest with `S` and a self-signed certificate.
    Accept,
    /// Answers the SSLRequest with `N`.
    Refuse,
}

/// Everything the rotator sent, per connection.
type Received = Arc<Mutex<Vec<Vec<u8>>>>;

/// A fake server; the CA that signed its certificate (for "127.0.0.1") is written into
/// `ca_dir` as `ca.pem`.
async fn fake_server(tls: Tls, ask: Ask, ca_dir: &std::path::Path) -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Received = Arc::default();
    let acceptor = (tls == Tls::Accept).then(|| common::tls_acceptor(ca_dir));
    let log = Arc::clone(&received);
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let log = Arc::clone(&log);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                if tls != Tls::None {
                    let mut request = [0u8; 8];
                    if socket.read_exact(&mut request).await.is_err() {
                        return;
                    }
                    seen.extend_from_slice(&request);
                    if tls == Tls::Refuse {
                        let _ = socket.write_all(b"N").await;
                        record_rest(socket, seen, &log).await;
                        return;
                    }
                    socket.write_all(b"S").await.unwrap();
                    let Ok(stream) = acceptor.unwrap().accept(socket).await else {
                        log.lock().unwrap().push(seen);
                        return;
                    };
                    converse(stream, seen, ask, &log).await;
                } else {
                    converse(socket, seen, ask, &log).await;
                }
            });
        }
    });
    (port, received)
}

/// Reads the startup message, asks for the password, and records what comes back.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, mut seen: Vec<u8>, ask: Ask, log: &Received) {
    let mut len = [0u8; 4];
    if stream.read_exact(&mut len).await.is_err() {
        return;
    }
    let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
    if stream.read_exact(&mut startup).await.is_err() {
        return;
    }
    seen.extend_from_slice(&len);
    seen.extend_from_slice(&startup);
    let first = match ask {
        Ask::Cleartext => auth(3, b""),
        Ask::Md5 => auth(5, b"salt"),
        // AuthenticationOk, then ReadyForQuery: a session as far as the client can tell.
        Ask::Trust => [auth(0, b""), b"Z\0\0\0\x05I".to_vec()].concat(),
        Ask::Scram(_) => auth(10, b"SCRAM-SHA-256\0\0"),
    };
    let _ = stream.write_all(&first).await;
    let _ = stream.flush().await;
    if let Ask::Scram(iterations) = ask {
        // The client-first message carries a nonce and no proof; answer it with the
        // challenge, whose reply would be the proof.
        let mut head = [0u8; 5];
        if stream.read_exact(&mut head).await.is_err() {
            return;
        }
        let mut body = vec![0u8; u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        seen.extend_from_slice(&head);
        seen.extend_from_slice(&body);
        let text = String::from_utf8_lossy(&body);
        let nonce = text.split("r=").nth(1).unwrap_or("").trim_end_matches('\0');
        let challenge = format!("r={nonce}fake,s=c2FsdHNhbHQ=,i={iterations}");
        let _ = stream.write_all(&auth(11, challenge.as_bytes())).await;
        let _ = stream.flush().await;
    }
    record_rest(stream, seen, log).await;
}

/// Everything the client sends until it closes (or a second passes).
async fn record_rest<S: AsyncRead + Unpin>(mut stream: S, mut seen: Vec<u8>, log: &Received) {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    log.lock().unwrap().push(seen);
}

fn rotator(port: u16, adjust: impl FnOnce(&mut PostgresConfig)) -> PostgresRotator {
    let mut cfg = PostgresConfig::new("127.0.0.1");
    cfg.port = port;
    cfg.connect_timeout_secs = 5;
    adjust(&mut cfg);
    PostgresRotator::new(cfg, PasswordPolicy::default()).unwrap()
}

fn passwords() -> [SecretString; 4] {
    let policy = PasswordPolicy::default();
    [policy.generate(), policy.generate(), policy.generate(), policy.generate()]
}

/// A set request with every kind of credential the rotator may try.
fn set_request([pending, current, previous, admin]: &[SecretString; 4]) -> SetPasswordRequest {
    SetPasswordRequest::new("app", pending.clone(), current.clone())
        .with_previous(vec![previous.clone()])
        .with_admin(Credential::new("admin", admin.clone()))
}

/// Waits for the fake to finish recording, then returns what it got.
async fn received(log: &Received, connections: usize) -> Vec<Vec<u8>> {
    for _ in 0..100 {
        if log.lock().unwrap().len() >= connections {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log.lock().unwrap().clone()
}

fn leaked(sent: &[Vec<u8>], passwords: &[SecretString]) -> bool {
    sent.iter().any(|bytes| passwords.iter().any(|p| contains_secret(&String::from_utf8_lossy(bytes), p)))
}

#[tokio::test]
async fn cleartext_and_md5_requests_get_no_password_with_or_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    for (tls, mode) in [(Tls::None, SslMode::Disable), (Tls::Accept, SslMode::Require)] {
        for ask in [Ask::Cleartext, Ask::Md5] {
            let (port, log) = fake_server(tls, ask, dir.path()).await;
            let all = passwords();
            let err = rotator(port, |cfg| cfg.sslmode = mode).set_password(set_request(&all)).await.unwrap_err();
            assert!(matches!(err, RotatorError::Permanent(_)), "{tls:?} {ask:?}: {err:?}");
            let expected = match ask {
                Ask::Cleartext => "asked for the password in clear text; refused before sending it",
                _ => "asked for the password as an MD5 hash; refused before sending it",
            };
            assert!(err.to_string().contains(expected), "{err}");
            let sent = received(&log, 1).await;
            assert!(!sent.is_empty(), "the rotator never reached the fake server");
            if tls == Tls::None {
                // The startup message went out (with the user name), the password did not.
                assert!(sent[0].windows(3).any(|w| w == b"app"), "the fake did not see the startup message");
            }
            assert!(!leaked(&sent, &all), "{tls:?} {ask:?}: a password reached the fake server");
        }
    }
}

#[tokio::test]
async fn allow_weak_auth_answers_the_request_which_is_what_the_guard_prevents() {
    // The control for the test above: with the guard off (allowed only under verify-full,
    // so this fake has a certificate from a CA the rotator trusts), the same request gets
    // a password, so "no password leaked" there is the guard's doing.
    let dir = tempfile::tempdir().unwrap();
    let (port, log) = fake_server(Tls::Accept, Ask::Cleartext, dir.path()).await;
    let all = passwords();
    let verify = rotator(port, |cfg| {
        cfg.sslrootcert = Some(dir.path().join("ca.pem"));
        cfg.allow_weak_auth = true;
    })
    .verify(VerifyRequest::new("app", all[1].clone()))
    .await;
    assert!(!matches!(verify, Ok(VerifyResponse::Accepted)), "{verify:?}");
    let sent = received(&log, 1).await;
    assert!(leaked(&sent, &all[1..2]), "with allow_weak_auth the fake should have got the password");
}

#[tokio::test]
async fn allow_weak_auth_is_refused_unless_the_server_is_verified() {
    for mode in [SslMode::Disable, SslMode::Require] {
        let mut cfg = PostgresConfig::new("127.0.0.1");
        cfg.sslmode = mode;
        cfg.allow_weak_auth = true;
        let e = PostgresRotator::new(cfg, PasswordPolicy::default()).unwrap_err().to_string();
        assert!(e.contains("allow_weak_auth = true with sslmode"), "{e}");
    }
}

#[tokio::test]
async fn required_channel_binding_refuses_a_cleartext_request_even_when_weak_auth_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (port, log) = fake_server(Tls::Accept, Ask::Cleartext, dir.path()).await;
    let all = passwords();
    let err = rotator(port, |cfg| {
        cfg.sslrootcert = Some(dir.path().join("ca.pem"));
        cfg.allow_weak_auth = true;
        cfg.channel_binding = Some(ChannelBinding::Require);
    })
    .set_password(set_request(&all))
    .await
    .unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("channel binding"), "{err}");
    assert!(!leaked(&received(&log, 1).await, &all));
}

#[tokio::test]
async fn a_login_accepted_without_any_check_proves_nothing() {
    // A fake (or a trust line in pg_hba.conf) says yes to any password: verify must not
    // report Accepted, and set_password must not report the pending one as already set.
    let dir = tempfile::tempdir().unwrap();
    for (tls, mode) in [(Tls::None, SslMode::Disable), (Tls::Accept, SslMode::Require)] {
        let (port, log) = fake_server(tls, Ask::Trust, dir.path()).await;
        let all = passwords();
        let rotator = rotator(port, |cfg| cfg.sslmode = mode);
        let err = rotator.verify(VerifyRequest::new("app", all[0].clone())).await.unwrap_err();
        assert!(matches!(err, RotatorError::Permanent(_)), "{tls:?}: {err:?}");
        assert!(err.to_string().contains("without checking any password"), "{err}");
        let err = rotator.set_password(set_request(&all)).await.unwrap_err();
        assert!(err.to_string().contains("without checking any password"), "{err}");
        assert!(!leaked(&received(&log, 2).await, &all));
    }
}

#[tokio::test]
async fn a_cheap_scram_challenge_gets_no_proof() {
    let dir = tempfile::tempdir().unwrap();
    let (port, log) = fake_server(Tls::None, Ask::Scram(1), dir.path()).await;
    let all = passwords();
    let err = rotator(port, |cfg| cfg.sslmode = SslMode::Disable).set_password(set_request(&all)).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("SCRAM challenge of 1 iterations"), "{err}");
    let sent = received(&log, 1).await;
    let text = String::from_utf8_lossy(&sent[0]).into_owned();
    assert!(text.contains("n,,n=,r="), "the client-first message should have gone out: {text:?}");
    assert!(!text.contains(",p="), "a SCRAM proof went out: {text:?}");

    // The control: a proper count gets the client's proof (and the fake can go no further).
    let (port, log) = fake_server(Tls::None, Ask::Scram(4096), dir.path()).await;
    let _ = rotator(port, |cfg| cfg.sslmode = SslMode::Disable).set_password(set_request(&all)).await;
    let sent = received(&log, 1).await;
    assert!(String::from_utf8_lossy(&sent[0]).contains(",p="), "no proof even at 4096 iterations");
}

#[tokio::test]
async fn a_server_that_refuses_tls_gets_nothing_under_require() {
    let dir = tempfile::tempdir().unwrap();
    let (port, log) = fake_server(Tls::Refuse, Ask::Cleartext, dir.path()).await;
    let all = passwords();
    let err = rotator(port, |cfg| cfg.sslmode = SslMode::Require).set_password(set_request(&all)).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("does not support TLS"), "{err}");
    let sent = received(&log, 1).await;
    // Only the 8-byte SSLRequest went out: no startup message, no fallback to plain TCP.
    assert_eq!(sent.iter().map(Vec::len).collect::<Vec<_>>(), vec![8], "{sent:?}");
    assert!(!leaked(&sent, &all));
}

#[tokio::test]
async fn a_server_with_an_unknown_ca_is_refused_under_verify_full_with_the_system_store() {
    let dir = tempfile::tempdir().unwrap();
    let (port, log) = fake_server(Tls::Accept, Ask::Cleartext, dir.path()).await;
    let all = passwords();
    // Default sslmode (verify-full) and trust anchors (the system store).
    let err = rotator(port, |_| {}).set_password(set_request(&all)).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("certificate was refused under sslmode \"verify-full\""), "{err}");
    // The handshake failed: nothing but the SSLRequest reached the fake.
    let sent = received(&log, 1).await;
    assert_eq!(sent.iter().map(Vec::len).collect::<Vec<_>>(), vec![8], "{sent:?}");
}
