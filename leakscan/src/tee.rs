//! The tee of a process's own stdout and stderr into the scan directory.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
enum Stream {
    Out,
    Err,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Out => "stdout",
            Stream::Err => "stderr",
        }
    }

    fn original(self) -> io::Result<OwnedFd> {
        match self {
            Stream::Out => io::stdout().as_fd().try_clone_to_owned(),
            Stream::Err => io::stderr().as_fd().try_clone_to_owned(),
        }
    }

    fn replace_with(self, fd: impl AsFd) -> io::Result<()> {
        match self {
            Stream::Out => rustix::stdio::dup2_stdout(fd),
            Stream::Err => rustix::stdio::dup2_stderr(fd),
        }
        .map_err(io::Error::from)
    }
}

/// Restores stdout and stderr when dropped, after their last bytes are copied.
#[derive(Debug)]
pub struct StdioTee {
    streams: Vec<(Stream, OwnedFd, Receiver<()>)>,
}

/// Makes stdout and stderr pipes whose bytes a thread each copies to where they went
/// before and to `<scan dir>/stdout.<pid>` and `stderr.<pid>`; `None` without a scan
/// directory. Keep the guard until the process is about to exit: dropping it restores
/// both and waits (up to 2 s each) for the copies to drain. Bytes still in a pipe when
/// the process exits without dropping it (`process::exit`, SIGKILL) are lost.
pub fn tee_stdio() -> Option<StdioTee> {
    super::sink().dir.as_ref()?;
    let mut tee = StdioTee { streams: Vec::new() };
    for stream in [Stream::Out, Stream::Err] {
        if let Ok(teed) = tee_one(stream) {
            tee.streams.push(teed);
        }
    }
    Some(tee)
}

fn tee_one(stream: Stream) -> io::Result<(Stream, OwnedFd, Receiver<()>)> {
    let original = stream.original()?;
    let mut copy_to = File::from(original.try_clone()?);
    let (mut reader, writer) = io::pipe()?;
    let (done, drained) = sync_channel(1);
    std::thread::Builder::new().name(format!("leak-tee-{}", stream.name())).spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let _ = copy_to.write_all(&buf[..n]);
                    super::capture_bytes(stream.name(), &buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = done.send(());
    })?;
    // Only now, with the copier running: from here on the stream writes into the pipe.
    stream.replace_with(&writer)?;
    Ok((stream, original, drained))
}

impl Drop for StdioTee {
    fn drop(&mut self) {
        let _ = io::stdout().flush();
        let _ = io::stderr().flush();
        for (stream, original, drained) in self.streams.drain(..) {
            // Closes the pipe's last write end: the copier reads to its end and stops.
            if stream.replace_with(&original).is_ok() {
                let _ = drained.recv_timeout(Duration::from_secs(2));
            }
        }
    }
}
