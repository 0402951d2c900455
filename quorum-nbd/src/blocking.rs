//! A blocking server connection: the [`server`](crate::server) state machine
//! and checks driven over a stream, with the block device behind a
//! [`Backend`]. One call of [`serve_connection`] serves one client, request
//! after request, until it leaves or misbehaves.

use std::io::{self, Read, Write};
use std::time::Duration;

use crate::server::{Decision, Export, Handshake, Step, check};
use crate::wire::{self, RequestHeader};

/// A client has this long for each step of the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// What an export serves. Errors are NBD error values ([`wire::err`]);
/// [`wire::nbd_error`] turns an errno into one.
pub trait Backend {
    /// Fills `buf` from `offset` (within the export).
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), u32>;
    /// Writes `data` at `offset`.
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), u32>;
    /// Writes `len` zero bytes at `offset`.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), u32>;
    /// Makes everything written durable.
    fn flush(&self) -> Result<(), u32>;
}

/// A client connection: a stream whose read timeout can be set.
pub trait Conn: Read + Write + Send {
    /// Sets the read timeout (`None`: wait forever).
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl Conn for std::net::TcpStream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}

impl Conn for std::os::unix::net::UnixStream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}

/// Reads the bytes left over from the handshake first, then the stream.
struct Input<'a, C: Conn + ?Sized> {
    pending: Vec<u8>,
    conn: &'a mut C,
}

impl<C: Conn + ?Sized> Input<'_, C> {
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let n = self.pending.len().min(buf.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        self.conn.read_exact(&mut buf[n..])
    }

    /// Reads and drops `n` bytes.
    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let mut scratch = vec![0u8; 64 * 1024];
        while n > 0 {
            let k = n.min(scratch.len() as u64) as usize;
            self.read_exact(&mut scratch[..k])?;
            n -= k as u64;
        }
        Ok(())
    }
}

/// Serves one client of `export` from `backend`; returns why the connection
/// ended (for a log line). The handshake has [`HANDSHAKE_TIMEOUT`] per read;
/// afterwards an idle client may stay as long as it likes.
pub fn serve_connection<C: Conn + ?Sized>(
    conn: &mut C,
    export: &Export,
    backend: &dyn Backend,
) -> String {
    let _ = conn.set_timeout(Some(HANDSHAKE_TIMEOUT));
    let (mut hs, greeting) = Handshake::new(export.clone());
    if let Err(e) = conn.write_all(&greeting) {
        return format!("handshake: {e}");
    }
    let mut buf: Vec<u8> = Vec::new();
    loop {
        match hs.step(&buf) {
            Step::NeedMore(n) => {
                let have = buf.len();
                buf.resize(n.max(have), 0);
                if let Err(e) = conn.read_exact(&mut buf[have..]) {
                    return format!("handshake: {e}");
                }
            }
            Step::Reply { consumed, reply } => {
                buf.drain(..consumed.min(buf.len()));
                if let Err(e) = conn.write_all(&reply) {
                    return format!("handshake: {e}");
                }
            }
            Step::Transmission { consumed, reply } => {
                buf.drain(..consumed.min(buf.len()));
                if let Err(e) = conn.write_all(&reply) {
                    return format!("handshake: {e}");
                }
                break;
            }
            Step::Close { reply, reason } => {
                let _ = conn.write_all(&reply);
                return format!("handshake refused: {reason}");
            }
        }
    }
    let _ = conn.set_timeout(None);
    let mut input = Input { pending: buf, conn };
    match transmission(&mut input, backend, export) {
        Ok(why) => why.into(),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => "client went away".into(),
        Err(e) => format!("closed: {e}"),
    }
}

