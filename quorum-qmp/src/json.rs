//! JSON written as QEMU writes it (`qobject/json-writer.c`, compact mode):
//! `": "` after a key, `", "` between members and elements, strings with
//! only printable ASCII left as is and everything else escaped, `\uXXXX`
//! in upper case. Replies and events then match QEMU's byte for byte, given
//! the members in QEMU's order (`serde_json`'s `preserve_order`).

use std::io;

use serde::Serialize;
use serde_json::Value;
use serde_json::ser::{CharEscape, Formatter, Serializer};

/// QEMU's compact JSON style.
#[derive(Clone, Copy, Debug, Default)]
pub struct QemuFormatter;

impl Formatter for QemuFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if (' '..='~').contains(&c) {
                continue;
            }
            w.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                write!(w, "\\u{u:04X}")?;
            }
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        let s: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(b) => return write!(w, "\\u{:04X}", b),
        };
        w.write_all(s)
    }
}

/// `v` as one line of QEMU's JSON (no newline).
pub fn to_line(v: &Value) -> String {
    let mut out = Vec::new();
    let mut ser = Serializer::with_formatter(&mut out, QemuFormatter);
    // Writing a `Value` into a `Vec` cannot fail.
    let _ = v.serialize(&mut ser);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spacing_and_order_are_qemus() {
        let v = json!({"return": {"b": [1, 2, {}], "a": []}, "id": "x"});
        assert_eq!(
            to_line(&v),
            r#"{"return": {"b": [1, 2, {}], "a": []}, "id": "x"}"#
        );
    }

    #[test]
    fn strings_are_escaped_as_qemu_does() {
        let v = json!("a\"b\\c/d\n\u{1}\u{7f}é😀");
        assert_eq!(
            to_line(&v),
            r#""a\"b\\c/d\n\u0001\u007F\u00E9\uD83D\uDE00""#
        );
    }
}
