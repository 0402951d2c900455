//! NBD messages: constants and pure encoding/decoding (all integers are
//! big-endian on the wire).

/// `NBDMAGIC`, the first eight bytes a server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle magic, and the magic of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The magic of every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// The magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// The magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// The magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag: the server can omit the 124 zero bytes after EXPORT_NAME.
pub const FLAG_NO_ZEROES: u16 = 2;
/// Client flag: fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1;
/// Client flag: no zeroes after EXPORT_NAME.
pub const FLAG_C_NO_ZEROES: u32 = 2;

/// Options (client to server, during the handshake).
pub mod opt {
    /// Choose an export and end the handshake (old style, no error replies).
    pub const EXPORT_NAME: u32 = 1;
    /// End the handshake without an export.
    pub const ABORT: u32 = 2;
    /// List the exports.
    pub const LIST: u32 = 3;
    /// TLS (not supported here).
    pub const STARTTLS: u32 = 5;
    /// Describe an export.
    pub const INFO: u32 = 6;
    /// Describe an export and end the handshake.
    pub const GO: u32 = 7;
    /// Structured replies: read data in chunks, errors with messages, and
    /// what metadata querying needs.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List the metadata contexts a query selects.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select the metadata contexts `BLOCK_STATUS` reports.
    pub const SET_META_CONTEXT: u32 = 10;
    /// Extended headers (not supported here: answered `ERR_UNSUP`).
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// The one metadata context this crate speaks: allocation status.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// `base:allocation` extent flags.
pub mod state {
    /// The extent is a hole (unallocated).
    pub const HOLE: u32 = 1;
    /// The extent reads as zeroes.
    pub const ZERO: u32 = 2;
}

/// Option reply types.
pub mod rep {
    /// The option is done.
    pub const ACK: u32 = 1;
    /// An export's name (reply to LIST).
    pub const SERVER: u32 = 2;
    /// Information about an export (reply to INFO and GO).
    pub const INFO: u32 = 3;
    /// A metadata context (reply to LIST and SET_META_CONTEXT).
    pub const META_CONTEXT: u32 = 4;
    /// Error bit.
    pub const ERR: u32 = 1 << 31;
    /// The option is not known or not supported.
    pub const ERR_UNSUP: u32 = ERR | 1;
    /// The option is malformed.
    pub const ERR_INVALID: u32 = ERR | 3;
    /// The export does not exist.
    pub const ERR_UNKNOWN: u32 = ERR | 6;
    /// The option is too big.
    pub const ERR_TOO_BIG: u32 = ERR | 9;
}

/// Information types in an `INFO` reply.
pub mod info {
    /// Size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// Block size constraints.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags (sent with the export size).
pub mod tflag {
    /// The other flags are meaningful.
    pub const HAS_FLAGS: u16 = 1;
    /// The export is read-only.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `FLUSH` is supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// The `FUA` command flag is supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `TRIM` is supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `WRITE_ZEROES` is supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// A read may ask not to be fragmented (`DF`): structured replies only.
    pub const SEND_DF: u16 = 1 << 7;
    /// Several connections see one consistent export.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
}

/// Commands.
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write (a payload follows the request).
    pub const WRITE: u16 = 1;
    /// Disconnect.
    pub const DISC: u16 = 2;
    /// Flush.
    pub const FLUSH: u16 = 3;
    /// Trim (advisory).
    pub const TRIM: u16 = 4;
    /// Write zeroes.
    pub const WRITE_ZEROES: u16 = 6;
    /// Metadata of a range (the negotiated contexts).
    pub const BLOCK_STATUS: u16 = 7;
}

/// Structured reply chunk types and flags.
pub mod chunk {
    /// The last chunk of a reply.
    pub const FLAG_DONE: u16 = 1;
    /// No payload: ends a reply.
    pub const NONE: u16 = 0;
    /// Read data at an offset.
    pub const OFFSET_DATA: u16 = 1;
    /// A range that reads as zeroes.
    pub const OFFSET_HOLE: u16 = 2;
    /// Extents of one metadata context.
    pub const BLOCK_STATUS: u16 = 5;
    /// An error, with a message.
    pub const ERROR: u16 = (1 << 15) | 1;
    /// An error at an offset, with a message.
    pub const ERROR_OFFSET: u16 = (1 << 15) | 2;
}

/// Command flags.
pub mod cflag {
    /// Force unit access: durable before the reply.
    pub const FUA: u16 = 1;
    /// WRITE_ZEROES: do not punch a hole.
    pub const NO_HOLE: u16 = 1 << 1;
    /// READ: reply in one chunk.
    pub const DF: u16 = 1 << 2;
    /// BLOCK_STATUS: one extent is enough.
    pub const REQ_ONE: u16 = 1 << 3;
}

/// NBD error values (the protocol's own numbering).
pub mod err {
    /// Operation not permitted.
    pub const EPERM: u32 = 1;
    /// Input/output error.
    pub const EIO: u32 = 5;
    /// Cannot allocate memory.
    pub const ENOMEM: u32 = 12;
    /// Invalid argument.
    pub const EINVAL: u32 = 22;
    /// No space left on device.
    pub const ENOSPC: u32 = 28;
    /// Value too large.
    pub const EOVERFLOW: u32 = 75;
    /// Operation not supported.
    pub const ENOTSUP: u32 = 95;
    /// Server shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// A (Linux) errno as an NBD error, as the protocol document asks: `EDQUOT`
/// and `EFBIG` are `ENOSPC`, `EROFS` is `EPERM`, `EOPNOTSUPP` is `ENOTSUP`,
/// and anything without an NBD value is `EINVAL` (as QEMU's server does).
pub fn nbd_error(errno: i32) -> u32 {
    match errno {
        0 => 0,
        1 | 30 => err::EPERM,         // EPERM, EROFS
        5 => err::EIO,                // EIO
        12 => err::ENOMEM,            // ENOMEM
        28 | 122 | 27 => err::ENOSPC, // ENOSPC, EDQUOT, EFBIG
        75 => err::EOVERFLOW,         // EOVERFLOW
        95 => err::ENOTSUP,           // EOPNOTSUPP
        108 => err::ESHUTDOWN,        // ESHUTDOWN
        _ => err::EINVAL,
    }
}

/// An NBD error as a (Linux) errno: the values are the same; an unknown one
/// is `EINVAL`, as the protocol document asks of clients.
pub fn errno_of(nbd: u32) -> i32 {
    match nbd {
        err::EPERM
        | err::EIO
        | err::ENOMEM
        | err::EINVAL
        | err::ENOSPC
        | err::EOVERFLOW
        | err::ENOTSUP
        | err::ESHUTDOWN => nbd as i32,
        _ => err::EINVAL as i32,
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn greeting(flags: u16) -> [u8; 18] {
    let mut g = [0u8; 18];
    g[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    g[16..].copy_from_slice(&flags.to_be_bytes());
    g
}

/// Decodes a greeting: the handshake flags, or `None` if it is not a fixed
/// newstyle server's.
pub fn decode_greeting(g: &[u8; 18]) -> Option<u16> {
    (be64(g) == NBDMAGIC && be64(&g[8..]) == IHAVEOPT).then(|| be16(&g[16..]))
}

/// The header of a client option: magic, option, length (16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option.
    pub option: u32,
    /// The length of the data that follows.
    pub len: u32,
}

/// Header length of a client option.
pub const OPTION_HEADER_LEN: usize = 16;

/// Decodes an option header; `None` if the magic is wrong.
pub fn decode_option_header(b: &[u8; 16]) -> Option<OptionHeader> {
    (be64(b) == IHAVEOPT).then(|| OptionHeader {
        option: be32(&b[8..]),
        len: be32(&b[12..]),
    })
}

/// Encodes a client option with its data.
pub fn encode_option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + data.len());
    v.extend_from_slice(&IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// The data of `NBD_OPT_GO` / `NBD_OPT_INFO`: a name and information requests.
pub fn encode_go_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

/// Decodes the data of `NBD_OPT_GO` / `NBD_OPT_INFO`: the export name and the
/// information types asked for; `None` if the lengths do not add up.
pub fn decode_go_data(d: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    if d.len() < 4 {
        return None;
    }
    let n = be32(d) as usize;
    let rest = d.get(4..)?;
    if rest.len() < n.checked_add(2)? {
        return None;
    }
    let name = &rest[..n];
    let count = be16(&rest[n..]) as usize;
    let infos = &rest[n + 2..];
    if infos.len() != count * 2 {
        return None;
    }
    Some((name, infos.chunks(2).map(be16).collect()))
}

/// Encodes an option reply.
pub fn encode_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + data.len());
    v.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&reply.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// The header of an option reply (20 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyHeader {
    /// The option answered.
    pub option: u32,
    /// The reply type.
    pub reply: u32,
    /// The length of the data that follows.
    pub len: u32,
}

/// Decodes an option reply header; `None` if the magic is wrong.
pub fn decode_reply_header(b: &[u8; 20]) -> Option<ReplyHeader> {
    (be64(b) == REPLY_MAGIC).then(|| ReplyHeader {
        option: be32(&b[8..]),
        reply: be32(&b[12..]),
        len: be32(&b[16..]),
    })
}

/// `NBD_INFO_EXPORT` data: type, size, transmission flags.
pub fn encode_info_export(size: u64, flags: u16) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..2].copy_from_slice(&info::EXPORT.to_be_bytes());
    b[2..10].copy_from_slice(&size.to_be_bytes());
    b[10..].copy_from_slice(&flags.to_be_bytes());
    b
}

