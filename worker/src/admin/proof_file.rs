//! `kv-rotator rotate`'s reading of the proof key the service wrote to
//! `admin.auth.proof_file` ([`super::auth::write_proof_key`]).
//!
//! The file is opened once — never through a symbolic link, without waiting on a FIFO —
//! and everything is checked on that open descriptor (`fstat`), not on the path again:
//! a regular file, mode 600 or narrower, owned by a user `rotate` trusts. Only then are at
//! most [`MAX_PROOF_FILE_BYTES`] read from it. Another user who could swap the path in
//! between (a planted key in `/tmp`, a link to a file of theirs) gets nothing accepted.

use std::io::Read;
use std::path::Path;

use anyhow::bail;
use secrecy::zeroize::Zeroizing;
use secrecy::SecretString;

use super::auth::PROOF_KEY_HEX;

/// The most read from the file: the key's hex digits and a line ending (`\r\n`).
pub const MAX_PROOF_FILE_BYTES: usize = PROOF_KEY_HEX + 2;

/// The proof key in `path`. `consequence` ends every error: what the failure means for the
/// operator's rotation ("Nothing was rotated", or that a job goes on in the service).
pub fn read_proof_key(path: &Path, consequence: &str) -> anyhow::Result<SecretString> {
    let shown = path.display();
    let mut file = open(path).map_err(|e| {
        let why = match e.kind() {
            _ if is_symlink(path) => {
                return anyhow::anyhow!(
                    "admin.auth.proof_file {shown}: is a symbolic link, and rotate follows none (another user \
                     could point it at a key of theirs); set proof_file to the file the service writes. {consequence}"
                )
            }
            std::io::ErrorKind::NotFound => "no such file: the service writes it at startup".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => e.to_string(),
        };
        anyhow::anyhow!(
            "admin.auth.proof_file {shown}: cannot read it ({why}). It is readable by the service's user only: run \
             rotate as that user (e.g. sudo -u <service user> kv-rotator rotate ...) or as root. {consequence}"
        )
    })?;
    let meta = file.metadata().map_err(|e| anyhow::anyhow!("admin.auth.proof_file {shown}: {e}. {consequence}"))?;
    if meta.is_dir() {
        bail!(
            "admin.auth.proof_file {shown}: is a directory; name the file in it the service writes its proof key to \
             (e.g. /run/kv-rotator/admin-proof). {consequence}"
        );
    }
    if !meta.is_file() {
        bail!(
            "admin.auth.proof_file {shown}: not a regular file (a FIFO, socket or device), so not the key the \
             service writes. {consequence}"
        );
    }
    #[cfg(unix)]
    planted(path, &meta, consequence)?;
    let not_a_key = || {
        anyhow::anyhow!(
            "admin.auth.proof_file {shown}: not a proof key kv-rotator wrote ({PROOF_KEY_HEX} hex digits). \
             {consequence}"
        )
    };
    if meta.len() > MAX_PROOF_FILE_BYTES as u64 {
        return Err(not_a_key());
    }
    let mut bytes = Zeroizing::new([0u8; MAX_PROOF_FILE_BYTES]);
    let mut len = 0;
    while len < bytes.len() {
        match file.read(&mut bytes[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => bail!("admin.auth.proof_file {shown}: cannot read it ({e}). {consequence}"),
        }
    }
    let text = std::str::from_utf8(&bytes[..len]).map_err(|_| not_a_key())?;
    let key = text.trim_end_matches(['\r', '\n']);
    if key.len() != PROOF_KEY_HEX || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_a_key());
    }
    Ok(SecretString::from(key.to_owned()))
}

/// Opens `path` for reading: not through a symbolic link (the last component), without
/// blocking on a FIFO, closed in children.
#[cfg(unix)]
fn open(path: &Path) -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    Ok(std::fs::File::from(rustix::fs::open(path, flags, Mode::empty())?))
}

#[cfg(not(unix))]
fn open(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_symlink())
}

/// Refuses a proof file (`file`, as opened) that the service cannot have written: one
/// that others may read or write (the service writes mode 0600), or one owned by another
/// user than `rotate`'s — or, for `rotate` run as root, than the directory's owner or root.
/// Another user could have planted such a key (in `/tmp`, say) and, once the service is
/// down, answer its proof.
#[cfg(unix)]
fn planted(path: &Path, file: &std::fs::Metadata, consequence: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display();
    if file.mode() & 0o077 != 0 {
        bail!(
            "admin.auth.proof_file {shown}: other users may read or write it (mode {:o}), but the service writes it \
             with mode 600: it is not the service's key, or it has been exposed. {consequence}; restarting the \
             service writes a fresh one",
            file.mode() & 0o777
        );
    }
    let me = rustix::process::geteuid().as_raw();
    let dir_owner = path.parent().and_then(|dir| std::fs::metadata(dir).ok()).map(|dir| dir.uid());
    let trusted = file.uid() == me || (me == 0 && (file.uid() == 0 || Some(file.uid()) == dir_owner));
    if !trusted {
        bail!(
            "admin.auth.proof_file {shown}: owned by uid {}, neither the user rotate runs as (uid {me}) nor, for root, \
             the directory's owner: another user may have planted it. {consequence}. Keep proof_file in a \
             directory only the service's user can write, and run rotate as that user or root",
            file.uid()
        );
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use secrecy::ExposeSecret;

    use super::*;

    fn private(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn only_a_private_regular_file_holding_a_key_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let key = "ab".repeat(32);
        let good = dir.path().join("admin-proof");
        private(&good, &format!("{key}\r\n"));
        assert_eq!(read_proof_key(&good, "Nothing was rotated").unwrap().expose_secret(), key);

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o600)).unwrap();
        let long = dir.path().join("long");
        private(&long, &format!("{key}\n{key}\n"));
        for (path, why) in [
            (&link, "is a symbolic link"),
            (&fifo, "not a regular file"),
            (&dir.path().to_owned(), "is a directory"),
            (&long, "not a proof key kv-rotator wrote"),
        ] {
            let message = read_proof_key(path, "Nothing was rotated").unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("admin.auth.proof_file {}: {why}", path.display()))
                    && message.contains("Nothing was rotated"),
                "{message}"
            );
        }
    }
}
