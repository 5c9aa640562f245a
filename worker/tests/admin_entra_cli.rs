//! `kv-rotator rotate` through a running `serve` whose admin API takes Entra ID tokens
//! (`[admin.auth] mode = "entra-id"`): the service writes a proof key to `proof_file`,
//! `rotate` has it prove it knows the key, and only then gets a token from
//! `client_credential` — here the `azure-cli` kind, running a stand-in `az` that prints a
//! token signed by the test issuer (webhook/tests/common/entra.rs) — and sends it. Also: a
//! program squatting the admin port, before the job or once the service is killed mid-job,
//! never gets a token, and a token without the app role is refused with the role named.

#![cfg(unix)] // the stand-in `az` is a shell script

#[allow(dead_code)] // each suite uses some of the shared helpers
mod common;
#[allow(dead_code)]
#[path = "../../webhook/tests/common/entra.rs"]
mod entra;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::line_for;
use common::served::{Served, Squatter};
use serde_json::json;

const ROLE: &str = "KvRotator.Rotate";
/// The operator's object id in the stand-in `az`'s tokens.
const OPERATOR_OID: &str = "5e1f0c2a-0000-4000-8000-00000000d00d";

/// [`Served`] with an Entra ID admin API (the test issuer's), its proof key in
/// `run/admin-proof`, and `rotate`'s credential the `azure-cli` kind: a stand-in `az`
/// first on `PATH`, printing the token [`EntraSite::hand_out`] last wrote.
struct EntraSite {
    served: Served,
    signer: entra::Signer,
    idp: entra::IdentityProvider,
    /// Where the service writes its proof key (`None`: the setting is left out).
    proof_file: Option<PathBuf>,
}

impl EntraSite {
    async fn new() -> EntraSite {
        let signer = entra::Signer::generate("admin-key");
        let idp = entra::IdentityProvider::start(vec![signer.jwk()]).await;
        let mut served = Served::new("", &[]).await;
        let dir = served.site.dir.path().to_owned();
        std::fs::create_dir(dir.join("run")).unwrap();
        std::fs::create_dir(dir.join("bin")).unwrap();
        let path = format!("{}:{}", dir.join("bin").display(), std::env::var("PATH").unwrap_or_default());
        served.env.push(("PATH".to_owned(), path));
        let proof_file = Some(dir.join("run").join("admin-proof"));
        let mut entra = EntraSite { served, signer, idp, proof_file };
        entra.install_az();
        entra.hand_out(&[ROLE]);
        entra.write_config();
        entra
    }

    /// Writes the configuration with [`EntraSite::proof_file`] as it is now.
    fn write_config(&mut self) {
        let proof_file = match &self.proof_file {
            Some(path) => format!("proof_file = \"{}\"\n", path.display()),
            None => String::new(),
        };
        self.served.admin_auth = format!(
            "mode = \"entra-id\"\ntenant_id = \"{}\"\naudience = [\"{}\"]\nrole = \"{ROLE}\"\n\
             openid_configuration_url = \"{}\"\n{proof_file}client_credential = {{ kind = \"azure-cli\" }}",
            entra::TENANT,
            entra::APP_ID_URI,
            self.idp.discovery_url(),
        );
        self.served.write_config();
    }

    /// A stand-in `az` that logs its arguments and prints the token in `az-token.json`, as
    /// `az account get-access-token -o json` prints one.
    fn install_az(&self) {
        let dir = self.served.site.dir.path();
        let az = dir.join("bin").join("az");
        let (log, token) = (self.az_log(), dir.join("az-token.json"));
        let script = format!("#!/bin/sh\necho \"$@\" >> '{}'\ncat '{}'\n", log.display(), token.display());
        std::fs::write(&az, script).unwrap();
        std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Every run of the stand-in `az`, one line of arguments each.
    fn az_log(&self) -> PathBuf {
        self.served.site.dir.path().join("az-calls.log")
    }

    fn az_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.az_log()).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// From now on the stand-in `az` hands out a token of the operator with `roles`; the token.
    fn hand_out(&self, roles: &[&str]) -> String {
        let mut claims = entra::v1_claims();
        claims["appid"] = json!("04b07795-8ddb-461a-bbee-02f9e1bf7b46"); // the Azure CLI's app id
        claims["oid"] = json!(OPERATOR_OID);
        claims["roles"] = json!(roles);
        let token = self.signer.token(&claims);
        let answer = json!({
            "accessToken": token, "expiresOn": "2099-01-01 00:00:00.000000", "expires_on": claims["exp"],
            "subscription": "00000000-0000-0000-0000-000000000000", "tenant": entra::TENANT, "tokenType": "Bearer"
        });
        std::fs::write(self.served.site.dir.path().join("az-token.json"), answer.to_string()).unwrap();
        token
    }
}