fn transmission<C: Conn + ?Sized>(
    input: &mut Input<'_, C>,
    backend: &dyn Backend,
    export: &Export,
) -> io::Result<&'static str> {
    let fua =
        |r: Result<(), u32>, fua: bool| r.and_then(|()| if fua { backend.flush() } else { Ok(()) });
    loop {
        let mut h = [0u8; wire::REQUEST_LEN];
        input.read_exact(&mut h)?;
        let Some(req) = RequestHeader::decode(&h) else {
            return Ok("bad request magic");
        };
        let mut data = Vec::new();
        let result = match check(export, &req) {
            Decision::Disconnect => {
                let _ = backend.flush();
                return Ok("client disconnected");
            }
            Decision::ErrorClose { error } => {
                let _ = input.conn.write_all(&wire::simple_reply(req.cookie, error));
                return Ok("oversized write refused");
            }
            Decision::Error { error, skip } => {
                input.skip(u64::from(skip))?;
                Err(error)
            }
            Decision::Read { offset, len } => {
                data = vec![0u8; len as usize];
                if len == 0 {
                    Ok(())
                } else {
                    backend.read(offset, &mut data)
                }
            }
            Decision::Write {
                offset,
                len,
                fua: f,
            } => {
                let mut payload = vec![0u8; len as usize];
                input.read_exact(&mut payload)?;
                if len == 0 {
                    Ok(())
                } else {
                    fua(backend.write(offset, &payload), f)
                }
            }
            Decision::WriteZeroes {
                offset,
                len,
                fua: f,
            } => {
                if len == 0 {
                    Ok(())
                } else {
                    fua(backend.write_zeroes(offset, u64::from(len)), f)
                }
            }
            Decision::Flush => backend.flush(),
            Decision::Trim => Ok(()),
        };
        let error = match result {
            Ok(()) => 0,
            Err(0) => wire::err::EIO,
            Err(e) => e,
        };
        let mut out = Vec::with_capacity(wire::SIMPLE_REPLY_LEN + data.len());
        out.extend_from_slice(&wire::simple_reply(req.cookie, error));
        if error == 0 {
            out.extend_from_slice(&data);
        }
        input.conn.write_all(&out)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Client, NbdAddr, NbdChild};
    use crate::wire::err;
    use quorum_driver::Child;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::{Arc, Mutex};

    /// A memory disk that fails at `bad_offset`.
    struct Mem {
        data: Mutex<Vec<u8>>,
        flushes: Mutex<u32>,
    }

    impl Mem {
        fn new(n: usize) -> Arc<Mem> {
            Arc::new(Mem {
                data: Mutex::new(vec![0; n]),
                flushes: Mutex::new(0),
            })
        }
    }

    const BAD: u64 = 4096 * 7;

    impl Backend for Mem {
        fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), u32> {
            if offset == BAD {
                return Err(err::EIO);
            }
            let d = self.data.lock().unwrap();
            buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), u32> {
            if offset == BAD {
                return Err(wire::nbd_error(122)); // EDQUOT
            }
            let mut d = self.data.lock().unwrap();
            d[offset as usize..offset as usize + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), u32> {
            self.write(offset, &vec![0; len as usize])
        }
        fn flush(&self) -> Result<(), u32> {
            *self.flushes.lock().unwrap() += 1;
            Ok(())
        }
    }

    fn export(size: u64) -> Export {
        Export {
            name: "m".into(),
            size,
            read_only: false,
            max_payload: 1 << 16,
        }
    }

    /// A server thread on one end of a socket pair; the client gets the other.
    fn pair(mem: Arc<Mem>) -> (UnixStream, std::thread::JoinHandle<String>) {
        let (a, mut b) = UnixStream::pair().unwrap();
        let size = mem.data.lock().unwrap().len() as u64;
        let t = std::thread::spawn(move || serve_connection(&mut b, &export(size), &*mem));
        a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (a, t)
    }

    #[test]
    fn our_client_and_server_agree() {
        let mem = Mem::new(1 << 18);
        let (s, t) = pair(mem.clone());
        let mut c = Client::handshake(s, "m").unwrap();
        assert_eq!(c.size(), 1 << 18);
        // Bigger than the payload limit: the client splits it.
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        assert_eq!(c.write(&data, 100, 1 << 16).unwrap(), Ok(()));
        let mut back = vec![0u8; data.len()];
        assert_eq!(c.read(&mut back, 100, 1 << 16).unwrap(), Ok(()));
        assert!(back == data);
        assert_eq!(c.write_zeroes(100, 1000, 1 << 16).unwrap(), Ok(()));
        assert_eq!(mem.data.lock().unwrap()[100..1100], [0; 1000]);
        assert_eq!(c.flush().unwrap(), Ok(()));
        // Backend errors arrive as errnos (EDQUOT became ENOSPC on the wire).
        let mut b = [0u8; 512];
        assert_eq!(c.read(&mut b, BAD, 1 << 16).unwrap(), Err(5));
        assert_eq!(c.write(&b, BAD, 1 << 16).unwrap(), Err(28));
        // Past the end: EINVAL, and the connection goes on.
        assert_eq!(c.read(&mut b, (1 << 18) - 1, 1 << 16).unwrap(), Err(22));
        assert_eq!(c.read(&mut b, 0, 1 << 16).unwrap(), Ok(()));
        let flushes = *mem.flushes.lock().unwrap();
        c.disconnect().unwrap();
        assert_eq!(t.join().unwrap(), "client disconnected");
        assert_eq!(*mem.flushes.lock().unwrap(), flushes + 1);
    }

    #[test]
    fn a_client_asking_for_another_export_is_refused() {
        let (s, t) = pair(Mem::new(4096));
        let e = Client::handshake(s, "other").err().expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(t.join().unwrap().starts_with("handshake"));
    }

    #[test]
    fn requests_pipelined_behind_go_are_served() {
        let (mut s, t) = pair(Mem::new(8192));
        let mut msg = 3u32.to_be_bytes().to_vec();
        msg.extend(wire::encode_option(
            crate::wire::opt::GO,
            &wire::encode_go_data("", &[]),
        ));
        // A request sent before the GO reply arrived.
        msg.extend(
            RequestHeader {
                flags: 0,
                command: wire::cmd::READ,
                cookie: 9,
                offset: 0,
                len: 16,
            }
            .encode(),
        );
        s.write_all(&msg).unwrap();
        let mut r = vec![0u8; 18 + 86 + 16 + 16];
        s.read_exact(&mut r).unwrap();
        let tail: [u8; 16] = r[18 + 86..18 + 86 + 16].try_into().unwrap();
        assert_eq!(wire::decode_simple_reply(&tail), Some((0, 9)));
        drop(s);
        assert_eq!(t.join().unwrap(), "client went away");
    }

    /// Serves `mem` on a unix socket until `stop` is set; each connection
    /// in its own thread.
    fn listen(path: &std::path::Path, mem: Arc<Mem>) -> Arc<Mutex<Vec<UnixStream>>> {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path).unwrap();
        let open: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let o = open.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                o.lock().unwrap().push(c.try_clone().unwrap());
                let mem = mem.clone();
                std::thread::spawn(move || {
                    let size = mem.data.lock().unwrap().len() as u64;
                    serve_connection(&mut c, &export(size), &*mem)
                });
            }
        });
        open
    }

    #[test]
    fn an_nbd_child_fails_while_its_server_is_gone_and_reconnects() {
        let dir = std::env::temp_dir().join(format!("quorum-nbd-child-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let sock = dir.join("s");
        let mem = Mem::new(1 << 16);
        let open = listen(&sock, mem.clone());
        let addr = NbdAddr::parse(&format!("nbd+unix:///m?socket={}", sock.display())).unwrap();
        let child = NbdChild::open(addr, Duration::from_secs(5)).unwrap();
        assert_eq!(child.size().unwrap(), 1 << 16);
        child.write_at(&[7; 4096], 4096).unwrap();
        let mut b = [0u8; 4096];
        child.read_at(&mut b, 4096).unwrap();
        assert_eq!(b, [7; 4096]);
        assert!(child.read_at(&mut b, 1 << 16).is_err());
        // The server goes away: every connection is cut, the socket removed.
        std::fs::remove_file(&sock).unwrap();
        for c in open.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        assert!(child.read_at(&mut b, 0).is_err());
        assert!(child.flush().is_err());
        assert!(!child.connected());
        // It comes back: the child reconnects in the background.
        let _open = listen(&sock, mem.clone());
        let t = std::time::Instant::now();
        while child.read_at(&mut b, 4096).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "no reconnection");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(b, [7; 4096]);
        child.write_zeroes(4096, 4096).unwrap();
        assert_eq!(mem.data.lock().unwrap()[4096..8192], [0; 4096]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
