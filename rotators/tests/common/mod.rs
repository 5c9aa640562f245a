//! Helpers the rotators' integration tests share: a CA that signed nothing, a TLS
//! acceptor with a CA of its own, a TCP
//! forwarder (to reach a server by a name its certificate does not carry; one that
//! counts connections, to count logins), a server that
//! accepts and never speaks, a port nobody listens on, the plain set and verify
//! requests the tests send, and the thread the guards' cleanups run on.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A self-signed CA, written to `dir`, that did not sign any server's certificate.
pub fn other_ca(dir: &Path) -> PathBuf {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "not the test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let path = dir.join("other-ca.pem");
    std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
    path
}

/// A TLS acceptor for 127.0.0.1 with a certificate from a fresh CA, which is written to
/// `ca_dir/ca.pem`.
pub fn tls_acceptor(ca_dir: &Path) -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls;
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "fake server CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    std::fs::write(ca_dir.join("ca.pem"), ca.pem()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Forwards connections on `listen_ip` (a port the OS picks, returned) to `to`.
pub async fn forwarder(listen_ip: &str, to: (&'static str, u16)) -> (u16, tokio::task::JoinHandle<()>) {
    let (port, _, task) = counting_forwarder(listen_ip, to).await;
    (port, task)
}

/// [`forwarder`], counting the connections it accepted: one per login attempt.
pub async fn counting_forwarder(
    listen_ip: &str,
    to: (&'static str, u16),
) -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind((listen_ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(to).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (port, accepted, task)
}

/// A server on `host` that accepts connections and never says a word.
pub async fn silent_server(host: &str) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            held.push(socket);
        }
    });
    (port, task)
}

/// A port on `host` nobody listens on (bound, noted, closed).
pub fn unused_port(host: &str) -> u16 {
    std::net::TcpListener::bind((host, 0)).unwrap().local_addr().unwrap().port()
}

/// Four fresh passwords under the default policy: pending, current, previous, admin.
pub fn four_passwords() -> [secrecy::SecretString; 4] {
    let policy = kv_rotator_rotators::PasswordPolicy::default();
    [policy.generate(), policy.generate(), policy.generate(), policy.generate()]
}

/// A set request for `app` with every kind of login a rotator may try, from
/// [`four_passwords`]'s order (admin `root`).
pub fn every_login_request(
    [pending, current, previous, admin]: &[secrecy::SecretString; 4],
) -> kv_rotator_rotators::SetPasswordRequest {
    kv_rotator_rotators::SetPasswordRequest::new("app", pending.clone(), current.clone())
        .with_previous(vec![previous.clone()])
        .with_admin(kv_rotator_rotators::Credential::new("root", admin.clone()))
}

/// A set request for `user` with its current password only (no previous one, no admin),
/// not new (a resumed journal: the pending password is tried first).
pub fn request(
    user: &str,
    pending: &secrecy::SecretString,
    current: &secrecy::SecretString,
) -> kv_rotator_rotators::SetPasswordRequest {
    kv_rotator_rotators::SetPasswordRequest::new(user, pending.clone(), current.clone())
}

/// A verify request for `user` with `password`.
pub fn verify(user: &str, password: &secrecy::SecretString) -> kv_rotator_rotators::VerifyRequest {
    kv_rotator_rotators::VerifyRequest::new(user, password.clone())
}

/// Runs a test guard's cleanup to completion on a thread and runtime of its own: `Drop`
/// may run on a runtime thread (even while unwinding), where blocking on a future panics.
/// `what` names what is cleaned up if the cleanup itself panics.
pub fn cleanup_on_own_thread<F, Fut>(what: &str, cleanup: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let result = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(cleanup())
    })
    .join();
    if result.is_err() {
        eprintln!("cleanup of {what} panicked");
    }
}