/// Writes `text` to `path`, readable by its owner only, as the service writes its key.
fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The proof key in `path`, and the file's mode.
fn proof_key(path: &Path) -> (String, u32) {
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    (std::fs::read_to_string(path).unwrap(), mode)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_gets_an_entra_token_from_its_credential_and_rotates_through_the_service() {
    let mut entra = EntraSite::new().await;
    let (old, _) = entra.served.site.user("alpha-password", "alpha").await;
    // A file left by an earlier run, readable by all: replaced, not reused.
    let proof_file = entra.proof_file.clone().unwrap();
    std::fs::write(&proof_file, "stale\n").unwrap();
    let mut serve = entra.served.serve();
    entra.served.listening(&mut serve).await;
    serve.wait_healthy(entra.served.webhook.port()).await;
    let (key, mode) = proof_key(&proof_file);
    assert_eq!(mode, 0o600, "readable by the service's user only");
    assert!(key.len() == 65 && key.ends_with('\n') && key.trim_end().bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    let lease_versions = entra.served.site.store.list_versions("kv-rotator-engine-lease").await.unwrap().len();

    let (ok, stdout, stderr) = entra.served.rotate(&["alpha-password", "--reason", "INC-11 through entra"]);
    assert!(ok, "{stdout}\n{stderr}\n{}", serve.output());
    assert!(stderr.contains(&format!("rotating through the service at http://{}", entra.served.admin)), "{stderr}");
    assert!(line_for(&stdout, "alpha-password").contains(&format!("rotated {old} -> ")), "{stdout}");
    let latest = entra.served.site.store.get_latest("alpha-password").await.unwrap();
    assert!(entra.served.site.logs_in("alpha", &latest.value).await);
    // The credential ran `az` once, for the admin API's scope.
    let calls = entra.az_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0].contains("account get-access-token") && calls[0].contains("--scope api://kv-rotator-webhook/.default")
    );
    // The service's engine rotated, for the operator the token names.
    assert_eq!(
        entra.served.site.store.list_versions("kv-rotator-engine-lease").await.unwrap().len(),
        lease_versions,
        "rotate claimed no engine lease"
    );
    let log = serve.output();
    let audit = log.lines().find(|l| l.contains("rotation audit record") && l.contains("alpha-password"));
    let audit = audit.unwrap_or_else(|| panic!("no audit record in the service's log:\n{log}"));
    assert!(audit.contains(OPERATOR_OID) && audit.contains("via admin API job "), "{audit}");
    assert!(log.contains("INC-11 through entra"), "{log}");

    // A token without the role: 403, the role named, nothing rotated.
    let token = entra.hand_out(&[kv_rotator_webhook::auth::DEFAULT_ROLE]);
    let versions = entra.served.site.store.list_versions("alpha-password").await.unwrap().len();
    let (ok, stdout, stderr) = entra.served.rotate(&["alpha-password", "--force"]);
    assert!(!ok, "{stdout}\n{stderr}");
    assert!(stderr.contains("HTTP 403") && stderr.contains(&format!("lacks the app role {ROLE} (admin.auth.role)")));
    assert_eq!(entra.served.site.store.list_versions("alpha-password").await.unwrap().len(), versions);
    let log = serve.output();
    assert!(!log.contains(&token) && !stdout.contains(&token) && !stderr.contains(&token), "the token is never shown");
    assert!(!log.contains(key.trim_end()), "nor the proof key");
    // A credential that gives no token: named, before any job is posted.
    std::fs::write(entra.served.site.dir.path().join("az-token.json"), "ERROR: Please run 'az login'").unwrap();
    let (ok, _, stderr) = entra.served.rotate(&["alpha-password", "--force"]);
    assert!(!ok);
    let expected = "admin.auth.client_credential: no Entra ID token for scope api://kv-rotator-webhook/.default";
    assert!(stderr.contains(expected), "{stderr}");
    assert_eq!(entra.served.site.store.list_versions("alpha-password").await.unwrap().len(), versions);

    // A fresh key at each start.
    let log = serve.terminate();
    assert!(!log.contains(key.trim_end()));
    let mut serve = entra.served.serve();
    serve.wait_healthy(entra.served.webhook.port()).await;
    let (again, mode) = proof_key(&proof_file);
    assert_eq!(mode, 0o600);
    assert_ne!(again, key);
    serve.terminate();
    entra.served.site.vault.shutdown().await;
}