/// Decodes `NBD_INFO_EXPORT` data: (size, transmission flags).
pub fn decode_info_export(d: &[u8]) -> Option<(u64, u16)> {
    (d.len() == 12 && be16(d) == info::EXPORT).then(|| (be64(&d[2..]), be16(&d[10..])))
}

/// `NBD_INFO_BLOCK_SIZE` data: minimum, preferred, maximum payload.
pub fn encode_info_block_size(min: u32, preferred: u32, max: u32) -> [u8; 14] {
    let mut b = [0u8; 14];
    b[..2].copy_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    b[2..6].copy_from_slice(&min.to_be_bytes());
    b[6..10].copy_from_slice(&preferred.to_be_bytes());
    b[10..].copy_from_slice(&max.to_be_bytes());
    b
}

/// A transmission request header (28 bytes; a WRITE's payload follows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// Command flags.
    pub flags: u16,
    /// Command.
    pub command: u16,
    /// Echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub len: u32,
}

/// Length of a request header.
pub const REQUEST_LEN: usize = 28;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;

impl RequestHeader {
    /// Encodes the request header.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// Decodes a request header; `None` if the magic is wrong.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Option<RequestHeader> {
        (be32(b) == REQUEST_MAGIC).then(|| RequestHeader {
            flags: be16(&b[4..]),
            command: be16(&b[6..]),
            cookie: be64(&b[8..]),
            offset: be64(&b[16..]),
            len: be32(&b[24..]),
        })
    }
}

