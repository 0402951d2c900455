//! The client side: a blocking NBD client over any stream, and
//! [`NbdChild`], an export as a child of the blocking driver.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorum_driver::Child;

use crate::wire::{self, cmd, opt, rep, tflag};

/// The default NBD port.
pub const DEFAULT_PORT: u16 = 10809;

/// Where an export is: `nbd://HOST[:PORT][/EXPORT]` or
/// `nbd+unix:///[EXPORT]?socket=PATH` (QEMU's URI forms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NbdAddr {
    /// TCP.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
        /// Export name.
        export: String,
    },
    /// A unix socket.
    Unix {
        /// Socket path.
        path: PathBuf,
        /// Export name.
        export: String,
    },
}

impl NbdAddr {
    /// Whether `s` is meant as an NBD address (it starts with `nbd://` or `nbd+unix://`).
    pub fn is_nbd(s: &str) -> bool {
        s.starts_with("nbd://") || s.starts_with("nbd+unix://")
    }

    /// Parses an NBD URI; the error says what is wrong.
    pub fn parse(s: &str) -> Result<NbdAddr, String> {
        if let Some(rest) = s.strip_prefix("nbd://") {
            let (hostport, export) = rest.split_once('/').unwrap_or((rest, ""));
            if hostport.is_empty() {
                return Err(format!("{s}: no host"));
            }
            let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
                // [v6]:port
                let (h, p) = h
                    .split_once(']')
                    .ok_or_else(|| format!("{s}: unclosed '['"))?;
                (h.to_string(), p.strip_prefix(':').unwrap_or(""))
            } else {
                match hostport.rsplit_once(':') {
                    Some((h, p)) => (h.to_string(), p),
                    None => (hostport.to_string(), ""),
                }
            };
            let port = if port.is_empty() {
                DEFAULT_PORT
            } else {
                port.parse()
                    .map_err(|_| format!("{s}: '{port}' is not a port"))?
            };
            Ok(NbdAddr::Tcp {
                host,
                port,
                export: export.to_string(),
            })
        } else if let Some(rest) = s.strip_prefix("nbd+unix://") {
            let rest = rest
                .strip_prefix('/')
                .ok_or_else(|| format!("{s}: expected nbd+unix:///EXPORT?socket=PATH"))?;
            let (export, query) = rest
                .split_once('?')
                .ok_or_else(|| format!("{s}: no ?socket=PATH"))?;
            let path = query
                .strip_prefix("socket=")
                .filter(|p| !p.is_empty())
                .ok_or_else(|| format!("{s}: no ?socket=PATH"))?;
            Ok(NbdAddr::Unix {
                path: PathBuf::from(path),
                export: export.to_string(),
            })
        } else {
            Err(format!("{s}: not an nbd:// or nbd+unix:// address"))
        }
    }

    fn export(&self) -> &str {
        match self {
            NbdAddr::Tcp { export, .. } | NbdAddr::Unix { export, .. } => export,
        }
    }

    /// Opens a stream to the server, with `timeout` for connecting and for
    /// every read and write.
    fn connect(&self, timeout: Duration) -> io::Result<Box<dyn Stream>> {
        match self {
            NbdAddr::Tcp { host, port, .. } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                for a in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&a, timeout) {
                        Ok(s) => {
                            s.set_nodelay(true)?;
                            s.set_read_timeout(Some(timeout))?;
                            s.set_write_timeout(Some(timeout))?;
                            return Ok(Box::new(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            NbdAddr::Unix { path, .. } => {
                let s = UnixStream::connect(path)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Ok(Box::new(s))
            }
        }
    }
}

impl std::fmt::Display for NbdAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NbdAddr::Tcp { host, port, export } => write!(f, "nbd://{host}:{port}/{export}"),
            NbdAddr::Unix { path, export } => {
                write!(f, "nbd+unix:///{export}?socket={}", path.display())
            }
        }
    }
}

/// A byte stream to a server.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

fn proto(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("NBD: {msg}"))
}

/// A connection in the transmission phase, one request at a time.
pub struct Client<S: Read + Write> {
    stream: S,
    size: u64,
    flags: u16,
    cookie: u64,
}

