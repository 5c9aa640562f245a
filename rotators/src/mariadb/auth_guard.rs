//! The authentication guard of plaintext MariaDB logins (`tls = "disable"`, loopback
//! hosts only).
//!
//! mysql_async answers whatever authentication plugin the server names: under
//! `caching_sha2_password` "full authentication" it RSA-encrypts the plain password with
//! a key the server sends (or sends it in clear over a socket), and under `ed25519` or
//! `parsec` it sends values derived from the password that are not the
//! `mysql_native_password` challenge response. It has no switch to refuse them, so the
//! rotator never lets it talk to the server directly: [`connect`] opens the TCP
//! connection itself and relays it to mysql_async over a Unix socket in a fresh
//! owner-only directory. The relay reads the server's side of the authentication
//! exchange first and cuts both connections, recording why, when
//!
//! - the greeting names any plugin but `mysql_native_password` (or none), parsed exactly
//!   as mysql_common parses it;
//! - the server asks to switch to any other plugin, asks a second time, or sends
//!   anything but OK or an error after the client's answer (`caching_sha2_password`'s
//!   "more data" request included).
//!
//! mysql_async therefore never sees a packet that would make it compute anything but the
//! native challenge response: no password-derived byte of any other plugin is produced,
//! let alone sent. After OK (or an error), the relay copies bytes both ways unread.
//!
//! Under `verify-full` there is no relay (the TLS session runs inside the protocol): the
//! certificate proves the server is the target, and the target's own choice of plugin is
//! trusted as far as the target itself is.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};

/// The only plugin the guard lets through.
const NATIVE: &[u8] = b"mysql_native_password";
const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x0008_0000;

/// Why the guard cut the connection, once it has.
#[derive(Clone, Default)]
pub(super) struct Verdict(Arc<Mutex<Option<String>>>);