/// Encodes a simple reply header (a successful READ's data follows it).
pub fn simple_reply(cookie: u64, error: u32) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// Decodes a simple reply header: (error, cookie); `None` if the magic is wrong.
pub fn decode_simple_reply(b: &[u8; SIMPLE_REPLY_LEN]) -> Option<(u32, u64)> {
    (be32(b) == SIMPLE_REPLY_MAGIC).then(|| (be32(&b[4..]), be64(&b[8..])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_round_trips_and_starts_with_the_magic() {
        let g = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(decode_greeting(&g), Some(3));
        let mut bad = g;
        bad[0] = b'X';
        assert_eq!(decode_greeting(&bad), None);
    }

    #[test]
    fn options_and_replies_round_trip() {
        let o = encode_option(opt::GO, &encode_go_data("exp", &[info::BLOCK_SIZE]));
        let h = decode_option_header(o[..16].try_into().unwrap()).unwrap();
        assert_eq!(h.option, opt::GO);
        assert_eq!(h.len as usize, o.len() - 16);
        let (name, infos) = decode_go_data(&o[16..]).unwrap();
        assert_eq!((name, infos), (&b"exp"[..], vec![info::BLOCK_SIZE]));
        let r = encode_reply(opt::GO, rep::INFO, &encode_info_export(1 << 20, 5));
        let h = decode_reply_header(r[..20].try_into().unwrap()).unwrap();
        assert_eq!((h.option, h.reply, h.len), (opt::GO, rep::INFO, 12));
        assert_eq!(decode_info_export(&r[20..]), Some((1 << 20, 5)));
    }

    #[test]
    fn go_data_with_lying_lengths_is_refused() {
        assert_eq!(decode_go_data(&[]), None);
        assert_eq!(decode_go_data(&[0, 0, 0, 9, b'a', 0, 0]), None);
        assert_eq!(decode_go_data(&[0xff, 0xff, 0xff, 0xff, 0, 0]), None);
        // One info announced, none given.
        assert_eq!(decode_go_data(&[0, 0, 0, 0, 0, 1]), None);
        assert_eq!(decode_go_data(&[0, 0, 0, 0, 0, 0]), Some((&[][..], vec![])));
    }

    #[test]
    fn requests_and_simple_replies_round_trip() {
        let r = RequestHeader {
            flags: cflag::FUA,
            command: cmd::WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: 4096,
            len: 512,
        };
        let b = r.encode();
        assert_eq!(&b[..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(RequestHeader::decode(&b), Some(r));
        let mut bad = b;
        bad[3] ^= 1;
        assert_eq!(RequestHeader::decode(&bad), None);
        let s = simple_reply(7, err::EIO);
        assert_eq!(decode_simple_reply(&s), Some((err::EIO, 7)));
    }

    #[test]
    fn errnos_map_as_the_protocol_document_says() {
        assert_eq!(nbd_error(0), 0);
        assert_eq!(nbd_error(5), err::EIO);
        assert_eq!(nbd_error(1), err::EPERM);
        assert_eq!(nbd_error(30), err::EPERM);
        assert_eq!(nbd_error(28), err::ENOSPC);
        assert_eq!(nbd_error(122), err::ENOSPC);
        assert_eq!(nbd_error(27), err::ENOSPC);
        assert_eq!(nbd_error(22), err::EINVAL);
        assert_eq!(nbd_error(75), err::EOVERFLOW);
        assert_eq!(nbd_error(95), err::ENOTSUP);
        assert_eq!(nbd_error(2), err::EINVAL);
        assert_eq!(errno_of(err::EIO), 5);
        assert_eq!(errno_of(12345), 22);
    }
}

/// Length of a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;

/// A structured reply chunk's header: flags, type, the request's cookie and
/// the length of the payload that follows.
pub fn chunk_header(flags: u16, kind: u16, cookie: u64, len: u32) -> [u8; CHUNK_HEADER_LEN] {
    let mut b = [0u8; CHUNK_HEADER_LEN];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    b
}

/// A decoded chunk header: `(flags, type, cookie, payload length)`.
pub fn decode_chunk_header(b: &[u8; CHUNK_HEADER_LEN]) -> Option<(u16, u16, u64, u32)> {
    let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    if be32(0) != STRUCTURED_REPLY_MAGIC {
        return None;
    }
    let flags = u16::from_be_bytes([b[4], b[5]]);
    let kind = u16::from_be_bytes([b[6], b[7]]);
    let cookie = u64::from_be_bytes(b[8..16].try_into().unwrap_or([0; 8]));
    Some((flags, kind, cookie, be32(16)))
}

/// The header and offset of a single `OFFSET_DATA` chunk (the whole read,
/// `DONE`): the `len` bytes of data follow it.
pub fn offset_data(cookie: u64, offset: u64, len: u32) -> [u8; CHUNK_HEADER_LEN + 8] {
    let mut b = [0u8; CHUNK_HEADER_LEN + 8];
    b[..CHUNK_HEADER_LEN].copy_from_slice(&chunk_header(
        chunk::FLAG_DONE,
        chunk::OFFSET_DATA,
        cookie,
        len.saturating_add(8),
    ));
    b[CHUNK_HEADER_LEN..].copy_from_slice(&offset.to_be_bytes());
    b
}

/// A single `OFFSET_HOLE` chunk (the whole read reads as zeroes, `DONE`).
pub fn offset_hole(cookie: u64, offset: u64, len: u32) -> [u8; CHUNK_HEADER_LEN + 12] {
    let mut b = [0u8; CHUNK_HEADER_LEN + 12];
    b[..CHUNK_HEADER_LEN].copy_from_slice(&chunk_header(
        chunk::FLAG_DONE,
        chunk::OFFSET_HOLE,
        cookie,
        12,
    ));
    b[CHUNK_HEADER_LEN..CHUNK_HEADER_LEN + 8].copy_from_slice(&offset.to_be_bytes());
    b[CHUNK_HEADER_LEN + 8..].copy_from_slice(&len.to_be_bytes());
    b
}

/// A `DONE` chunk that ends a reply without a payload.
pub fn chunk_none(cookie: u64) -> [u8; CHUNK_HEADER_LEN] {
    chunk_header(chunk::FLAG_DONE, chunk::NONE, cookie, 0)
}

/// An `ERROR` chunk (`DONE`) with an NBD error and a message.
pub fn chunk_error(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    let m = &message.as_bytes()[..message.len().min(4096)];
    let mut b = chunk_header(chunk::FLAG_DONE, chunk::ERROR, cookie, 6 + m.len() as u32).to_vec();
    b.extend_from_slice(&error.to_be_bytes());
    b.extend_from_slice(&(m.len() as u16).to_be_bytes());
    b.extend_from_slice(m);
    b
}

/// A `BLOCK_STATUS` chunk (`DONE`) for context `id`: `(length, flags)`
/// extents.
pub fn chunk_block_status(cookie: u64, id: u32, extents: &[(u32, u32)]) -> Vec<u8> {
    let len = 4 + 8 * extents.len() as u32;
    let mut b = chunk_header(chunk::FLAG_DONE, chunk::BLOCK_STATUS, cookie, len).to_vec();
    b.extend_from_slice(&id.to_be_bytes());
    for (l, f) in extents {
        b.extend_from_slice(&l.to_be_bytes());
        b.extend_from_slice(&f.to_be_bytes());
    }
    b
}

/// The data of `LIST_META_CONTEXT` / `SET_META_CONTEXT`: an export name and
/// queries.
pub fn encode_meta_context_data(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = (export.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

/// Parses the data of a meta context option: the export name and the
/// queries, or `None` when the lengths do not add up.
pub fn decode_meta_context_data(d: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let be32 = |b: &[u8]| -> Option<usize> {
        Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize)
    };
    let n = be32(d)?;
    let name = d.get(4..4usize.checked_add(n)?)?;
    let mut rest = d.get(4 + n..)?;
    let count = be32(rest)?;
    rest = &rest[4..];
    let mut queries = Vec::new();
    for _ in 0..count {
        let l = be32(rest)?;
        queries.push(rest.get(4..4usize.checked_add(l)?)?);
        rest = &rest[4 + l..];
    }
    rest.is_empty().then_some((name, queries))
}

/// The data of a `META_CONTEXT` reply: the context's id and name.
pub fn encode_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut d = id.to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d
}

#[cfg(test)]
mod structured_tests {
    use super::*;

    #[test]
    fn chunks_encode_and_decode() {
        let h = chunk_header(chunk::FLAG_DONE, chunk::OFFSET_DATA, 7, 4104);
        assert_eq!(
            decode_chunk_header(&h),
            Some((chunk::FLAG_DONE, chunk::OFFSET_DATA, 7, 4104))
        );
        assert_eq!(decode_chunk_header(&[0; 20]), None);
        let d = offset_data(9, 4096, 4096);
        assert_eq!(
            decode_chunk_header(d[..20].try_into().unwrap()).unwrap().3,
            4104
        );
        assert_eq!(&d[20..], &4096u64.to_be_bytes());
        let o = offset_hole(9, 512, 1024);
        assert_eq!(&o[28..], &1024u32.to_be_bytes());
        let e = chunk_error(3, err::EIO, "read failed");
        assert_eq!(e.len(), 20 + 6 + 11);
        let b = chunk_block_status(3, 1, &[(4096, 0), (8192, 3)]);
        assert_eq!(b.len(), 20 + 4 + 16);
    }

    #[test]
    fn meta_context_data_round_trips_and_rejects_garbage() {
        let d = encode_meta_context_data("x", &["base:allocation", "qemu:dirty-bitmap:b"]);
        let (name, q) = decode_meta_context_data(&d).unwrap();
        assert_eq!(name, b"x");
        assert_eq!(
            q,
            vec![&b"base:allocation"[..], &b"qemu:dirty-bitmap:b"[..]]
        );
        assert!(decode_meta_context_data(&d[..d.len() - 1]).is_none());
        assert!(decode_meta_context_data(&[0, 0, 0, 9]).is_none());
        let mut long = d.clone();
        long.push(0);
        assert!(decode_meta_context_data(&long).is_none());
        assert!(decode_meta_context_data(&[0xff; 12]).is_none());
    }
}