impl<S: Read + Write> Client<S> {
    /// The fixed newstyle handshake on `stream`: `NBD_OPT_GO` for `export`
    /// (falling back to `NBD_OPT_EXPORT_NAME` if the server does not know GO).
    pub fn handshake(mut stream: S, export: &str) -> io::Result<Client<S>> {
        let mut g = [0u8; 18];
        stream.read_exact(&mut g)?;
        let hflags = wire::decode_greeting(&g).ok_or_else(|| proto("not a newstyle server"))?;
        if hflags & wire::FLAG_FIXED_NEWSTYLE == 0 {
            return Err(proto("server does not speak fixed newstyle"));
        }
        let no_zeroes = hflags & wire::FLAG_NO_ZEROES != 0;
        let mut cflags = wire::FLAG_C_FIXED_NEWSTYLE;
        if no_zeroes {
            cflags |= wire::FLAG_C_NO_ZEROES;
        }
        stream.write_all(&cflags.to_be_bytes())?;
        if export.len() > 4096 {
            return Err(proto("export name longer than 4096 bytes"));
        }
        stream.write_all(&wire::encode_option(
            opt::GO,
            &wire::encode_go_data(export, &[]),
        ))?;
        stream.flush()?;
        let mut export_info = None;
        loop {
            let mut h = [0u8; 20];
            stream.read_exact(&mut h)?;
            let h = wire::decode_reply_header(&h).ok_or_else(|| proto("bad reply magic"))?;
            if h.len > 1 << 16 {
                return Err(proto("option reply too long"));
            }
            let mut data = vec![0u8; h.len as usize];
            stream.read_exact(&mut data)?;
            if h.option != opt::GO {
                return Err(proto("reply to an option not sent"));
            }
            match h.reply {
                rep::INFO => {
                    if let Some(i) = wire::decode_info_export(&data) {
                        export_info = Some(i);
                    }
                }
                rep::ACK => {
                    let (size, flags) =
                        export_info.ok_or_else(|| proto("GO acknowledged without export info"))?;
                    return Ok(Client {
                        stream,
                        size,
                        flags,
                        cookie: 0,
                    });
                }
                rep::ERR_UNSUP => {
                    // An old server: EXPORT_NAME.
                    stream.write_all(&wire::encode_option(opt::EXPORT_NAME, export.as_bytes()))?;
                    stream.flush()?;
                    let mut b = [0u8; 10];
                    stream.read_exact(&mut b)?;
                    if !no_zeroes {
                        stream.read_exact(&mut [0u8; 124])?;
                    }
                    let size = u64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8]));
                    let flags = u16::from_be_bytes([b[8], b[9]]);
                    return Ok(Client {
                        stream,
                        size,
                        flags,
                        cookie: 0,
                    });
                }
                r if r & rep::ERR != 0 => {
                    let msg = String::from_utf8_lossy(&data);
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("NBD: export '{export}' refused (error {r:#x}: {msg})"),
                    ));
                }
                _ => {} // Other replies may be ignored.
            }
        }
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The transmission flags.
    pub fn flags(&self) -> u16 {
        self.flags
    }

    fn request(&mut self, command: u16, offset: u64, len: u32, payload: &[u8]) -> io::Result<()> {
        self.cookie += 1;
        let h = wire::RequestHeader {
            flags: 0,
            command,
            cookie: self.cookie,
            offset,
            len,
        };
        if payload.is_empty() {
            self.stream.write_all(&h.encode())?;
        } else {
            let mut v = Vec::with_capacity(wire::REQUEST_LEN + payload.len());
            v.extend_from_slice(&h.encode());
            v.extend_from_slice(payload);
            self.stream.write_all(&v)?;
        }
        self.stream.flush()
    }

    /// Reads a simple reply for the last request: `Ok(Err(errno))` for an
    /// error the server returned, `Err` for a broken connection.
    fn reply(&mut self) -> io::Result<Result<(), i32>> {
        let mut r = [0u8; wire::SIMPLE_REPLY_LEN];
        self.stream.read_exact(&mut r)?;
        let (error, cookie) =
            wire::decode_simple_reply(&r).ok_or_else(|| proto("bad reply magic"))?;
        if cookie != self.cookie {
            return Err(proto("reply to another request"));
        }
        Ok(if error == 0 {
            Ok(())
        } else {
            Err(wire::errno_of(error))
        })
    }

    /// Reads `buf.len()` bytes at `offset` (in pieces of at most `max`).
    pub fn read(&mut self, buf: &mut [u8], offset: u64, max: usize) -> io::Result<Result<(), i32>> {
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(max);
            self.request(cmd::READ, offset + done as u64, n as u32, &[])?;
            if let Err(e) = self.reply()? {
                return Ok(Err(e));
            }
            self.stream.read_exact(&mut buf[done..done + n])?;
            done += n;
        }
        Ok(Ok(()))
    }

    /// Writes `buf` at `offset` (in pieces of at most `max`).
    pub fn write(&mut self, buf: &[u8], offset: u64, max: usize) -> io::Result<Result<(), i32>> {
        for (i, piece) in buf.chunks(max.max(1)).enumerate() {
            self.request(
                cmd::WRITE,
                offset + (i * max) as u64,
                piece.len() as u32,
                piece,
            )?;
            if let Err(e) = self.reply()? {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }

    /// Writes zeroes, with WRITE_ZEROES when the server has it.
    pub fn write_zeroes(
        &mut self,
        offset: u64,
        len: u64,
        max: usize,
    ) -> io::Result<Result<(), i32>> {
        let zeroes_cmd = self.flags & tflag::SEND_WRITE_ZEROES != 0;
        let zeros = if zeroes_cmd {
            Vec::new()
        } else {
            vec![0u8; max.min(len as usize)]
        };
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(max as u64);
            if zeroes_cmd {
                self.request(cmd::WRITE_ZEROES, offset + done, n as u32, &[])?;
            } else {
                self.request(cmd::WRITE, offset + done, n as u32, &zeros[..n as usize])?;
            }
            if let Err(e) = self.reply()? {
                return Ok(Err(e));
            }
            done += n;
        }
        Ok(Ok(()))
    }

    /// Flushes (nothing to do if the server does not offer FLUSH).
    pub fn flush(&mut self) -> io::Result<Result<(), i32>> {
        if self.flags & tflag::SEND_FLUSH == 0 {
            return Ok(Ok(()));
        }
        self.request(cmd::FLUSH, 0, 0, &[])?;
        self.reply()
    }

    /// Says goodbye (NBD_CMD_DISC); the server closes the connection.
    pub fn disconnect(mut self) -> io::Result<()> {
        self.request(cmd::DISC, 0, 0, &[])
    }
}

