//! The server side, without I/O: the fixed newstyle handshake as a state
//! machine fed with the bytes received so far, and the checks every
//! transmission request passes before it reaches the device.
//!
//! Hostile input never panics and never makes the server allocate more than
//! [`MAX_OPTION_LEN`] for an option: a malformed handshake gets an error
//! reply where the protocol allows one, otherwise the connection is closed.

use crate::wire::{self, cflag, cmd, err, opt, rep, tflag};

/// The longest option data accepted (names are at most 4096 bytes).
pub const MAX_OPTION_LEN: u32 = 8192;
/// The most options one connection may send before the handshake ends.
pub const MAX_OPTIONS: u32 = 64;

/// What is exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    /// The export's name; a client asking for `""` gets it too.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Refuse writes (`EPERM`).
    pub read_only: bool,
    /// The largest READ or WRITE payload accepted.
    pub max_payload: u32,
}

/// What a connection negotiated in its handshake, for the transmission
/// phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Session {
    /// Structured replies (`NBD_OPT_STRUCTURED_REPLY`): reads and block
    /// status are answered in chunks.
    pub structured: bool,
    /// The id under which `base:allocation` was selected
    /// (`NBD_OPT_SET_META_CONTEXT`), if it was: `NBD_CMD_BLOCK_STATUS` is
    /// allowed.
    pub base_allocation: Option<u32>,
}

/// The id this server gives `base:allocation`.
pub const BASE_ALLOCATION_ID: u32 = 1;

impl Export {
    /// The transmission flags this server sends (without structured
    /// replies: see [`Export::flags_for`]).
    pub fn flags(&self) -> u16 {
        self.flags_for(&Session::default())
    }

    /// The transmission flags for a session: `SEND_DF` only with structured
    /// replies.
    pub fn flags_for(&self, session: &Session) -> u16 {
        let mut f = tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::CAN_MULTI_CONN;
        if session.structured {
            f |= tflag::SEND_DF;
        }
        if self.read_only {
            f |= tflag::READ_ONLY;
        } else {
            f |= tflag::SEND_FUA | tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES;
        }
        f
    }

    fn knows(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }
}

/// One step of the handshake.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing decided: call again with at least this many bytes.
    NeedMore(usize),
    /// `consumed` input bytes are done with; send `reply` and go on.
    Reply {
        /// Input bytes used up.
        consumed: usize,
        /// Bytes to send.
        reply: Vec<u8>,
    },
    /// Send `reply`; the transmission phase starts after the consumed bytes.
    Transmission {
        /// Input bytes used up.
        consumed: usize,
        /// Bytes to send.
        reply: Vec<u8>,
    },
    /// Send `reply` (possibly empty) and close the connection.
    Close {
        /// Bytes to send.
        reply: Vec<u8>,
        /// Why, for the log.
        reason: &'static str,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    ClientFlags,
    Options,
    Done,
}

/// The server's handshake: [`Handshake::new`] gives the greeting to send,
/// then [`Handshake::step`] is fed the bytes received (not yet consumed).
#[derive(Debug)]
pub struct Handshake {
    export: Export,
    state: State,
    no_zeroes: bool,
    options: u32,
    session: Session,
}

impl Handshake {
    /// A handshake for `export`, and the greeting to send first.
    pub fn new(export: Export) -> (Handshake, [u8; 18]) {
        let g = wire::greeting(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES);
        (
            Handshake {
                export,
                state: State::ClientFlags,
                no_zeroes: false,
                options: 0,
                session: Session::default(),
            },
            g,
        )
    }

    /// What the handshake negotiated (complete once it says
    /// [`Step::Transmission`]).
    pub fn session(&self) -> Session {
        self.session
    }

    /// Decides what to do with `input`, the bytes received and not yet consumed.
    pub fn step(&mut self, input: &[u8]) -> Step {
        match self.state {
            State::Done => Step::Close {
                reply: Vec::new(),
                reason: "handshake already over",
            },
            State::ClientFlags => {
                if input.len() < 4 {
                    return Step::NeedMore(4);
                }
                let f = u32::from_be_bytes([input[0], input[1], input[2], input[3]]);
                let known = wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES;
                if f & !known != 0 {
                    // The document: a server MUST close on unknown client flags.
                    return self.close("unknown client flags");
                }
                if f & wire::FLAG_C_FIXED_NEWSTYLE == 0 {
                    return self.close("client does not speak fixed newstyle");
                }
                self.no_zeroes = f & wire::FLAG_C_NO_ZEROES != 0;
                self.state = State::Options;
                Step::Reply {
                    consumed: 4,
                    reply: Vec::new(),
                }
            }
            State::Options => self.option(input),
        }
    }