/// A program that took the admin port while the service was down: `rotate` reads the
/// proof key, asks for the proof, gets a wrong one, and never runs `az` nor sends a token.
/// The same squatter before any proof: without `proof_file`, or with one `rotate` cannot
/// read, `rotate` stops at once, naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatter_on_the_admin_port_gets_no_entra_token() {
    let mut entra = EntraSite::new().await;
    entra.served.site.user("alpha-password", "alpha").await;
    let job = json!({"id": "00000000-0000-0000-0000-000000000001", "done": true, "secrets": []});
    let squatter = Squatter::start(job).await;
    entra.served.admin = squatter.addr;
    // The key of the service that ran before (the squatter cannot read it).
    let proof_file = entra.proof_file.clone().unwrap();
    write_private(&proof_file, &format!("{}\n", "ab".repeat(32)));
    entra.write_config();

    let (ok, stdout, stderr) = entra.served.rotate(&["alpha-password", "--reason", "INC-12"]);
    assert!(!ok, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("did not prove that it knows the proof key in admin.auth.proof_file")
            && stderr.contains("a wrong proof")
            && stderr.contains("no token was sent"),
        "{stderr}"
    );
    let requests = squatter.seen();
    assert_eq!(requests.len(), 1, "only the proof was asked for: {requests:?}");
    assert!(requests[0].starts_with("GET /api/service-proof/") && requests[0].ends_with("None"), "{requests:?}");
    assert!(entra.az_calls().is_empty(), "no token was asked for: {:?}", entra.az_calls());

    // A key another user planted (as it would be in /tmp), or one others may read: refused.
    let planted = proof_file.with_file_name("planted");
    write_private(&planted, &format!("{}\n", "cd".repeat(32)));
    std::os::unix::fs::chown(&planted, Some(4242), None).unwrap();
    let exposed = proof_file.with_file_name("exposed");
    std::fs::write(&exposed, format!("{}\n", "ef".repeat(32))).unwrap();
    std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o644)).unwrap();
    let not_a_key = proof_file.with_file_name("not-a-key");
    write_private(&not_a_key, "-----BEGIN CERTIFICATE-----\n");
    let link = proof_file.with_file_name("link");
    std::os::unix::fs::symlink(&proof_file, &link).unwrap();
    // A proof file rotate cannot read (absent), may not follow or trust: named, with what to do.
    for (path, why) in [
        (proof_file.with_file_name("absent"), "no such file"),
        (proof_file.parent().unwrap().to_owned(), "is a directory"),
        (link, "is a symbolic link"),
        (planted, "owned by uid 4242"),
        (exposed, "other users may read or write it (mode 644)"),
        (not_a_key, "not a proof key kv-rotator wrote"),
    ] {
        entra.proof_file = Some(path.clone());
        entra.write_config();
        let (ok, _, stderr) = entra.served.rotate(&["alpha-password"]);
        assert!(!ok);
        assert!(
            stderr.contains(&format!("admin.auth.proof_file {}", path.display())) && stderr.contains(why),
            "{stderr}"
        );
        if why == "no such file" {
            assert!(stderr.contains("run rotate as that user") && stderr.contains("or as root"), "{stderr}");
        }
    }
    // No proof_file at all: rotate does not go through the API, and says what to set.
    entra.proof_file = None;
    entra.write_config();
    let (ok, _, stderr) = entra.served.rotate(&["alpha-password"]);
    assert!(!ok);
    assert!(stderr.contains("only when admin.auth.proof_file is set") && stderr.contains("--in-process"), "{stderr}");

    assert_eq!(squatter.seen().len(), 1, "nothing more reached the squatter");
    assert!(entra.az_calls().is_empty());
    assert_eq!(entra.served.site.store.list_versions("alpha-password").await.unwrap().len(), 1, "nothing rotated");
    entra.served.site.vault.shutdown().await;
}

/// The service killed while `rotate` follows its job, and a program binding the port at
/// once: `rotate` reads the proof file again for its new connection and has the squatter
/// prove it knows the key; it cannot, so it gets no Entra ID token, and its "rotated"
/// answer is not believed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatter_taking_the_port_mid_job_gets_no_entra_token() {
    let mut entra = EntraSite::new().await;
    let _stall = entra.served.stalled_secret("stalled-password").await;
    let mut serve = entra.served.serve();
    entra.served.listening(&mut serve).await;
    serve.wait_healthy(entra.served.webhook.port()).await;

    let killed = entra.served.killed_mid_job(serve, "stalled-password").await;
    killed.assert_the_squatter_got_nothing();
    assert!(killed.output.contains("the proof key in admin.auth.proof_file"), "{}", killed.output);
    entra.served.site.vault.shutdown().await;
}
