//! The MariaDB rotator against fake servers that try to get a password out of it, or to
//! make it believe a password works, under the configurations it accepts (`tls =
//! "disable"` only for loopback hosts): a `caching_sha2_password` greeting with RSA "full
//! authentication" (mysql_async would encrypt the password with the fake's key), an
//! `ed25519` greeting, switches to `mysql_clear_password`, `dialog` and
//! `caching_sha2_password`, and an immediate OK without any check. Each fake records
//! every byte the rotator sends, and the test searches them for the passwords and what
//! is login-equivalent to them (SHA1(password), the stored hash).
#![cfg(feature = "mariadb")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::digest::{digest, SHA1_FOR_LEGACY_USE_ONLY as SHA1};
use kv_rotator_rotators::mariadb::{MariaDbConfig, MariaDbRotator, TlsMode};
use kv_rotator_rotators::{Credential, PasswordPolicy, Rotator, RotatorError, SetPasswordRequest, VerifyRequest};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake does once it has greeted.
#[derive(Debug, Clone, Copy)]
enum Fake {
    /// Greets with `caching_sha2_password`, asks for full authentication and sends an RSA
    /// public key when asked for one.
    RsaFullAuth,
    /// Greets with this plugin, then refuses every login.
    Greets(&'static str),
    /// Greets with `mysql_native_password`, then asks to switch to this plugin.
    Switches(&'static str),
    /// Greets with `mysql_native_password`, answers OK to everything.
    ImmediateOk,
}

const SCRAMBLE: &[u8; 20] = b"abcdefghijklmnopqrst";

/// A test RSA public key (what a fake would send; its private half is not needed here).
const RSA_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo
4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u
+qKhbwKfBstIs+bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyeh
kd3qqGElvW/VDL5AaWTg0nLVkjRo9z+40RQzuVaE8AkAFmxZzow3x+VJYKdjykkJ
0iT9wCS0DRTXu269V264Vf/3jvredZiKRkgwlL9xNAwxXFg0x/XFw005UWVRIkdg
cKWTjpBP2dPwVZ4WWC+9aGVd+Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbc
mwIDAQAB
-----END PUBLIC KEY-----
";

fn greeting(plugin: &str) -> Vec<u8> {
    let mut body = vec![10u8];
    body.extend_from_slice(b"10.11.0-MariaDB-fake\0");
    body.extend_from_slice(&7u32.to_le_bytes());
    body.extend_from_slice(&SCRAMBLE[..8]);
    body.push(0);
    let caps: u32 = 0x1 | 0x200 | 0x8000 | 0x8_0000; // long password, 4.1, secure connection, plugin auth
    body.extend_from_slice(&(caps as u16).to_le_bytes());
    body.push(33);
    body.extend_from_slice(&2u16.to_le_bytes());
    body.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    body.push(21);
    body.extend_from_slice(&[0u8; 10]);
    body.extend_from_slice(&SCRAMBLE[8..]);
    body.push(0);
    body.extend_from_slice(plugin.as_bytes());
    body.push(0);
    body
}

const OK: &[u8] = &[0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00];
const ERR_1045: &[u8] = b"\xff\x15\x04#28000Access denied";

async fn write_packet(s: &mut TcpStream, seq: u8, body: &[u8]) -> std::io::Result<()> {
    let mut p = (body.len() as u32).to_le_bytes()[..3].to_vec();
    p.push(seq);
    p.extend_from_slice(body);
    s.write_all(&p).await
}

async fn read_packet(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).await?;
    let mut b = vec![0u8; u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize];
    s.read_exact(&mut b).await?;
    Ok((h[3], b))
}

/// Every packet the rotator sent, per connection.
type Received = Arc<Mutex<Vec<Vec<Vec<u8>>>>>;

async fn fake_server(fake: Fake) -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Received = Arc::default();
    let log = Arc::clone(&received);
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let at = {
                    let mut log = log.lock().unwrap();
                    log.push(Vec::new());
                    log.len() - 1
                };
                let plugin = match fake {
                    Fake::RsaFullAuth => "caching_sha2_password",
                    Fake::Greets(plugin) => plugin,
                    Fake::Switches(_) | Fake::ImmediateOk => "mysql_native_password",
                };
                if write_packet(&mut s, 0, &greeting(plugin)).await.is_err() {
                    return;
                }
                let mut answered = 0;
                while let Ok((seq, packet)) = read_packet(&mut s).await {
                    log.lock().unwrap()[at].push(packet.clone());
                    answered += 1;
                    let reply: Vec<u8> = match (fake, answered) {
                        (Fake::RsaFullAuth, 1) => vec![0x01, 0x04],
                        (Fake::RsaFullAuth, _) if packet == [0x02] => [&[0x01][..], RSA_PUBLIC_KEY.as_bytes()].concat(),
                        (Fake::Switches(plugin), 1) => {
                            [&[0xfe][..], plugin.as_bytes(), b"\0", SCRAMBLE, b"\0"].concat()
                        }
                        (Fake::ImmediateOk, _) => OK.to_vec(),
                        _ => ERR_1045.to_vec(),
                    };
                    if write_packet(&mut s, seq.wrapping_add(1), &reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, received)
}

fn rotator(port: u16) -> MariaDbRotator {
    let mut cfg = MariaDbConfig::new("127.0.0.1");
    cfg.port = port;
    cfg.tls = TlsMode::Disable;
    cfg.connect_timeout_secs = 3;
    MariaDbRotator::new(cfg, PasswordPolicy::default()).unwrap()
}

fn password() -> SecretString {
    PasswordPolicy::default().generate()
}

fn request() -> SetPasswordRequest {
    SetPasswordRequest::new("app", password(), password())
        .with_previous(vec![password()])
        .with_admin(Credential::new("root", password()))
}

/// The password, and what logs in without it: SHA1(password) and the stored hash, raw
/// and in hex.
fn forms(password: &SecretString) -> Vec<Vec<u8>> {
    let stage1 = digest(&SHA1, password.expose_secret().as_bytes());
    let stage2 = digest(&SHA1, stage1.as_ref());
    vec![
        password.expose_secret().as_bytes().to_vec(),
        stage1.as_ref().to_vec(),
        stage2.as_ref().to_vec(),
        hex::encode_upper(stage1.as_ref()).into_bytes(),
        hex::encode_upper(stage2.as_ref()).into_bytes(),
        hex::encode(stage2.as_ref()).into_bytes(),
    ]
}

fn assert_nothing_of(req: &SetPasswordRequest, received: &Received) {
    let mut passwords = vec![&req.pending, &req.current];
    passwords.extend(&req.previous);
    passwords.extend(req.admin.iter().map(|a| &a.password));
    let received = received.lock().unwrap();
    for packet in received.iter().flatten() {
        for password in &passwords {
            for form in forms(password) {
                assert!(!packet.windows(form.len()).any(|w| w == form), "a password or its equivalent was sent");
            }
        }
    }
}

/// Runs `set_password` and `verify` against `fake`; returns the errors and what it got.
async fn attack(fake: Fake) -> (RotatorError, RotatorError, Received, SetPasswordRequest) {
    let (port, received) = fake_server(fake).await;
    let req = request();
    let set = tokio::time::timeout(Duration::from_secs(20), rotator(port).set_password(req.clone()))
        .await
        .expect("set_password hangs")
        .unwrap_err();
    let admin = req.admin.clone().unwrap();
    let verify = rotator(port).verify(VerifyRequest::new(admin.username, admin.password)).await;
    let verify = verify.unwrap_err();
    assert_nothing_of(&req, &received);
    (set, verify, received, req)
}

#[tokio::test]
async fn rsa_full_authentication_gets_nothing() {
    let (set, verify, received, _) = attack(Fake::RsaFullAuth).await;
    for e in [&set, &verify] {
        assert!(matches!(e, RotatorError::Permanent(_)), "{e:?}");
        assert!(e.to_string().contains("authentication plugin \"caching_sha2_password\""), "{e}");
    }
    // Cut at the greeting: the fake never even got the handshake response.
    assert!(received.lock().unwrap().iter().all(Vec::is_empty), "{:?}", received.lock().unwrap());
}

#[tokio::test]
async fn other_plugins_in_the_greeting_get_nothing() {
    for plugin in ["client_ed25519", "parsec", "mysql_clear_password", "dialog", "sha256_password"] {
        let (set, _, received, _) = attack(Fake::Greets(plugin)).await;
        assert!(matches!(set, RotatorError::Permanent(_)), "{plugin}: {set:?}");
        assert!(set.to_string().contains(&format!("authentication plugin {plugin:?}")), "{set}");
        assert!(received.lock().unwrap().iter().all(Vec::is_empty), "{plugin}");
    }
}

#[tokio::test]
async fn switches_to_other_plugins_get_only_the_native_challenge_response() {
    for plugin in ["mysql_clear_password", "dialog", "caching_sha2_password", "client_ed25519", "mysql_old_password"] {
        let (set, verify, received, _) = attack(Fake::Switches(plugin)).await;
        for e in [&set, &verify] {
            assert!(matches!(e, RotatorError::Permanent(_)), "{plugin}: {e:?}");
            assert!(e.to_string().contains(&format!("authentication plugin {plugin:?}")), "{e}");
        }
        // One handshake response per connection (the native challenge response), and
        // nothing after the switch request.
        let received = received.lock().unwrap();
        assert!(!received.is_empty() && received.iter().all(|c| c.len() == 1), "{plugin}: {received:?}");
    }
}

#[tokio::test]
async fn an_immediate_ok_proves_nothing() {
    let (set, verify, _, _) = attack(Fake::ImmediateOk).await;
    for e in [&set, &verify] {
        assert!(matches!(e, RotatorError::Permanent(_)), "{e:?}");
        assert!(e.to_string().contains("cannot prove which password works"), "{e}");
    }
}

#[tokio::test]
async fn plaintext_to_a_host_that_is_not_loopback_is_refused() {
    for host in ["db.example", "10.0.0.5", "127.0.0.1.example"] {
        let mut cfg = MariaDbConfig::new(host);
        cfg.tls = TlsMode::Disable;
        let e = MariaDbRotator::new(cfg, PasswordPolicy::default()).unwrap_err().to_string();
        assert!(e.starts_with(&format!("tls = \"disable\" is refused for host {host:?}")), "{e}");
        assert!(e.contains("loopback") && e.contains("\"verify-full\""), "{e}");
    }
}