    fn close(&mut self, reason: &'static str) -> Step {
        self.state = State::Done;
        Step::Close {
            reply: Vec::new(),
            reason,
        }
    }

    fn option(&mut self, input: &[u8]) -> Step {
        let Some(head) = input.get(..wire::OPTION_HEADER_LEN) else {
            return Step::NeedMore(wire::OPTION_HEADER_LEN);
        };
        let Some(h) = wire::decode_option_header(head.try_into().unwrap_or(&[0; 16])) else {
            return self.close("bad option magic");
        };
        if h.len > MAX_OPTION_LEN {
            // The data cannot be skipped without reading it all: refuse and close.
            self.state = State::Done;
            return Step::Close {
                reply: wire::encode_reply(h.option, rep::ERR_TOO_BIG, b"option too long"),
                reason: "option too long",
            };
        }
        let total = wire::OPTION_HEADER_LEN + h.len as usize;
        let Some(data) = input.get(wire::OPTION_HEADER_LEN..total) else {
            return Step::NeedMore(total);
        };
        self.options += 1;
        if self.options > MAX_OPTIONS {
            return self.close("too many options");
        }
        let reply = |r: u32, d: &[u8]| wire::encode_reply(h.option, r, d);
        let step = |reply: Vec<u8>| Step::Reply {
            consumed: total,
            reply,
        };
        match h.option {
            opt::EXPORT_NAME => {
                if !self.export.knows(data) {
                    // No error reply exists for EXPORT_NAME: close.
                    return self.close("unknown export");
                }
                self.state = State::Done;
                let mut r = Vec::with_capacity(134);
                r.extend_from_slice(&self.export.size.to_be_bytes());
                r.extend_from_slice(&self.export.flags_for(&self.session).to_be_bytes());
                if !self.no_zeroes {
                    r.extend_from_slice(&[0u8; 124]);
                }
                Step::Transmission {
                    consumed: total,
                    reply: r,
                }
            }
            opt::ABORT => {
                self.state = State::Done;
                Step::Close {
                    reply: reply(rep::ACK, &[]),
                    reason: "client aborted",
                }
            }
            opt::LIST => {
                if !data.is_empty() {
                    return step(reply(rep::ERR_INVALID, b"LIST takes no data"));
                }
                let name = self.export.name.as_bytes();
                let mut d = (name.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(name);
                let mut r = reply(rep::SERVER, &d);
                r.extend(reply(rep::ACK, &[]));
                step(r)
            }
            opt::INFO | opt::GO => {
                let Some((name, infos)) = wire::decode_go_data(data) else {
                    return step(reply(rep::ERR_INVALID, b"malformed request"));
                };
                if !self.export.knows(name) {
                    return step(reply(rep::ERR_UNKNOWN, b"no such export"));
                }
                let _ = infos; // Both informations are always sent.
                let mut r = reply(
                    rep::INFO,
                    &wire::encode_info_export(
                        self.export.size,
                        self.export.flags_for(&self.session),
                    ),
                );
                r.extend(reply(
                    rep::INFO,
                    &wire::encode_info_block_size(1, 4096, self.export.max_payload),
                ));
                r.extend(reply(rep::ACK, &[]));
                if h.option == opt::GO {
                    self.state = State::Done;
                    Step::Transmission {
                        consumed: total,
                        reply: r,
                    }
                } else {
                    step(r)
                }
            }
            opt::STRUCTURED_REPLY => {
                if !data.is_empty() {
                    return step(reply(rep::ERR_INVALID, b"STRUCTURED_REPLY takes no data"));
                }
                self.session.structured = true;
                step(reply(rep::ACK, &[]))
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                let set = h.option == opt::SET_META_CONTEXT;
                if !self.session.structured {
                    return step(reply(
                        rep::ERR_INVALID,
                        b"negotiate structured replies first",
                    ));
                }
                let Some((name, queries)) = wire::decode_meta_context_data(data) else {
                    return step(reply(rep::ERR_INVALID, b"malformed request"));
                };
                if !self.export.knows(name) {
                    return step(reply(rep::ERR_UNKNOWN, b"no such export"));
                }
                // `base:allocation` is the one context: a query names it,
                // or (listing only) its namespace, or nothing at all.
                let ours = wire::BASE_ALLOCATION.as_bytes();
                let chosen = queries.contains(&ours)
                    || (!set && (queries.is_empty() || queries.iter().any(|q| *q == b"base:")));
                let mut r = Vec::new();
                if chosen {
                    r = reply(
                        rep::META_CONTEXT,
                        &wire::encode_meta_context(BASE_ALLOCATION_ID, wire::BASE_ALLOCATION),
                    );
                }
                if set {
                    self.session.base_allocation = chosen.then_some(BASE_ALLOCATION_ID);
                }
                r.extend(reply(rep::ACK, &[]));
                step(r)
            }
            // STARTTLS, extended headers, anything else: not supported, and
            // the client may go on.
            _ => step(reply(rep::ERR_UNSUP, b"not supported")),
        }
    }
}

/// What to do with a transmission request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Read `len` bytes at `offset` and reply with them.
    Read {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u32,
    },
    /// Read the `len`-byte payload, write it at `offset` (then flush if `fua`).
    Write {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u32,
        /// Flush before replying.
        fua: bool,
    },
    /// Write zeroes (then flush if `fua`).
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u32,
        /// Flush before replying.
        fua: bool,
    },
    /// Flush.
    Flush,
    /// Trim: advisory, answered without touching the device.
    Trim,
    /// Report `base:allocation` extents from `offset` (one is enough with
    /// `one`).
    BlockStatus {
        /// Byte offset.
        offset: u64,
        /// Byte length (non-zero).
        len: u32,
        /// `REQ_ONE`: a single extent.
        one: bool,
    },
    /// Close the connection (no reply).
    Disconnect,
    /// Reply with this NBD error after reading and dropping `skip` payload bytes.
    Error {
        /// NBD error value.
        error: u32,
        /// Payload bytes to consume first.
        skip: u32,
    },
    /// Reply with this NBD error and close: the payload cannot be consumed.
    ErrorClose {
        /// NBD error value.
        error: u32,
    },
}

