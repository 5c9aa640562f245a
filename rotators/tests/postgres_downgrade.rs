//! The PostgreSQL rotator against fake servers that try to get the password out of it:
//! asking for it in clear text or as MD5 (with and without TLS), or refusing TLS. Each
//! fake records every byte the rotator sends, and the test searches them for the
//! passwords.
#![cfg(feature = "postgres")]

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
}

impl Ask {
    fn message(self) -> Vec<u8> {
        let (code, extra): (u32, &[u8]) = match self {
            Ask::Cleartext => (3, b""),
            Ask::Md5 => (5, b"salt"),
        };
        let mut m = vec![b'R'];
        m.extend_from_slice(&(8 + extra.len() as u32).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(extra);
        m
    }
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

async fn fake_server(tls: Tls, ask: Ask) -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Received = Arc::default();
    let acceptor = (tls == Tls::Accept).then(tls_acceptor);
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
    let _ = stream.write_all(&ask.message()).await;
    let _ = stream.flush().await;
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

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
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
    SetPasswordRequest {
        username: "app".to_owned(),
        pending: pending.clone(),
        current: current.clone(),
        previous: vec![previous.clone()],
        admin: Some(Credential { username: "admin".to_owned(), password: admin.clone() }),
    }
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
    for (tls, mode) in [(Tls::None, SslMode::Disable), (Tls::Accept, SslMode::Require)] {
        for ask in [Ask::Cleartext, Ask::Md5] {
            let (port, log) = fake_server(tls, ask).await;
            let all = passwords();
            let err = rotator(port, |cfg| cfg.sslmode = mode).set_password(set_request(&all)).await.unwrap_err();
            assert!(matches!(err, RotatorError::Permanent(_)), "{tls:?} {ask:?}: {err:?}");
            let expected = match ask {
                Ask::Cleartext => "asked for the password in clear text; refused before sending it",
                Ask::Md5 => "asked for the password as an MD5 hash; refused before sending it",
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
    // The control for the test above: with the guard off, the same fake gets a password
    // (in clear over plain TCP), so "no password leaked" there is the guard's doing.
    let (port, log) = fake_server(Tls::None, Ask::Cleartext).await;
    let all = passwords();
    let verify = rotator(port, |cfg| {
        cfg.sslmode = SslMode::Disable;
        cfg.allow_weak_auth = true;
    })
    .verify(VerifyRequest { username: "app".into(), password: all[1].clone() })
    .await;
    assert!(!matches!(verify, Ok(VerifyResponse::Accepted)), "{verify:?}");
    let sent = received(&log, 1).await;
    assert!(leaked(&sent, &all[1..2]), "with allow_weak_auth the fake should have got the password");
}

#[tokio::test]
async fn required_channel_binding_refuses_a_cleartext_request_even_when_weak_auth_is_allowed() {
    let (port, log) = fake_server(Tls::Accept, Ask::Cleartext).await;
    let all = passwords();
    let err = rotator(port, |cfg| {
        cfg.sslmode = SslMode::Require;
        cfg.allow_weak_auth = true;
        cfg.channel_binding = ChannelBinding::Require;
    })
    .set_password(set_request(&all))
    .await
    .unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("channel binding"), "{err}");
    assert!(!leaked(&received(&log, 1).await, &all));
}

#[tokio::test]
async fn a_server_that_refuses_tls_gets_nothing_under_require() {
    let (port, log) = fake_server(Tls::Refuse, Ask::Cleartext).await;
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
async fn a_self_signed_server_is_refused_under_verify_full_with_the_system_store() {
    let (port, log) = fake_server(Tls::Accept, Ask::Cleartext).await;
    let all = passwords();
    // Default sslmode (verify-full) and trust anchors (the system store).
    let err = rotator(port, |_| {}).set_password(set_request(&all)).await.unwrap_err();
    assert!(matches!(err, RotatorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("certificate was refused under sslmode \"verify-full\""), "{err}");
    // The handshake failed: nothing but the SSLRequest reached the fake.
    let sent = received(&log, 1).await;
    assert_eq!(sent.iter().map(Vec::len).collect::<Vec<_>>(), vec![8], "{sent:?}");
}
