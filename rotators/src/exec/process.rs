//! Running a plugin program as kv-rotator runs every program it is handed: the command
//! file checked before every run ([`check_command_file`]: nobody but root and the worker's
//! user can change it), a cleared environment, working directory `/` and a process group
//! of its own ([`confined_command`]) that is killed whatever happens ([`ProcessGroup`]), and
//! its pipes read within caps ([`read_capped`]), stderr scrubbed before anyone sees it.

use std::process::Stdio;
use std::time::Duration;

use secrecy::zeroize::Zeroizing;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::scrub::Scrubber;

/// Which file the command was when it was described: device, inode, size, change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandFile(u64, u64, u64, i64, i64);

/// The plugin program may be changed by no one but root and the worker's own user: it
/// runs with the worker's identity and sees every password of its profile. So the file
/// must be a regular file, and it and every directory above it up to `/` — along the path
/// as configured and along the path its symlinks resolve to — owned by root or the
/// worker's user and writable by neither group nor others. A sticky directory (`/tmp`)
/// does not pass: others may add files there, and an interpreter such as Python imports
/// modules from its script's directory. (With no one else able to write anywhere on the
/// path, the file cannot be swapped between this check and the run.)
///
/// Checked before every run; returns which file it is.
pub fn check_command_file(path: &std::path::Path) -> Result<CommandFile, String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read the command file: {e}"))?;
    if !meta.is_file() {
        return Err("the command is not a regular file".to_owned());
    }
    let resolved = std::fs::canonicalize(path).map_err(|e| format!("cannot resolve the command's path: {e}"))?;
    check_owner_and_mode(&format!("the command file {}", resolved.display()), &meta)?;
    for file in [path, resolved.as_path()] {
        for dir in file.ancestors().skip(1).filter(|d| !d.as_os_str().is_empty()) {
            let dir_meta =
                std::fs::metadata(dir).map_err(|e| format!("cannot read directory {}: {e}", dir.display()))?;
            check_owner_and_mode(&format!("directory {}", dir.display()), &dir_meta)?;
        }
    }
    Ok(CommandFile(meta.dev(), meta.ino(), meta.len(), meta.ctime(), meta.ctime_nsec()))
}

fn check_owner_and_mode(what: &str, meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "{what} is owned by uid {}, neither root nor the worker's user (uid {me}): its owner could change what \
             runs with the worker's identity and passwords",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{what} is writable by its group or by others (mode {:o}): they could change what runs with the \
             worker's identity and passwords (chmod go-w)",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// `program` with `args`, set up as kv-rotator runs every program it is handed: an
/// environment of `env` only, working directory `/`, its own process group (for
/// [`ProcessGroup`]), all three pipes, killed if dropped.
pub fn confined_command<K, V>(
    program: &std::path::Path,
    args: &[String],
    env: impl IntoIterator<Item = (K, V)>,
) -> tokio::process::Command
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env)
        .current_dir("/")
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// A child's process group (the child started with `process_group(0)`; its id is the
/// leader's pid), killed with `SIGKILL` once: by [`ProcessGroup::kill`] right after the
/// leader exits (the id is not reused while any member lives), or when dropped (a
/// cancelled call: the leader is not even reaped yet). Whatever the child left behind in
/// the group goes too.
#[derive(Debug)]
pub struct ProcessGroup(Option<rustix::process::Pid>);

impl ProcessGroup {
    /// The group `child` leads.
    pub fn of(child: &tokio::process::Child) -> Self {
        Self(child.id().and_then(|pid| rustix::process::Pid::from_raw(pid as i32)))
    }

    /// Kills every member now (once).
    pub fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            // ESRCH: every member is gone already.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What [`read_capped`] read from a pipe.
#[derive(Debug, Default)]
pub struct Captured {
    /// The bytes kept (at most the cap), wiped when dropped.
    pub bytes: Zeroizing<Vec<u8>>,
    /// Whether the pipe had more than the cap.
    pub overflowed: bool,
}

/// Reads `pipe` to its end keeping at most `cap` bytes. With `drain`, what is past the
/// cap is read and dropped (the plugin never blocks on a full pipe); without, reading
/// stops at the first byte past it.
pub async fn read_capped(pipe: Option<impl AsyncRead + Unpin>, cap: usize, drain: bool) -> Captured {
    let mut out = Captured::default();
    let Some(mut pipe) = pipe else { return out };
    let mut chunk = Zeroizing::new([0u8; 8192]);
    loop {
        match pipe.read(&mut chunk[..]).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                let room = cap.saturating_sub(out.bytes.len());
                if n > room {
                    out.overflowed = true;
                    if !drain {
                        return out;
                    }
                }
                let keep = n.min(room);
                if keep > 0 {
                    // Reserved once (up to 1 MiB) so growing rarely leaves a copy behind.
                    if out.bytes.capacity() == 0 {
                        out.bytes.reserve_exact(cap.min(1 << 20));
                    }
                    out.bytes.extend_from_slice(&chunk[..keep]);
                }
            }
        }
    }
}

/// The scrubbed stderr `task` read, cut at `cap` (a password cut in half by the capture
/// included); empty if it does not end within 5 s.
pub(super) async fn collect_stderr(
    mut task: tokio::task::JoinHandle<Captured>,
    scrub: &Scrubber,
    cap: usize,
) -> String {
    let captured = match tokio::time::timeout(Duration::from_secs(5), &mut task).await {
        Ok(Ok(captured)) => captured,
        _ => {
            task.abort();
            return String::new();
        }
    };
    let raw = String::from_utf8_lossy(&captured.bytes).into_owned();
    let raw_len = raw.len();
    let mut text = scrub.clean(raw);
    if text.len() > cap || captured.overflowed {
        // A password the capture cut in half is not scrubbed; it begins past `cap` in the
        // raw text, and scrubbing shifts it left by what the redactions saved: cut that
        // much earlier, so none of it is kept.
        let shift = raw_len.saturating_sub(text.len());
        let mut cut = cap.saturating_sub(shift).min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(" […truncated]");
    }
    text.trim_end().to_owned()
}
