//! Errors: [`DevVaultError`] for the Rust API, [`ApiError`] for what the REST API answers.
//!
//! [`ApiError`] renders the service's error body,
//! `{"error":{"code","message","innererror":{"code"}}}`. Each constructor names the
//! source of its status, code and message: the recordings of real Key Vault traffic that
//! `keyvault/tests/devvault_conformance.rs` replays (kept outside the repository:
//! docs/testing.md, "Fixtures outside the repository"), a public capture of real
//! traffic, or a best guess.

use axum::http::StatusCode;
use serde::Serialize;

/// Failures of the dev vault's Rust API (starting it, building clients, seeding).
#[derive(Debug, thiserror::Error)]
pub enum DevVaultError {
    /// An option cannot work (for example a vault name that is not a DNS label).
    #[error("invalid dev vault option: {0}")]
    InvalidOptions(String),
    /// Generating the CA or the server certificate failed.
    #[error("generating the dev vault certificates failed: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls rejected the generated certificate or key.
    #[error("configuring TLS failed: {0}")]
    Tls(#[from] rustls::Error),
    /// Binding the listening socket failed.
    #[error("binding {addr} failed: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Building an HTTP client that trusts the dev vault failed.
    #[error("building an HTTP client for the dev vault failed: {0}")]
    Client(#[from] reqwest::Error),
    /// Building an Azure SDK client failed.
    #[error("building an Azure SDK client for the dev vault failed: {0}")]
    Sdk(#[from] azure_core::Error),
    /// [`DevVault::seed`](super::DevVault::seed) refused its input.
    #[error("seed rejected: {0}")]
    Seed(#[from] super::state::SeedError),
    /// The state file of a persistent dev vault cannot be read or written.
    #[error("dev vault state file {path}: {detail}")]
    Persistence {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        detail: String,
    },
}

/// An error answer of the REST API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub inner_code: Option<&'static str>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    innererror: Option<Inner<'a>>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
}

/// The 401 message, verbatim from every recording's first entry.
pub(crate) const UNAUTHORIZED_MESSAGE: &str = "AKV10000: Request is missing a Bearer, PoP, or MTLS_POP token.";

/// The help link the service appends to not-found messages (recordings).
const NOT_FOUND_HELP: &str = "If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182";

/// Message the service uses for out-of-range properties. Seen for more than 15 tags
/// (terraform-provider-azurerm#16780, aztfmod/terraform-azurerm-caf#837); assumed for the
/// other size limits, whose real messages are not public.
const INVALID_PROPERTY: &str = "Property has invalid value\r\n";

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), inner_code: None }
    }

    fn with_inner(mut self, inner: &'static str) -> Self {
        self.inner_code = Some(inner);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        let body = Body {
            error: Detail {
                code: self.code,
                message: &self.message,
                innererror: self.inner_code.map(|code| Inner { code }),
            },
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// 401 before any other check (recordings; the challenge header is added by the caller).
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", UNAUTHORIZED_MESSAGE)
    }

    /// 404 for a missing secret, or a missing version of one. Message verbatim from the
    /// recordings; the `name/version` form from Azurite's Key Vault error factory.
    pub fn secret_not_found(name: &str, version: Option<&str>) -> Self {
        let id = match version {
            Some(v) => format!("{name}/{v}"),
            None => name.to_string(),
        };
        Self::new(
            StatusCode::NOT_FOUND,
            "SecretNotFound",
            format!("A secret with (name/id) {id} was not found in this key vault. {NOT_FOUND_HELP}"),
        )
    }

    /// 404 for a name that is not soft-deleted (recordings, GET /deletedsecrets/{name};
    /// assumed the same for purge and recover).
    pub fn deleted_secret_not_found(name: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "SecretNotFound", format!("Deleted Secret not found: {name}"))
    }

    /// 403 on reading a disabled version (public captures of the service, e.g.
    /// Azure/azure-sdk-for-js#24756 and ansible-collections/azure#1989).
    pub fn secret_disabled() -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", "Operation get is not allowed on a disabled secret.")
            .with_inner("SecretDisabled")
    }

    /// 409 on writing a soft-deleted name (the Azure SDK for .NET's error-response sample).
    pub fn deleted_but_recoverable(name: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the secret can only be recovered or purged."
            ),
        )
        .with_inner("ObjectIsDeletedButRecoverable")
    }

    /// 409 on restoring over a live secret. Best guess: status and code follow the
    /// service's other conflicts; the message is ours.
    pub fn already_exists(name: &str) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", format!("Secret {name} already exists."))
    }

    /// 400 for a name outside `^[0-9a-zA-Z-]{1,127}$` (public captures of the service).
    pub fn invalid_name(name: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadParameter", format!("The request URI contains an invalid name: {name}"))
    }

    /// 400 for an unknown api-version (public captures of the service, e.g.
    /// Azure/azure-sdk-for-python#28595).
    pub fn unknown_api_version(version: &str, latest: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            format!(
                "The specified version ({version}) is not recognized. Consider using the latest supported version ({latest})."
            ),
        )
    }

    /// 400 for a request without api-version. Best guess: the code is the one the
    /// service uses for bad versions; the message is ARM's.
    pub fn missing_api_version() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )
    }

    /// 400 for a property over a size limit (see [`INVALID_PROPERTY`]).
    pub fn invalid_property() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadParameter", INVALID_PROPERTY)
    }

    /// 400 for any other malformed input. Best guess: code `BadParameter`, our message.
    pub fn bad_parameter(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadParameter", message)
    }

    /// 404 for a path the API does not have. Best guess.
    pub fn no_such_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", "The requested URI does not name a Key Vault secrets operation.")
    }

    /// 405 for a known path with a method it does not take. Best guess.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The method is not allowed for the requested URI.",
        )
    }
}
