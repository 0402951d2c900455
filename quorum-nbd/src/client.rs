//! The client side: a blocking NBD client over any stream ([`Client`], one
//! request at a time, simple replies), and [`NbdChild`], an export as a child
//! of the blocking driver, which keeps many requests in flight on one
//! connection (the multiplexing lives in the private `mux` module).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quorum_driver::Child;
use quorum_proto::Extent;

use crate::wire::{self, cflag, cmd, info, opt, rep, state, tflag};

mod mux;

use mux::{Mux, Reply, Req};

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

    /// Opens a socket to the server, with `timeout` for connecting and for
    /// every read and write (the handshake's; [`NbdChild`] shortens them
    /// afterwards, see `mux`).
    fn connect(&self, timeout: Duration) -> io::Result<Sock> {
        let s = match self {
            NbdAddr::Tcp { host, port, .. } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                let mut found = None;
                for a in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&a, timeout) {
                        Ok(s) => {
                            s.set_nodelay(true)?;
                            found = Some(Sock::Tcp(s));
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                found.ok_or(last)?
            }
            NbdAddr::Unix { path, .. } => Sock::Unix(UnixStream::connect(path)?),
        };
        s.set_timeouts(timeout)?;
        Ok(s)
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

/// A connected socket, TCP or unix. A concrete type rather than a
/// `dyn Stream` because [`NbdChild`] needs what only sockets have: clones of
/// one connection (one to read replies, one to send requests, one to shut it
/// down from any thread) and timeouts.
#[derive(Debug)]
enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Sock {
    fn try_clone(&self) -> io::Result<Sock> {
        Ok(match self {
            Sock::Tcp(s) => Sock::Tcp(s.try_clone()?),
            Sock::Unix(s) => Sock::Unix(s.try_clone()?),
        })
    }

    /// Ends the connection for every clone: a thread blocked reading or
    /// writing on another clone returns at once.
    fn shutdown(&self) {
        let _ = match self {
            Sock::Tcp(s) => s.shutdown(Shutdown::Both),
            Sock::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    /// The longest one read or write call may block (shared by every clone:
    /// it is the socket's).
    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
            Sock::Unix(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
        }
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(buf),
            Sock::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(buf),
            Sock::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write_vectored(bufs),
            Sock::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A socket whose reads and writes all give up at one deadline: the
/// handshake's, so that a server sending its replies a byte at a time, or
/// without end, cannot hold a connection attempt for longer than the
/// timeout (the socket's own timeouts, short ticks, only bound each call).
struct Timed<'a> {
    sock: &'a mut Sock,
    deadline: std::time::Instant,
}

impl Timed<'_> {
    fn run<T>(&mut self, mut f: impl FnMut(&mut Sock) -> io::Result<T>) -> io::Result<T> {
        loop {
            if std::time::Instant::now() >= self.deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "NBD: the handshake took too long",
                ));
            }
            match f(self.sock) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                r => return r,
            }
        }
    }
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.run(|s| s.read(buf))
    }
}

impl Write for Timed<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.run(|s| s.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn proto(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("NBD: {msg}"))
}

/// What a handshake settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Negotiated {
    /// The export's size in bytes.
    size: u64,
    /// Transmission flags ([`tflag`]).
    flags: u16,
    /// The server agreed to structured replies.
    structured: bool,
    /// The id the server gave `base:allocation`, if it selected it.
    base_allocation: Option<u32>,
    /// The largest payload the server accepts, if it said so.
    max_payload: Option<u32>,
}

/// Reads one option reply to `option`: its type and data.
fn option_reply<S: Read>(stream: &mut S, option: u32) -> io::Result<(u32, Vec<u8>)> {
    let mut h = [0u8; 20];
    stream.read_exact(&mut h)?;
    let h = wire::decode_reply_header(&h).ok_or_else(|| proto("bad reply magic"))?;
    if h.len > 1 << 16 {
        return Err(proto("option reply too long"));
    }
    let mut data = vec![0u8; h.len as usize];
    stream.read_exact(&mut data)?;
    if h.option != option {
        return Err(proto("reply to an option not sent"));
    }
    Ok((h.reply, data))
}