/// Checks a request against `export` and what the `session` negotiated, as
/// the protocol document asks: an unknown command or flag is `EINVAL`, a
/// write on a read-only export `EPERM`, a read, trim or block status past
/// the end `EINVAL`, a write past the end `ENOSPC`, a payload over the
/// maximum `EINVAL` (and the connection closes for a write, whose payload is
/// not read), block status without `base:allocation` negotiated `EINVAL`.
pub fn check(export: &Export, session: &Session, r: &wire::RequestHeader) -> Decision {
    let writes = matches!(r.command, cmd::WRITE | cmd::WRITE_ZEROES | cmd::TRIM);
    let skip = if r.command == cmd::WRITE { r.len } else { 0 };
    let fail = |error| {
        if skip > export.max_payload {
            Decision::ErrorClose { error }
        } else {
            Decision::Error { error, skip }
        }
    };
    let allowed = match r.command {
        cmd::WRITE | cmd::TRIM => cflag::FUA,
        cmd::WRITE_ZEROES => cflag::FUA | cflag::NO_HOLE,
        cmd::READ if session.structured => cflag::DF,
        cmd::BLOCK_STATUS => cflag::REQ_ONE,
        cmd::READ | cmd::FLUSH | cmd::DISC => 0,
        _ => return fail(err::EINVAL),
    };
    if r.flags & !allowed != 0 {
        return fail(err::EINVAL);
    }
    if r.command == cmd::DISC {
        return Decision::Disconnect;
    }
    if r.command == cmd::FLUSH {
        return Decision::Flush;
    }
    if r.command == cmd::BLOCK_STATUS && (session.base_allocation.is_none() || r.len == 0) {
        // The document: a client MUST NOT ask without a context selected;
        // servers SHOULD say EINVAL.
        return fail(err::EINVAL);
    }
    if writes && export.read_only {
        return fail(err::EPERM);
    }
    if matches!(r.command, cmd::READ | cmd::WRITE) && r.len > export.max_payload {
        return fail(err::EINVAL);
    }
    let past_end = r
        .offset
        .checked_add(u64::from(r.len))
        .is_none_or(|end| end > export.size);
    if past_end {
        // Reads, trims and block status past the end are EINVAL, writes ENOSPC.
        let grows = matches!(r.command, cmd::WRITE | cmd::WRITE_ZEROES);
        return fail(if grows { err::ENOSPC } else { err::EINVAL });
    }
    let fua = r.flags & cflag::FUA != 0;
    let (offset, len) = (r.offset, r.len);
    match r.command {
        cmd::READ => Decision::Read { offset, len },
        cmd::WRITE => Decision::Write { offset, len, fua },
        cmd::WRITE_ZEROES => Decision::WriteZeroes { offset, len, fua },
        cmd::BLOCK_STATUS => Decision::BlockStatus {
            offset,
            len,
            one: r.flags & cflag::REQ_ONE != 0,
        },
        _ => Decision::Trim,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{RequestHeader, info};

    fn export() -> Export {
        Export {
            name: "q".into(),
            size: 1 << 20,
            read_only: false,
            max_payload: 1 << 16,
        }
    }

    fn started() -> Handshake {
        let (mut h, g) = Handshake::new(export());
        assert_eq!(wire::decode_greeting(&g), Some(3));
        assert_eq!(h.step(&[0, 0]), Step::NeedMore(4));
        assert_eq!(
            h.step(&[0, 0, 0, 3]),
            Step::Reply {
                consumed: 4,
                reply: vec![]
            }
        );
        h
    }

    /// Splits a reply stream into (option, type, data).
    fn replies(mut b: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let h = wire::decode_reply_header(b[..20].try_into().unwrap()).unwrap();
            out.push((h.option, h.reply, b[20..20 + h.len as usize].to_vec()));
            b = &b[20 + h.len as usize..];
        }
        out
    }

    #[test]
    fn go_sends_size_flags_block_size_and_ends_the_handshake() {
        let mut h = started();
        let o = wire::encode_option(opt::GO, &wire::encode_go_data("", &[]));
        assert_eq!(h.step(&o[..10]), Step::NeedMore(16));
        assert_eq!(h.step(&o[..17]), Step::NeedMore(o.len()));
        let Step::Transmission { consumed, reply } = h.step(&o) else {
            panic!("not transmission")
        };
        assert_eq!(consumed, o.len());
        let r = replies(&reply);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].1, rep::INFO);
        assert_eq!(
            wire::decode_info_export(&r[0].2),
            Some((1 << 20, export().flags()))
        );
        assert_eq!(r[1].1, rep::INFO);
        assert_eq!(r[2], (opt::GO, rep::ACK, vec![]));
        assert!(matches!(h.step(&[0; 64]), Step::Close { .. }));
    }

    #[test]
    fn info_list_and_unsupported_options_keep_the_handshake_going() {
        let mut h = started();
        let o = wire::encode_option(opt::INFO, &wire::encode_go_data("q", &[info::BLOCK_SIZE]));
        let Step::Reply { reply, .. } = h.step(&o) else {
            panic!()
        };
        assert_eq!(replies(&reply).last().unwrap().1, rep::ACK);
        let o = wire::encode_option(opt::LIST, &[]);
        let Step::Reply { reply, .. } = h.step(&o) else {
            panic!()
        };
        let r = replies(&reply);
        assert_eq!(r[0], (opt::LIST, rep::SERVER, vec![0, 0, 0, 1, b'q']));
        assert_eq!(r[1].1, rep::ACK);
        for o in [opt::STARTTLS, opt::EXTENDED_HEADERS, 0xdead] {
            let Step::Reply { reply, .. } = h.step(&wire::encode_option(o, &[])) else {
                panic!()
            };
            assert_eq!(replies(&reply)[0].1, rep::ERR_UNSUP);
        }
        let o = wire::encode_option(opt::GO, &wire::encode_go_data("other", &[]));
        let Step::Reply { reply, .. } = h.step(&o) else {
            panic!()
        };
        assert_eq!(replies(&reply)[0].1, rep::ERR_UNKNOWN);
        let o = wire::encode_option(opt::GO, &[0, 0, 0, 50]);
        let Step::Reply { reply, .. } = h.step(&o) else {
            panic!()
        };
        assert_eq!(replies(&reply)[0].1, rep::ERR_INVALID);
    }

    #[test]
    fn export_name_replies_with_or_without_zeroes() {
        for (flags, len) in [(1u32, 134), (3, 10)] {
            let (mut h, _) = Handshake::new(export());
            h.step(&flags.to_be_bytes());
            let o = wire::encode_option(opt::EXPORT_NAME, b"q");
            let Step::Transmission { reply, .. } = h.step(&o) else {
                panic!()
            };
            assert_eq!(reply.len(), len);
            assert_eq!(&reply[..8], &(1u64 << 20).to_be_bytes());
        }
        let mut h = started();
        let o = wire::encode_option(opt::EXPORT_NAME, b"nope");
        assert!(matches!(h.step(&o), Step::Close { .. }));
    }

    #[test]
    fn hostile_handshakes_close_without_reading_much() {
        // Unknown client flags, and a client without fixed newstyle.
        for f in [[0, 0, 0, 4], [0, 0, 0, 0], [0xff; 4]] {
            let (mut h, _) = Handshake::new(export());
            assert!(matches!(h.step(&f), Step::Close { .. }), "{f:?}");
        }
        // Bad option magic.
        let mut h = started();
        assert!(matches!(h.step(&[0x41; 16]), Step::Close { .. }));
        // A huge option length: refused at once, never waited for.
        let mut h = started();
        let mut o = wire::encode_option(opt::GO, &[]);
        o[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        let Step::Close { reply, .. } = h.step(&o) else {
            panic!()
        };
        assert_eq!(replies(&reply)[0].1, rep::ERR_TOO_BIG);
        // Endless options.
        let mut h = started();
        let o = wire::encode_option(opt::STRUCTURED_REPLY, &[]);
        let mut closed = false;
        for _ in 0..=MAX_OPTIONS {
            if let Step::Close { .. } = h.step(&o) {
                closed = true;
                break;
            }
        }
        assert!(closed);
        // Abort is acknowledged, then the connection closes.
        let mut h = started();
        let Step::Close { reply, .. } = h.step(&wire::encode_option(opt::ABORT, &[])) else {
            panic!()
        };
        assert_eq!(replies(&reply)[0].1, rep::ACK);
    }

    #[test]
    fn every_byte_string_is_handled_without_panic() {
        // A small deterministic fuzz: random prefixes of valid and invalid streams.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let (mut h, _) = Handshake::new(export());
            let mut buf = Vec::new();
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push((x & 0xff) as u8);
            }
            if x & 1 == 0 {
                buf.splice(0..0, [0, 0, 0, 3]);
            }
            if x & 2 == 0 {
                buf.splice(4..4, wire::IHAVEOPT.to_be_bytes());
            }
            let mut pos = 0;
            for _ in 0..100 {
                match h.step(&buf[pos..]) {
                    Step::NeedMore(n) => {
                        assert!(n <= 16 + MAX_OPTION_LEN as usize);
                        break;
                    }
                    Step::Reply { consumed, .. } => pos += consumed,
                    Step::Transmission { .. } | Step::Close { .. } => break,
                }
            }
        }
    }

    fn req(command: u16, flags: u16, offset: u64, len: u32) -> RequestHeader {
        RequestHeader {
            flags,
            command,
            cookie: 1,
            offset,
            len,
        }
    }

    #[test]
    fn requests_are_checked_as_the_document_asks() {
        let e = export();
        assert_eq!(
            check(&e, &Session::default(), &req(cmd::READ, 0, 0, 512)),
            Decision::Read {
                offset: 0,
                len: 512
            }
        );
        assert_eq!(
            check(
                &e,
                &Session::default(),
                &req(cmd::WRITE, cflag::FUA, 512, 512)
            ),
            Decision::Write {
                offset: 512,
                len: 512,
                fua: true
            }
        );
        assert_eq!(
            check(&e, &Session::default(), &req(cmd::FLUSH, 0, 0, 0)),
            Decision::Flush
        );
        assert_eq!(
            check(&e, &Session::default(), &req(cmd::DISC, 0, 0, 0)),
            Decision::Disconnect
        );
        assert_eq!(
            check(&e, &Session::default(), &req(cmd::TRIM, 0, 0, 4096)),
            Decision::Trim
        );
        // Past the end: reads EINVAL, writes ENOSPC (payload skipped).
        let end = 1 << 20;
        assert_eq!(
            check(&e, &Session::default(), &req(cmd::READ, 0, end, 1)),
            Decision::Error {
                error: err::EINVAL,
                skip: 0
            }
        );
        assert_eq!(
            check(&e, &Session::default(), &req(cmd::WRITE, 0, end - 1, 2)),
            Decision::Error {
                error: err::ENOSPC,
                skip: 2
            }
        );
        assert_eq!(
            check(
                &e,
                &Session::default(),
                &req(cmd::WRITE_ZEROES, 0, u64::MAX, 2)
            ),
            Decision::Error {
                error: err::ENOSPC,
                skip: 0
            }
        );
        assert_eq!(
            check(&e, &Session::default(), &req(cmd::TRIM, 0, end, 4096)),
            Decision::Error {
                error: err::EINVAL,
                skip: 0
            }
        );
        // Oversize: a read is refused, a write closes (its payload is not read).
        assert_eq!(
            check(&e, &Session::default(), &req(cmd::READ, 0, 0, 1 << 17)),
            Decision::Error {
                error: err::EINVAL,
                skip: 0
            }
        );
        assert_eq!(
            check(&e, &Session::default(), &req(cmd::WRITE, 0, 0, u32::MAX)),
            Decision::ErrorClose { error: err::EINVAL }
        );
        // Unknown commands and flags.
        assert_eq!(
            check(&e, &Session::default(), &req(99, 0, 0, 0)),
            Decision::Error {
                error: err::EINVAL,
                skip: 0
            }
        );
        assert_eq!(
            check(&e, &Session::default(), &req(cmd::READ, cflag::FUA, 0, 1)),
            Decision::Error {
                error: err::EINVAL,
                skip: 0
            }
        );
        assert_eq!(
            check(&e, &Session::default(), &req(cmd::WRITE, 0x8000, 0, 4)),
            Decision::Error {
                error: err::EINVAL,
                skip: 4
            }
        );
        // Read-only.
        let ro = Export {
            read_only: true,
            ..export()
        };
        assert_eq!(
            check(&ro, &Session::default(), &req(cmd::WRITE, 0, 0, 4)),
            Decision::Error {
                error: err::EPERM,
                skip: 4
            }
        );
        assert_eq!(ro.flags() & tflag::READ_ONLY, tflag::READ_ONLY);
        assert_eq!(ro.flags() & tflag::SEND_WRITE_ZEROES, 0);
    }
}

