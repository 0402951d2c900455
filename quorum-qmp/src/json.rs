//! JSON written as QEMU writes it (`qobject/json-writer.c`, compact mode):
//! `": "` after a key, `", "` between members and elements, strings with
//! only printable ASCII left as is and everything else escaped, `\uXXXX`
//! in upper case, numbers that are not integers as C's `%.17g`, and object
//! members in the order QEMU's `QDict` iterates them: by bucket of its
//! 512-bucket hash table (`tdb_hash`), the last inserted first within a
//! bucket. Build objects inserting members in the order QEMU's code puts
//! them (`serde_json`'s `preserve_order` keeps it); [`to_line`] does the
//! rest, so replies, events and echoed ids match QEMU's byte for byte.

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

    fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, v: f64) -> io::Result<()> {
        w.write_all(g17(v).as_bytes())
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
    let v = qdict_order(v);
    let mut out = Vec::new();
    let mut ser = Serializer::with_formatter(&mut out, QemuFormatter);
    // Writing a `Value` into a `Vec` cannot fail.
    let _ = v.serialize(&mut ser);
    String::from_utf8(out).unwrap_or_default()
}

/// QEMU's `tdb_hash` of a key (`qobject/qdict.c`).
pub fn tdb_hash(key: &str) -> u32 {
    let b = key.as_bytes();
    let mut value = 0x238F_13AFu32.wrapping_mul(b.len() as u32);
    for (i, &ch) in b.iter().enumerate() {
        value = value.wrapping_add(u32::from(ch) << ((i * 5) % 24));
    }
    1_103_515_243u32.wrapping_mul(value).wrapping_add(12345)
}

/// The keys of an object, given in insertion order, in the order QEMU
/// iterates them: by bucket (`tdb_hash % 512`), the last inserted first
/// within a bucket.
pub fn qemu_key_order<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
    let mut k: Vec<(u32, usize, &String)> = keys
        .enumerate()
        .map(|(i, k)| (tdb_hash(k) % 512, i, k))
        .collect();
    k.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    k.into_iter().map(|x| x.2).collect()
}

/// `v` with every object's members in QEMU's order.
fn qdict_order(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for k in qemu_key_order(m.keys()) {
                out.insert(k.clone(), qdict_order(&m[k]));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(qdict_order).collect()),
        other => other.clone(),
    }
}

/// C's `%.17g` of `v`, as QEMU writes a JSON number that is not an
/// integer: 17 significant digits, trailing zeros dropped, an exponent
/// when it is below -4 or at least 17.
fn g17(v: f64) -> String {
    if !v.is_finite() {
        // QEMU refuses to write these; JSON has no way to say them.
        return "null".into();
    }
    if v == 0.0 {
        return if v.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    let sci = format!("{:.16e}", v);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if !(-4..17).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    } else {
        let decimals = (16 - exp).max(0) as usize;
        trim(&format!("{:.*}", decimals, v))
    }
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
            r#"{"return": {"a": [], "b": [1, 2, {}]}, "id": "x"}"#
        );
        // qemu-storage-daemon echoed {"k": "v", "n": {}} as this.
        let id = json!({"k": "v", "n": {}});
        assert_eq!(to_line(&id), r#"{"n": {}, "k": "v"}"#);
        // One bucket for micro and minor: the last inserted first.
        let ver = json!({"major": 10, "minor": 0, "micro": 2});
        assert_eq!(to_line(&ver), r#"{"micro": 2, "minor": 0, "major": 10}"#);
    }

    #[test]
    fn numbers_as_qemu_prints_them() {
        assert_eq!(to_line(&json!(1e3)), "1000");
        assert_eq!(to_line(&json!(0.1)), "0.10000000000000001");
        // Python's '%.17g' % x, which is C's.
        assert_eq!(to_line(&json!(1.5e300)), "1.5000000000000001e+300");
        assert_eq!(to_line(&json!(-2.5e-7)), "-2.4999999999999999e-07");
        assert_eq!(
            to_line(&json!(123456789012345678.0)),
            "1.2345678901234568e+17"
        );
        assert_eq!(to_line(&json!(42)), "42");
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
