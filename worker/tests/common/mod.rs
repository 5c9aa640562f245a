//! Helpers shared by the worker's integration suites.

pub mod devsite;
pub mod pg;
pub mod proc;
pub mod served;
pub mod webdriver;

#[allow(dead_code)] // not every suite writes secrets this way
/// Writes a version of `name` carrying `tags`, with a random value, expiring in
/// `expires_in_days` (none: no expiry); its version id.
pub async fn put_secret(
    store: &dyn kv_rotator_keyvault::SecretStore,
    name: &str,
    tags: &[(&str, &str)],
    expires_in_days: Option<i64>,
) -> String {
    let new = kv_rotator_keyvault::NewSecretVersion {
        value: kv_rotator_rotators::PasswordPolicy::default().generate(),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        content_type: None,
        expires: expires_in_days.map(|d| time::OffsetDateTime::now_utc() + time::Duration::days(d)),
        not_before: None,
    };
    store.set_secret(name, new).await.unwrap().version
}

/// The per-secret lines of `rotate --output text`: those before the blank line that opens
/// the summary table.
#[allow(dead_code)] // not every suite prints rotate lines
pub fn secret_lines(stdout: &str) -> Vec<&str> {
    stdout.lines().take_while(|l| !l.is_empty()).collect()
}

/// The summary table of `rotate --output text`: each outcome's count, and `total`.
#[allow(dead_code)] // not every suite prints rotate lines
pub fn summary_of(stdout: &str) -> std::collections::BTreeMap<String, usize> {
    let table = stdout.split("\n\n").nth(1).unwrap_or_else(|| panic!("no summary table:\n{stdout}"));
    let mut rows = table.lines();
    assert_eq!(rows.next().map(|h| h.split_whitespace().collect::<Vec<_>>()), Some(vec!["outcome", "secrets"]));
    rows.map(|row| {
        let (state, count) = row.rsplit_once(' ').unwrap_or_else(|| panic!("not a summary row: {row:?}"));
        (state.trim().to_owned(), count.parse().unwrap_or_else(|_| panic!("not a count: {row:?}")))
    })
    .collect()
}

/// The line `secret: …` that `rotate` (in process or through the admin API) and
/// `rotate --dry-run` print for `secret`.
#[allow(dead_code)] // not every suite prints rotate lines
pub fn line_for<'a>(stdout: &'a str, secret: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{secret}: ")))
        .unwrap_or_else(|| panic!("no line for {secret}:\n{stdout}"))
}

/// A loopback port that refuses connections for as long as the returned socket lives: it
/// is bound but never listens, so no other process can take the port meanwhile (as one
/// could a port bound, dropped and then named).
#[allow(dead_code)] // not every suite needs a closed port
pub fn refused_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((std::net::Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}