/// The largest payload an NBD child sends or asks for in one request
/// (QEMU's server accepts 32 MiB).
pub const CHILD_MAX_PAYLOAD: usize = 1 << 20;

/// How long a child waits for a server before the operation fails.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// While a child has no connection, a background thread tries to connect
/// again this often; meanwhile its operations fail at once (a dead host
/// does not slow every request down).
pub const RECONNECT_DELAY: Duration = Duration::from_millis(500);

struct Conn {
    client: Option<Client<Box<dyn Stream>>>,
    /// A background thread is trying to connect.
    reconnecting: bool,
}

struct Shared {
    addr: NbdAddr,
    size: u64,
    timeout: Duration,
    conn: Mutex<Conn>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh, negotiated connection to the same export, of the same size.
    fn connect(&self) -> io::Result<Client<Box<dyn Stream>>> {
        let c = Client::handshake(self.addr.connect(self.timeout)?, self.addr.export())?;
        if c.size() != self.size {
            return Err(io::Error::other(format!(
                "{}: the export is now {} bytes, was {}",
                self.addr,
                c.size(),
                self.size
            )));
        }
        Ok(c)
    }
}

/// An NBD export as a child: one connection, one request at a time, opened
/// at [`NbdChild::open`]. When the connection breaks (the server died, a
/// timeout, a protocol error) the operation fails with that error, and so
/// does every operation until a background thread has connected again
/// (every [`RECONNECT_DELAY`]); a restarted server then serves again.
pub struct NbdChild {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NbdChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NbdChild({}, {} bytes)",
            self.shared.addr, self.shared.size
        )
    }
}

