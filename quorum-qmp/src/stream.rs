//! Framing: QMP is a stream of JSON values, not of lines. A message ends
//! where its braces balance (a newline is only whitespace; two objects on
//! a line are two messages), as QEMU's JSON streamer has it. This only
//! finds where each value ends — serde_json parses it — and enforces
//! QEMU's limits: nesting deeper than 1024, or a message over
//! [`MAX_MESSAGE`] bytes, is an error and the rest of that value is
//! skipped.

/// The largest message (QEMU allows 64 MiB per token).
pub const MAX_MESSAGE: usize = 64 << 20;

/// QEMU's deepest nesting of objects and arrays.
pub const MAX_NESTING: usize = 1024;

/// What the splitter found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// One complete top-level value's text.
    Message(String),
    /// A framing error, reported as QEMU words it.
    Error(&'static str),
}

/// Splits a byte stream into top-level JSON values.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: Vec<u8>,
    depth: usize,
    /// Inside a string opened by this quote byte.
    quote: Option<u8>,
    escaped: bool,
    /// Inside a top-level scalar (a number, a keyword, garbage).
    scalar: bool,
    /// Skipping the rest of a value that broke a limit.
    skipping: bool,
}

impl Splitter {
    /// Nothing buffered.
    pub fn new() -> Splitter {
        Splitter::default()
    }

    /// Feeds `bytes`; the pieces they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Piece> {
        let mut out = Vec::new();
        for &b in bytes {
            self.byte(b, &mut out);
        }
        out
    }

    fn emit(&mut self, out: &mut Vec<Piece>) {
        let text = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        if !self.skipping {
            out.push(Piece::Message(text));
        }
        self.skipping = false;
    }

    fn byte(&mut self, b: u8, out: &mut Vec<Piece>) {
        if let Some(q) = self.quote {
            self.push(b, out);
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == q {
                self.quote = None;
                if self.depth == 0 {
                    self.emit(out);
                }
            }
            return;
        }
        if self.scalar {
            let ends = b.is_ascii_whitespace() || b"{}[]:,\"'".contains(&b);
            if !ends {
                self.push(b, out);
                return;
            }
            self.scalar = false;
            self.emit(out);
        }
        match b {
            b'"' | b'\'' => {
                self.quote = Some(b);
                self.push(b, out);
            }
            b'{' | b'[' => {
                self.depth += 1;
                if self.depth > MAX_NESTING && !self.skipping {
                    self.skipping = true;
                    out.push(Piece::Error("JSON nesting depth limit exceeded"));
                }
                self.push(b, out);
            }
            b'}' | b']' if self.depth == 0 => {
                out.push(Piece::Message(String::from(b as char)));
            }
            b'}' | b']' => {
                self.depth -= 1;
                self.push(b, out);
                if self.depth == 0 {
                    self.emit(out);
                }
            }
            _ if self.depth > 0 => self.push(b, out),
            _ if b.is_ascii_whitespace() => {}
            b':' | b',' => out.push(Piece::Message(String::from(b as char))),
            _ => {
                self.scalar = true;
                self.push(b, out);
            }
        }
    }

    fn push(&mut self, b: u8, out: &mut Vec<Piece>) {
        if self.skipping {
            return;
        }
        if self.buf.len() >= MAX_MESSAGE {
            self.buf = Vec::new();
            self.skipping = true;
            out.push(Piece::Error("JSON token size limit exceeded"));
            return;
        }
        self.buf.push(b);
    }

    /// Bytes held for an unfinished message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(p: Vec<Piece>) -> Vec<String> {
        p.into_iter()
            .map(|x| match x {
                Piece::Message(m) => m,
                Piece::Error(e) => format!("ERROR {e}"),
            })
            .collect()
    }

    #[test]
    fn values_end_where_braces_balance_not_at_newlines() {
        let mut s = Splitter::new();
        assert!(s.feed(b"{\"execute\": \n").is_empty());
        assert_eq!(
            msgs(s.feed(b"\"q\"}{\"a\": \"}\\\"{\"}\n")),
            ["{\"execute\": \n\"q\"}", "{\"a\": \"}\\\"{\"}"]
        );
        assert_eq!(
            msgs(s.feed(b"[1,2] 1 null \"x\" } ")),
            ["[1,2]", "1", "null", "\"x\"", "}"]
        );
        assert_eq!(msgs(s.feed(b"\n\n  \r\n")), Vec::<String>::new());
    }

    #[test]
    fn too_deep_is_one_error_and_the_value_is_skipped() {
        let mut s = Splitter::new();
        let mut v = b"{\"a\":".to_vec();
        v.extend(std::iter::repeat_n(b'[', 1100));
        v.extend(std::iter::repeat_n(b']', 1100));
        v.extend(b"}{\"execute\":\"x\"}");
        assert_eq!(
            msgs(s.feed(&v)),
            [
                "ERROR JSON nesting depth limit exceeded",
                "{\"execute\":\"x\"}"
            ]
        );
    }
}