impl Verdict {
    pub(super) fn refusal(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn refuse(&self, why: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }
}

/// A relay to `server`: the Unix socket mysql_async must connect to (once, within
/// `accept_within`), and the verdict to read if the login fails.
pub(super) struct Relay {
    pub(super) socket: PathBuf,
    pub(super) verdict: Verdict,
}

/// Starts a guarded relay to the already connected `server`.
pub(super) fn connect(server: TcpStream, accept_within: Duration) -> io::Result<Relay> {
    let dir = private_dir()?;
    let socket = dir.join("mariadb.sock");
    let listener = match UnixListener::bind(&socket) {
        Ok(listener) => listener,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let verdict = Verdict::default();
    let refusals = verdict.clone();
    tokio::spawn(async move {
        let accepted = tokio::time::timeout(accept_within, listener.accept()).await;
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
        if let Ok(Ok((client, _))) = accepted {
            let _ = relay(client, server, &refusals).await;
        }
    });
    Ok(Relay { socket, verdict })
}

/// A new directory only this user can enter (created, never reused: `create` fails if
/// the name exists, so nothing planted there is followed).
fn private_dir() -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("kv-rotator-mariadb-{:032x}", rand::random::<u128>()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

async fn relay<C, S>(mut client: C, mut server: S, verdict: &Verdict) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let greeting = read_packet(&mut server).await?;
    if greeting.first() != Some(&0xff) {
        if let Err(why) = check_greeting(&greeting[4..]) {
            verdict.refuse(why);
            return Ok(());
        }
        client.write_all(&greeting).await?;
        let mut switched = false;
        loop {
            // The client's answer: the handshake response, or the answer to a switch.
            let answer = read_packet(&mut client).await?;
            server.write_all(&answer).await?;
            let reply = read_packet(&mut server).await?;
            match check_reply(&reply[4..], switched) {
                Ok(Reply::Done) => {
                    client.write_all(&reply).await?;
                    break;
                }
                Ok(Reply::NativeSwitch) => {
                    switched = true;
                    client.write_all(&reply).await?;
                }
                Err(why) => {
                    verdict.refuse(why);
                    return Ok(());
                }
            }
        }
    } else {
        client.write_all(&greeting).await?;
    }
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

/// One packet, header included (authentication packets are never split).
async fn read_packet<R: AsyncRead + Unpin>(from: &mut R) -> io::Result<Vec<u8>> {
    let mut packet = vec![0u8; 4];
    from.read_exact(&mut packet).await?;
    let len = usize::from(packet[0]) | usize::from(packet[1]) << 8 | usize::from(packet[2]) << 16;
    if len == 0xff_ffff {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "a split packet during authentication"));
    }
    packet.resize(4 + len, 0);
    from.read_exact(&mut packet[4..]).await?;
    Ok(packet)
}

/// The plugin a greeting names, parsed as mysql_common's `HandshakePacket` does; `None`
/// for a greeting that names none or does not parse.
fn greeting_plugin(body: &[u8]) -> Option<&[u8]> {
    let rest = body.strip_prefix(&[10])?;
    let version_end = rest.iter().position(|&b| b == 0)?;
    let rest = rest.get(version_end + 1..)?;
    // connection id 4, scramble 8, filler 1, capabilities 2, collation 1, status 2,
    // capabilities 2, auth data length 1, reserved 10: 31 bytes.
    let fixed = rest.get(..31)?;
    let caps = u32::from(u16::from_le_bytes([fixed[13], fixed[14]]))
        | u32::from(u16::from_le_bytes([fixed[18], fixed[19]])) << 16;
    let mut rest = &rest[31..];
    if caps & CLIENT_SECURE_CONNECTION != 0 {
        let len = 13.max(i16::from(fixed[20] as i8) - 8) as usize;
        rest = rest.get(len..)?;
    }
    if caps & CLIENT_PLUGIN_AUTH == 0 {
        return None;
    }
    Some(rest.strip_suffix(&[0]).unwrap_or(rest))
}

fn check_greeting(body: &[u8]) -> Result<(), String> {
    match greeting_plugin(body) {
        Some(NATIVE) => Ok(()),
        Some(other) => Err(refused_plugin(other)),
        None => Err("the server's greeting names no authentication plugin (or does not parse); kv-rotator logs in \
                     only by mysql_native_password, and sent nothing derived from a password"
            .to_owned()),
    }
}

enum Reply {
    /// OK or an error: authentication is over.
    Done,
    /// A switch to `mysql_native_password` with a new challenge.
    NativeSwitch,
}

fn check_reply(body: &[u8], switched: bool) -> Result<Reply, String> {
    match body.first() {
        Some(0x00 | 0xff) => Ok(Reply::Done),
        Some(0xfe) if body.len() > 1 => {
            let name_end = body.iter().skip(1).position(|&b| b == 0).map_or(body.len(), |at| at + 1);
            let name = &body[1..name_end];
            if name == NATIVE && !switched {
                Ok(Reply::NativeSwitch)
            } else {
                Err(refused_plugin(name))
            }
        }
        Some(0xfe) => Err(refused_plugin(b"mysql_old_password")),
        Some(0x01) => Err("the server asked for more authentication data (caching_sha2_password's full \
                           authentication, which would have the client send the password); kv-rotator logs in only by \
                           mysql_native_password, and sent nothing more"
            .to_owned()),
        _ => Err("the server answered the login with an unexpected packet; kv-rotator logs in only by \
                  mysql_native_password, and sent nothing more"
            .to_owned()),
    }
}

fn refused_plugin(name: &[u8]) -> String {
    format!(
        "the server asked for authentication plugin {:?}; kv-rotator logs in only by mysql_native_password (another \
         plugin could have the client send the password, or a value derived from it that is not the native \
         challenge response) and cut the connection before sending anything derived from a password",
        String::from_utf8_lossy(name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeting(plugin: &[u8], auth_len: u8) -> Vec<u8> {
        let mut body = vec![10u8];
        body.extend_from_slice(b"10.11.0-fake\0");
        body.extend_from_slice(&7u32.to_le_bytes());
        body.extend_from_slice(b"abcdefgh\0");
        let caps: u32 = 0x1 | 0x200 | 0x8000 | 0x8_0000;
        body.extend_from_slice(&(caps as u16).to_le_bytes());
        body.push(33);
        body.extend_from_slice(&2u16.to_le_bytes());
        body.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
        body.push(auth_len);
        body.extend_from_slice(&[0u8; 10]);
        body.extend_from_slice(b"ijklmnopqrst\0");
        body.extend_from_slice(plugin);
        body
    }

    #[test]
    fn only_a_native_greeting_passes() {
        assert!(check_greeting(&greeting(b"mysql_native_password\0", 21)).is_ok());
        assert!(check_greeting(&greeting(b"mysql_native_password", 21)).is_ok(), "no NUL, as mysql_common allows");
        for other in [&b"caching_sha2_password\0"[..], b"client_ed25519\0", b"parsec\0", b"mysql_native_password\0\0"] {
            let e = check_greeting(&greeting(other, 21)).unwrap_err();
            assert!(e.contains("asked for authentication plugin"), "{e}");
        }
        // The scramble length is signed, as in mysql_common: 0x80 is -128, so 13 bytes.
        assert!(check_greeting(&greeting(b"mysql_native_password\0", 0x80)).is_ok());
        assert!(check_greeting(&[10, b'x']).is_err());
        assert!(check_greeting(&[]).is_err());
    }

    #[test]
    fn only_ok_error_and_one_native_switch_pass() {
        assert!(matches!(check_reply(&[0, 0, 0], false), Ok(Reply::Done)));
        assert!(matches!(check_reply(&[0xff, 0x15, 0x04], true), Ok(Reply::Done)));
        let native = [&[0xfe][..], b"mysql_native_password\0", b"01234567890123456789\0"].concat();
        assert!(matches!(check_reply(&native, false), Ok(Reply::NativeSwitch)));
        assert!(check_reply(&native, true).is_err(), "a second switch");
        for refused in [
            [&[0xfe][..], b"mysql_clear_password\0"].concat(),
            [&[0xfe][..], b"dialog\0\x04Password: "].concat(),
            [&[0xfe][..], b"caching_sha2_password\0abc\0"].concat(),
            vec![0xfe],
            vec![0x01, 0x04],
            vec![0x02],
        ] {
            assert!(check_reply(&refused, false).is_err(), "{refused:?}");
        }
    }
}