impl NbdChild {
    /// Connects to `addr` and negotiates the export (its size is fixed from
    /// now on); `timeout` bounds connecting and every read and write.
    pub fn open(addr: NbdAddr, timeout: Duration) -> io::Result<NbdChild> {
        let client = Client::handshake(addr.connect(timeout)?, addr.export())?;
        Ok(NbdChild {
            shared: Arc::new(Shared {
                addr,
                size: client.size(),
                timeout,
                conn: Mutex::new(Conn {
                    client: Some(client),
                    reconnecting: false,
                }),
            }),
        })
    }

    /// Whether the export is read-only.
    pub fn read_only(&self) -> bool {
        self.shared
            .lock()
            .client
            .as_ref()
            .is_some_and(|c| c.flags() & tflag::READ_ONLY != 0)
    }

    /// Whether the child has a connection now.
    pub fn connected(&self) -> bool {
        self.shared.lock().client.is_some()
    }

    /// Starts the background reconnection, unless it runs already.
    fn reconnect(&self, conn: &mut Conn) {
        if conn.reconnecting {
            return;
        }
        conn.reconnecting = true;
        let weak = Arc::downgrade(&self.shared);
        let started = std::thread::Builder::new()
            .name("nbd-reconnect".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(RECONNECT_DELAY);
                    // The child is gone: stop.
                    let Some(shared) = weak.upgrade() else { return };
                    if let Ok(c) = shared.connect() {
                        let mut conn = shared.lock();
                        conn.client = Some(c);
                        conn.reconnecting = false;
                        return;
                    }
                }
            });
        if started.is_err() {
            conn.reconnecting = false;
        }
    }

    /// Runs `f` on the connection; without one, fails at once (ENOTCONN);
    /// a broken connection is dropped, its error returned and a
    /// reconnection started.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Client<Box<dyn Stream>>) -> io::Result<Result<T, i32>>,
    ) -> io::Result<T> {
        let mut c = self.shared.lock();
        let Some(client) = c.client.as_mut() else {
            self.reconnect(&mut c);
            return Err(io::Error::from_raw_os_error(ENOTCONN));
        };
        match f(client) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(errno)) => Err(io::Error::from_raw_os_error(errno)),
            Err(e) => {
                c.client = None;
                self.reconnect(&mut c);
                Err(e)
            }
        }
    }
}

/// ENOTCONN on Linux.
const ENOTCONN: i32 = 107;

impl Child for NbdChild {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.shared.size)
        {
            return Err(io::Error::from_raw_os_error(22));
        }
        self.with(|c| c.read(buf, offset, CHILD_MAX_PAYLOAD))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(|c| c.write(buf, offset, CHILD_MAX_PAYLOAD))
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.with(|c| c.write_zeroes(offset, len, CHILD_MAX_PAYLOAD))
    }

    fn flush(&self) -> io::Result<()> {
        self.with(|c| c.flush())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.shared.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_like_qemus() {
        assert_eq!(
            NbdAddr::parse("nbd://127.0.0.1:10810/disk"),
            Ok(NbdAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 10810,
                export: "disk".into()
            })
        );
        assert_eq!(
            NbdAddr::parse("nbd://host"),
            Ok(NbdAddr::Tcp {
                host: "host".into(),
                port: DEFAULT_PORT,
                export: "".into()
            })
        );
        assert_eq!(
            NbdAddr::parse("nbd://[::1]:99/"),
            Ok(NbdAddr::Tcp {
                host: "::1".into(),
                port: 99,
                export: "".into()
            })
        );
        assert_eq!(
            NbdAddr::parse("nbd+unix:///?socket=/tmp/s"),
            Ok(NbdAddr::Unix {
                path: "/tmp/s".into(),
                export: "".into()
            })
        );
        assert_eq!(
            NbdAddr::parse("nbd+unix:///e?socket=/tmp/s"),
            Ok(NbdAddr::Unix {
                path: "/tmp/s".into(),
                export: "e".into()
            })
        );
        for bad in [
            "nbd://",
            "nbd://h:x",
            "nbd://h:99999",
            "nbd+unix://x",
            "nbd+unix:///e",
            "nbd+unix:///?socket=",
            "/tmp/a.img",
        ] {
            assert!(NbdAddr::parse(bad).is_err(), "{bad}");
        }
        assert!(NbdAddr::is_nbd("nbd://h") && !NbdAddr::is_nbd("a.img"));
    }
}