/// The fixed newstyle handshake for `export`. With `structured`, it first
/// asks for structured replies and, if the server agrees, selects
/// `base:allocation`; a server that refuses either (any error reply, such
/// as `ERR_UNSUP` from a server that predates them) is used without. Then
/// `NBD_OPT_GO`, or `NBD_OPT_EXPORT_NAME` if the server does not know GO.
fn negotiate<S: Read + Write>(
    stream: &mut S,
    export: &str,
    structured: bool,
) -> io::Result<Negotiated> {
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
    let mut n = Negotiated {
        size: 0,
        flags: 0,
        structured: false,
        base_allocation: None,
        max_payload: None,
    };
    if structured {
        stream.write_all(&wire::encode_option(opt::STRUCTURED_REPLY, &[]))?;
        stream.flush()?;
        loop {
            match option_reply(stream, opt::STRUCTURED_REPLY)?.0 {
                rep::ACK => {
                    n.structured = true;
                    break;
                }
                r if r & rep::ERR != 0 => break,
                _ => {} // Nothing else is defined: ignored.
            }
        }
    }
    if n.structured {
        let data = wire::encode_meta_context_data(export, &[wire::BASE_ALLOCATION]);
        stream.write_all(&wire::encode_option(opt::SET_META_CONTEXT, &data))?;
        stream.flush()?;
        loop {
            let (r, data) = option_reply(stream, opt::SET_META_CONTEXT)?;
            match r {
                rep::META_CONTEXT => {
                    let id = data
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    if data.get(4..) == Some(wire::BASE_ALLOCATION.as_bytes()) {
                        n.base_allocation = id;
                    }
                }
                rep::ACK => break,
                // Contexts refused: block status is unknown, all data.
                r if r & rep::ERR != 0 => {
                    n.base_allocation = None;
                    break;
                }
                _ => {}
            }
        }
    }
    stream.write_all(&wire::encode_option(
        opt::GO,
        &wire::encode_go_data(export, &[]),
    ))?;
    stream.flush()?;
    let mut export_info = None;
    loop {
        let (r, data) = option_reply(stream, opt::GO)?;
        match r {
            rep::INFO => {
                if let Some(i) = wire::decode_info_export(&data) {
                    export_info = Some(i);
                } else if data.len() == 14 && data[..2] == info::BLOCK_SIZE.to_be_bytes() {
                    // Sent unasked by QEMU and by this crate's server.
                    n.max_payload =
                        Some(u32::from_be_bytes([data[10], data[11], data[12], data[13]]));
                }
            }
            rep::ACK => {
                (n.size, n.flags) =
                    export_info.ok_or_else(|| proto("GO acknowledged without export info"))?;
                return Ok(n);
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
                n.size = u64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8]));
                n.flags = u16::from_be_bytes([b[8], b[9]]);
                return Ok(n);
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

/// A connection in the transmission phase, one request at a time, with
/// simple replies only (a tool for tests and scripts; [`NbdChild`] is the
/// one that keeps many requests in flight).
pub struct Client<S: Read + Write> {
    stream: S,
    size: u64,
    flags: u16,
    cookie: u64,
}

impl<S: Read + Write> Client<S> {
    /// The fixed newstyle handshake on `stream`: `NBD_OPT_GO` for `export`
    /// (falling back to `NBD_OPT_EXPORT_NAME` if the server does not know GO).
    /// Structured replies are not asked for.
    pub fn handshake(mut stream: S, export: &str) -> io::Result<Client<S>> {
        let n = negotiate(&mut stream, export, false)?;
        Ok(Client {
            stream,
            size: n.size,
            flags: n.flags,
            cookie: 0,
        })
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
            let n = (buf.len() - done).min(max.max(1));
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
        let max = max.max(1);
        for (i, piece) in buf.chunks(max).enumerate() {
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
        let max = max.max(1);
        let zeroes_cmd = self.flags & tflag::SEND_WRITE_ZEROES != 0;
        let zeros = if zeroes_cmd {
            Vec::new()
        } else {
            vec![0u8; (max as u64).min(len) as usize]
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
/// (QEMU's server accepts 32 MiB); smaller if the server says its maximum
/// is smaller.
pub const CHILD_MAX_PAYLOAD: usize = 1 << 20;

/// How long a child waits for a server before the operation fails: for
/// connecting, for each step of the handshake, and for the reply to each
/// request (counted from when it is sent). A request not answered in time
/// breaks the connection.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// While a child has no connection, a background thread tries to connect
/// again this often; meanwhile its operations fail at once (a dead host
/// does not slow every request down).
pub const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// The most requests one child keeps in flight on its connection; more
/// callers wait for one to finish. QEMU's own NBD client allows 16.
pub const MAX_IN_FLIGHT: usize = 64;

/// The longest range one block status request asks about (the wire's
/// length is 32 bits; kept 4 KiB-aligned).
const MAX_STATUS_LEN: u64 = (u32::MAX as u64) & !0xfff;

/// EINVAL on Linux.
const EINVAL: i32 = 22;

/// An NBD export as a child, opened at [`NbdChild::open`]: one connection
/// that carries up to [`MAX_IN_FLIGHT`] requests at once from any number of
/// threads. Each caller sends its request and waits for its own reply; the
/// first waiting caller reads the connection's replies for everyone (into
/// its own buffer when the reply is its own) until its reply is in, then
/// hands reading on, so no thread of the child's own sits between a reply
/// and its caller.
///
/// Structured replies and `base:allocation` are negotiated when the server
/// offers them: block status then comes from the server
/// (`NBD_CMD_BLOCK_STATUS`), otherwise the whole export is data.
///
/// When the connection breaks (the server died, a request not answered
/// within the timeout, a protocol error) every request in flight fails with
/// that error, and every later one fails at once (`ENOTCONN`) until a
/// background thread has connected again (every [`RECONNECT_DELAY`], to an
/// export of the same size); a restarted server then serves again.
pub struct NbdChild {
    mux: Arc<Mux>,
}

impl std::fmt::Debug for NbdChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NbdChild({}, {} bytes)", self.mux.addr, self.mux.size)
    }
}

impl NbdChild {
    /// Connects to `addr` and negotiates the export (its size is fixed from
    /// now on); `timeout` bounds connecting, each step of the handshake and
    /// the wait for each reply.
    pub fn open(addr: NbdAddr, timeout: Duration) -> io::Result<NbdChild> {
        Ok(NbdChild {
            mux: Mux::open(addr, timeout)?,
        })
    }

    /// Whether the export is read-only (false while not connected).
    pub fn read_only(&self) -> bool {
        self.mux
            .info()
            .is_some_and(|i| i.flags & tflag::READ_ONLY != 0)
    }

    /// Whether the child has a connection now.
    pub fn connected(&self) -> bool {
        self.mux.info().is_some()
    }

    /// Whether the server answers block status (`base:allocation` was
    /// selected on the current connection); without it,
    /// [`Child::block_status`] reports data everywhere.
    pub fn has_block_status(&self) -> bool {
        self.mux.info().is_some_and(|i| i.base_allocation.is_some())
    }

    /// Whether the current connection uses structured replies.
    pub fn structured(&self) -> bool {
        self.mux.info().is_some_and(|i| i.structured)
    }

    /// How many requests are in flight now (sent or about to be, reply not
    /// yet taken by their caller).
    pub fn in_flight(&self) -> usize {
        self.mux.in_flight()
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        if offset.checked_add(len).is_none_or(|e| e > self.mux.size) {
            return Err(io::Error::from_raw_os_error(EINVAL));
        }
        Ok(())
    }
}

impl Child for NbdChild {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let info = self.mux.connection()?;
        let max = info.max_payload;
        for (i, piece) in buf.chunks_mut(max).enumerate() {
            let req = Req {
                command: cmd::READ,
                flags: 0,
                offset: offset + (i * max) as u64,
                len: piece.len() as u32,
            };
            self.mux.call(&info, req, &[], piece)?;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let info = self.mux.connection()?;
        let max = info.max_payload;
        for (i, piece) in buf.chunks(max).enumerate() {
            let req = Req {
                command: cmd::WRITE,
                flags: 0,
                offset: offset + (i * max) as u64,
                len: piece.len() as u32,
            };
            self.mux.call(&info, req, piece, &mut [])?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let info = self.mux.connection()?;
        let max = info.max_payload as u64;
        let command = info.flags & tflag::SEND_WRITE_ZEROES != 0;
        let zeros = if command {
            Vec::new()
        } else {
            vec![0u8; max.min(len) as usize]
        };
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(max);
            let (command, payload) = if command {
                (cmd::WRITE_ZEROES, &[][..])
            } else {
                (cmd::WRITE, &zeros[..n as usize])
            };
            let req = Req {
                command,
                flags: 0,
                offset: offset + done,
                len: n as u32,
            };
            self.mux.call(&info, req, payload, &mut [])?;
            done += n;
        }
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Extent> {
        self.check_range(offset, len)?;
        let info = self.mux.connection()?;
        if len == 0 || info.base_allocation.is_none() {
            return Ok(Extent { len, zero: false });
        }
        let req = Req {
            command: cmd::BLOCK_STATUS,
            flags: cflag::REQ_ONE,
            offset,
            len: len.min(MAX_STATUS_LEN) as u32,
        };
        Ok(match self.mux.call(&info, req, &[], &mut [])? {
            Reply::Extent { len, flags } => Extent {
                len: u64::from(len),
                // HOLE alone promises nothing about the contents.
                zero: flags & state::ZERO != 0,
            },
            Reply::Done => Extent { len, zero: false },
        })
    }

    fn flush(&self) -> io::Result<()> {
        let info = self.mux.connection()?;
        if info.flags & tflag::SEND_FLUSH == 0 {
            return Ok(());
        }
        let req = Req {
            command: cmd::FLUSH,
            flags: 0,
            offset: 0,
            len: 0,
        };
        self.mux.call(&info, req, &[], &mut []).map(|_| ())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.mux.size)
    }

    fn reachable(&self) -> bool {
        self.connected()
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