#[cfg(test)]
mod session_tests {
    use super::*;
    use crate::wire::RequestHeader;

    fn export() -> Export {
        Export {
            name: "q".into(),
            size: 1 << 20,
            read_only: false,
            max_payload: 1 << 16,
        }
    }

    fn replies(mut b: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let h = wire::decode_reply_header(b[..20].try_into().unwrap()).unwrap();
            out.push((h.option, h.reply, b[20..20 + h.len as usize].to_vec()));
            b = &b[20 + h.len as usize..];
        }
        out
    }

    fn option(h: &mut Handshake, o: u32, data: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        match h.step(&wire::encode_option(o, data)) {
            Step::Reply { reply, .. } => replies(&reply),
            other => panic!("{other:?}"),
        }
    }

    fn started() -> Handshake {
        let (mut h, _) = Handshake::new(export());
        h.step(&[0, 0, 0, 3]);
        h
    }

    #[test]
    fn structured_replies_then_base_allocation_are_negotiated() {
        let mut h = started();
        let meta = wire::encode_meta_context_data("q", &["base:allocation"]);
        // Meta contexts need structured replies first.
        assert_eq!(
            option(&mut h, opt::SET_META_CONTEXT, &meta)[0].1,
            rep::ERR_INVALID
        );
        assert_eq!(option(&mut h, opt::STRUCTURED_REPLY, &[])[0].1, rep::ACK);
        // Listing with no query, or the namespace, shows it; another
        // namespace does not.
        let all = wire::encode_meta_context_data("", &[]);
        let r = option(&mut h, opt::LIST_META_CONTEXT, &all);
        assert_eq!(r[0].1, rep::META_CONTEXT);
        assert_eq!(&r[0].2[4..], b"base:allocation");
        assert_eq!(r[1].1, rep::ACK);
        let other = wire::encode_meta_context_data("q", &["qemu:dirty-bitmap:x"]);
        assert_eq!(option(&mut h, opt::LIST_META_CONTEXT, &other).len(), 1);
        assert_eq!(h.session().base_allocation, None, "listing selects nothing");
        let r = option(&mut h, opt::SET_META_CONTEXT, &meta);
        assert_eq!(r[0].1, rep::META_CONTEXT);
        assert_eq!(r[0].2[..4], BASE_ALLOCATION_ID.to_be_bytes());
        assert_eq!(h.session().base_allocation, Some(BASE_ALLOCATION_ID));
        // A later SET replaces the selection.
        option(&mut h, opt::SET_META_CONTEXT, &other);
        assert_eq!(h.session().base_allocation, None);
        // Garbage, and an unknown export.
        assert_eq!(
            option(&mut h, opt::SET_META_CONTEXT, &[0, 0])[0].1,
            rep::ERR_INVALID
        );
        let unknown = wire::encode_meta_context_data("nope", &["base:allocation"]);
        assert_eq!(
            option(&mut h, opt::SET_META_CONTEXT, &unknown)[0].1,
            rep::ERR_UNKNOWN
        );
        assert_eq!(
            option(&mut h, opt::STRUCTURED_REPLY, &[1])[0].1,
            rep::ERR_INVALID
        );
        // GO: the flags now say DF.
        let Step::Transmission { reply, .. } = h.step(&wire::encode_option(
            opt::GO,
            &wire::encode_go_data("", &[]),
        )) else {
            panic!("not transmission")
        };
        let (_, flags) = wire::decode_info_export(&replies(&reply)[0].2).unwrap();
        assert_ne!(flags & tflag::SEND_DF, 0);
        assert!(h.session().structured);
    }

    fn req(command: u16, flags: u16, offset: u64, len: u32) -> RequestHeader {
        RequestHeader {
            flags,
            command,
            cookie: 1,
            offset,
            len,
        }
    }

    #[test]
    fn block_status_and_df_need_what_they_need() {
        let e = export();
        let plain = Session::default();
        let structured = Session {
            structured: true,
            base_allocation: None,
        };
        let full = Session {
            structured: true,
            base_allocation: Some(BASE_ALLOCATION_ID),
        };
        let einval = Decision::Error {
            error: err::EINVAL,
            skip: 0,
        };
        let bs = req(cmd::BLOCK_STATUS, 0, 0, 4096);
        assert_eq!(check(&e, &plain, &bs), einval, "not negotiated");
        assert_eq!(check(&e, &structured, &bs), einval, "no context selected");
        assert_eq!(
            check(&e, &full, &bs),
            Decision::BlockStatus {
                offset: 0,
                len: 4096,
                one: false
            }
        );
        assert_eq!(
            check(&e, &full, &req(cmd::BLOCK_STATUS, cflag::REQ_ONE, 4096, 1)),
            Decision::BlockStatus {
                offset: 4096,
                len: 1,
                one: true
            }
        );
        assert_eq!(
            check(&e, &full, &req(cmd::BLOCK_STATUS, 0, 1 << 20, 1)),
            einval,
            "past the end"
        );
        assert_eq!(
            check(&e, &full, &req(cmd::BLOCK_STATUS, 0, 0, 0)),
            einval,
            "empty"
        );
        assert_eq!(
            check(&e, &full, &req(cmd::BLOCK_STATUS, cflag::FUA, 0, 1)),
            einval
        );
        // DF only with structured replies.
        assert_eq!(
            check(&e, &plain, &req(cmd::READ, cflag::DF, 0, 512)),
            einval
        );
        assert_eq!(
            check(&e, &structured, &req(cmd::READ, cflag::DF, 0, 512)),
            Decision::Read {
                offset: 0,
                len: 512
            }
        );
    }
}
