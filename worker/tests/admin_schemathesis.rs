//! Schemathesis (PyPI) against the admin API of a running `kv-rotator dev`, from the
//! OpenAPI document the service serves: every check it has (no 5xx, status codes,
//! content types, headers and bodies as documented, schema-valid requests accepted and
//! invalid ones refused, authentication not ignored), over its coverage, fuzzing and
//! stateful phases (a job's id from `POST /api/rotations` into `GET /api/rotations/{id}`).
//!
//! `scripts/test.sh` installs schemathesis (pinned, `scripts/schemathesis/requirements.txt`)
//! into a virtual environment and names it in `KVR_SCHEMATHESIS`; without it this test
//! fails and says how to get it. The run is seeded, so a failure reproduces.

#[allow(dead_code)] // each suite uses some of the shared helpers
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::proc::{dev_endpoints, Proc};

const BIN: &str = env!("CARGO_BIN_EXE_kv-rotator");
const TOKEN: &str = "schemathesis-admin-token-0123456789abcdef";
/// Fixed, so that what one run finds the next one finds too.
const SEED: &str = "20261130";

fn schemathesis() -> PathBuf {
    let path = std::env::var_os("KVR_SCHEMATHESIS").map(PathBuf::from).unwrap_or_else(|| "schemathesis".into());
    let found = Command::new(&path).arg("--version").output().is_ok_and(|out| out.status.success());
    assert!(
        found,
        "schemathesis not found ({}): run scripts/test.sh, or `pip install -r scripts/schemathesis/requirements.txt` \
         and set KVR_SCHEMATHESIS to its `schemathesis`",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_departure_from_the_openapi_document() {
    let schemathesis = schemathesis();
    let dir = tempfile::tempdir().unwrap();
    let (config, state) = (dir.path().join("kv-rotator.toml"), dir.path().join("state"));
    std::fs::write(
        &config,
        "[admin]\nauth = { mode = \"static-token\", token = { env = \"ADMIN_TOKEN\" } }\n[sweeper]\nenabled = false\n",
    )
    .unwrap();
    let mut dev = Proc::spawn(
        Command::new(BIN)
            .args(["dev", "--vault-addr", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .env("ADMIN_TOKEN", TOKEN),
    );
    let endpoints = dev_endpoints(&mut dev, &state).await;
    let admin = endpoints["metrics_url"].as_str().unwrap().trim_end_matches("/metrics").to_owned();

    // The document as served, not the file in the tree.
    let document = dir.path().join("openapi.json");
    let served = reqwest::Client::new().get(format!("{admin}/api/openapi.json")).bearer_auth(TOKEN).send().await;
    let served = served.unwrap().bytes().await.unwrap();
    std::fs::write(&document, &served).unwrap();
    let operations: usize = serde_json::from_slice::<serde_json::Value>(&served).unwrap()["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    let settings = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/schemathesis/schemathesis.toml");

    let workdir = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(schemathesis)
            // Its caches (.schemathesis/) go there, not into the checkout.
            .current_dir(workdir)
            .arg("--config-file")
            .arg(settings)
            .args(["--no-color", "run"])
            .arg(&document)
            .args(["--url", &admin, "--header", &format!("Authorization: Bearer {TOKEN}")])
            .args(["--checks", "all", "--seed", SEED, "--max-examples", "150", "--rate-limit", "auto"])
            .args(["--generation-database", "none", "--request-timeout", "30"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let tail: String =
        report.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    eprintln!("schemathesis:\n{tail}");
    assert!(out.status.success(), "schemathesis found failures:\n{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains(&format!("Tested: {operations}")), "all {operations} operations were tested:\n{report}");
    assert!(!report.contains(TOKEN), "the token is never shown");
    let log = dev.terminate();
    assert!(!log.contains("status=5") && !log.contains("panicked"), "no server error in the service's log:\n{log}");
}
