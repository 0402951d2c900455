//! A minimal NBD client (fixed newstyle, `NBD_OPT_EXPORT_NAME`, simple
//! replies only) that runs qemu-io commands against QEMU's NBD server.
//!
//! Why not `qemu-io` over NBD: QEMU's client always negotiates structured
//! replies, and QEMU's server then serves reads as "sparse reads": it first
//! asks the quorum node for block status (quorum's block status reads every
//! child's status and reports a child's failure as a `read` QUORUM_REPORT_BAD
//! of its own; ranges every child has as zeroes are not read at all), reads
//! the data ranges piecewise, and drops the connection when a read fails
//! ("Failed to send reply: reading from file failed"), failing every later
//! command. With simple replies the server does one plain read per request
//! and answers a failure with an error reply, exactly what `qemu-io` on the
//! node itself does.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const REQUEST_MAGIC: u32 = 0x2560_9513;
const REPLY_MAGIC: u32 = 0x6744_6698;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_WRITE_ZEROES: u16 = 6;
/// qemu-io's default cache mode is writethrough: every write and
/// write-zeroes carries FUA, which QEMU turns into a flush of the quorum
/// node after the write.
const FLAG_FUA: u16 = 1;

struct Conn {
    s: UnixStream,
    cookie: u64,
}

fn err(e: std::io::Error) -> String {
    format!("NBD: {e}")
}

impl Conn {
    fn open(sock: &Path, export: &str) -> Result<Conn, String> {
        let mut s = UnixStream::connect(sock).map_err(err)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(err)?;
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).map_err(err)?;
        if &hello[..8] != b"NBDMAGIC" || &hello[8..16] != b"IHAVEOPT" {
            return Err("NBD: not a newstyle server".into());
        }
        // NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES
        s.write_all(&3u32.to_be_bytes()).map_err(err)?;
        let mut opt = Vec::new();
        opt.extend_from_slice(b"IHAVEOPT");
        opt.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
        opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
        opt.extend_from_slice(export.as_bytes());
        s.write_all(&opt).map_err(err)?;
        let mut info = [0u8; 10];
        s.read_exact(&mut info).map_err(err)?;
        Ok(Conn { s, cookie: 0 })
    }

    /// One request; `Ok(Err(errno))` is an NBD error reply.
    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        offset: u64,
        len: u32,
        data: &[u8],
    ) -> Result<Result<Vec<u8>, u32>, String> {
        self.cookie += 1;
        let mut req = Vec::with_capacity(28 + data.len());
        req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&flags.to_be_bytes());
        req.extend_from_slice(&kind.to_be_bytes());
        req.extend_from_slice(&self.cookie.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        req.extend_from_slice(data);
        self.s.write_all(&req).map_err(err)?;
        if kind == CMD_DISC {
            return Ok(Ok(Vec::new()));
        }
        let mut reply = [0u8; 16];
        self.s.read_exact(&mut reply).map_err(err)?;
        let magic = u32::from_be_bytes(reply[0..4].try_into().expect("4 bytes"));
        let errno = u32::from_be_bytes(reply[4..8].try_into().expect("4 bytes"));
        let cookie = u64::from_be_bytes(reply[8..16].try_into().expect("8 bytes"));
        if magic != REPLY_MAGIC || cookie != self.cookie {
            return Err(format!("NBD: bad reply {reply:?}"));
        }
        if errno != 0 {
            return Ok(Err(errno));
        }
        let mut buf = Vec::new();
        if kind == CMD_READ {
            buf = vec![0u8; len as usize];
            self.s.read_exact(&mut buf).map_err(err)?;
        }
        Ok(Ok(buf))
    }
}

fn number(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|_| format!("cannot parse {s:?} (the generator writes plain numbers)"))
}

/// Runs the commands the generator writes (`read [-P p] [-v] off len`,
/// `write [-P p|-z] off len`, `flush`, `length`), then flushes (what
/// qemu-io's close does) and disconnects. Returns one line per command.
pub(crate) fn run(sock: &Path, export: &str, commands: &[String]) -> Result<Vec<String>, String> {
    let mut c = Conn::open(sock, export)?;
    let mut log = Vec::new();
    for cmd in commands {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let mut pattern = 0xcdu8; // qemu-io's default write pattern
        let mut zero = false;
        let mut args = Vec::new();
        let mut i = 1;
        while i < words.len() {
            match words[i] {
                "-P" => {
                    pattern = number(words[i + 1])? as u8;
                    i += 1;
                }
                "-z" => zero = true,
                "-v" | "-q" => {}
                a => args.push(number(a)?),
            }
            i += 1;
        }
        let r = match (words[0], args.as_slice()) {
            ("read", &[off, len]) => c.request(CMD_READ, 0, off, len as u32, &[])?,
            ("write", &[off, len]) if zero => {
                c.request(CMD_WRITE_ZEROES, FLAG_FUA, off, len as u32, &[])?
            }
            ("write", &[off, len]) => c.request(
                CMD_WRITE,
                FLAG_FUA,
                off,
                len as u32,
                &vec![pattern; len as usize],
            )?,
            ("flush", []) => c.request(CMD_FLUSH, 0, 0, 0, &[])?,
            ("length", []) => Ok(Vec::new()),
            _ => return Err(format!("NBD client: unsupported command {cmd:?}")),
        };
        log.push(match r {
            Ok(_) => format!("{cmd}: ok"),
            Err(e) => format!("{cmd}: NBD error {e}"),
        });
    }
    let r = c.request(CMD_FLUSH, 0, 0, 0, &[])?;
    log.push(format!("close flush: {r:?}"));
    let _ = c.request(CMD_DISC, 0, 0, 0, &[])?;
    Ok(log)
}
