//! Optional persistence of the dev vault's state to one JSON file, for `kv-rotator dev`.
//!
//! The file holds every secret value in clear text: it is created with mode 0600, its
//! mode is tightened if found looser, and opening it logs a warning saying so. Each
//! change is written to a sibling temporary file (also 0600) and renamed over the state
//! file, so a crash leaves either the old or the new state, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::errors::DevVaultError;
use super::state::Vault;

/// The state file of a persistent dev vault.
#[derive(Debug)]
pub(crate) struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// Opens (or prepares to create) the state file and loads what it holds.
    pub fn open(path: &Path, host: String) -> Result<(Self, Vault), DevVaultError> {
        let fail = |detail: String| DevVaultError::Persistence { path: path.to_owned(), detail };
        tracing::warn!(
            path = %path.display(),
            "dev vault: persisting state to a file; secret values are stored UNENCRYPTED in it (mode 0600). \
             Use it for development data only."
        );
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| fail(format!("cannot create its directory: {e}")))?;
        }
        let vault = match std::fs::read(path) {
            Ok(bytes) => {
                restrict_mode(path).map_err(|e| fail(format!("cannot set mode 0600: {e}")))?;
                Vault::from_state_json(host, &bytes).map_err(|e| fail(e.to_string()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vault::new(host),
            Err(e) => return Err(fail(format!("cannot read: {e}"))),
        };
        let file = Self { path: path.to_owned() };
        file.save(&vault)?;
        Ok((file, vault))
    }

    /// Writes the whole state, atomically.
    pub fn save(&self, vault: &Vault) -> Result<(), DevVaultError> {
        let fail = |e: std::io::Error| DevVaultError::Persistence { path: self.path.clone(), detail: e.to_string() };
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_owned();
        tmp_name.push(".tmp");
        let tmp = self.path.with_file_name(tmp_name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(fail)?;
        // `mode` applies only on creation: a leftover temporary file keeps its own mode.
        restrict_mode(&tmp).map_err(fail)?;
        file.write_all(&vault.to_state_json()).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, &self.path).map_err(fail)
    }
}

#[cfg(unix)]
fn restrict_mode(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode != 0o600 {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "dev vault: state file mode tightened to 0600");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict_mode(_path: &Path) -> std::io::Result<()> {
    Ok(())
}
