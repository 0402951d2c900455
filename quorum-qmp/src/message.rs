//! One QMP message in, one out: a line parsed into a [`Command`] with
//! QEMU's checks and error texts (`qapi/qmp-dispatch.c`), and replies and
//! errors built with QEMU's members in QEMU's order.

use serde_json::{Map, Value};

/// QEMU's error classes (`qapi/error.json`) that these commands use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Everything without a class of its own.
    GenericError,
    /// An unknown command, or one not allowed yet (or any more).
    CommandNotFound,
    /// A device or node that does not exist (QEMU uses it for some lookups).
    DeviceNotFound,
    /// No such block job.
    DeviceNotActive,
}

impl ErrorClass {
    /// The class's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
        }
    }
}

/// A command's failure: its class and QEMU's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QmpError {
    /// The class.
    pub class: ErrorClass,
    /// The human-readable description (`desc`).
    pub desc: String,
}

impl QmpError {
    /// A `GenericError`.
    pub fn generic(desc: impl Into<String>) -> QmpError {
        QmpError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    /// A `CommandNotFound`.
    pub fn not_found(desc: impl Into<String>) -> QmpError {
        QmpError {
            class: ErrorClass::CommandNotFound,
            desc: desc.into(),
        }
    }
}

/// A request: the command, its arguments (empty when absent) and the `id`
/// to echo.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    /// `execute`.
    pub execute: String,
    /// `arguments`, or empty.
    pub arguments: Map<String, Value>,
    /// `id`, echoed exactly in the reply.
    pub id: Option<Value>,
    /// Sent as `exec-oob` (out of band) rather than `execute`.
    pub oob: bool,
}

/// Parses one line. A bad one gives the error to send, with the `id` to
/// echo if the line had one.
pub fn parse(line: &str) -> Result<Command, (QmpError, Option<Value>)> {
    let v: Value = strict(line).map_err(|e| (QmpError::generic(e), None))?;
    let Value::Object(mut obj) = v else {
        return Err((QmpError::generic("QMP input must be a JSON object"), None));
    };
    let id = obj.remove("id");
    let fail = |desc: String| Err((QmpError::generic(desc), id.clone()));
    // QEMU checks the members in its dictionary's order.
    for k in crate::json::qemu_key_order(obj.keys()) {
        let v = &obj[k];
        match k.as_str() {
            "execute" | "exec-oob" if !v.is_string() => {
                return fail(format!("QMP input member '{k}' must be a string"));
            }
            "arguments" if !v.is_object() => {
                return fail("QMP input member 'arguments' must be an object".into());
            }
            "execute" | "arguments" | "exec-oob" => {}
            _ => return fail(format!("QMP input member '{k}' is unexpected")),
        }
    }
    let (execute, oob) = match (obj.remove("execute"), obj.remove("exec-oob")) {
        (Some(Value::String(e)), None) => (e, false),
        (None, Some(Value::String(e))) => (e, true),
        (Some(_), Some(_)) => {
            return fail("QMP input member 'execute' and 'exec-oob' are in conflict".into());
        }
        _ => return fail("QMP input lacks member 'execute'".into()),
    };
    let arguments = match obj.remove("arguments") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    Ok(Command {
        execute,
        arguments,
        id,
        oob,
    })
}

/// Parses one value as QEMU's parser would accept it — a key twice in an
/// object is an error — or QEMU's words for why not.
pub fn strict(text: &str) -> Result<Value, String> {
    use serde::Deserialize;
    let mut de = serde_json::Deserializer::from_str(text);
    let v = Strict::deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v.0))
        .map_err(|e| parse_error_text(text, &e))?;
    Ok(v)
}

/// A value whose objects have no key twice.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(Strict(x)) = seq.next_element()? {
            v.push(x);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if m.insert(k, v).is_some() {
                return Err(serde::de::Error::custom("duplicate key"));
            }
        }
        Ok(Value::Object(m))
    }
}

/// QEMU's words for a JSON syntax error ("JSON parse error, ..."), from
/// serde's error and the text around where it stopped.
fn parse_error_text(text: &str, e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let at = text
        .lines()
        .nth(e.line().saturating_sub(1))
        .and_then(|l| l.get(e.column().saturating_sub(1)..))
        .unwrap_or("");
    let what = if msg.starts_with("duplicate key") {
        "duplicate key".to_string()
    } else if msg.starts_with("expected `:`") {
        "missing : in object pair".into()
    } else if msg.starts_with("invalid escape") {
        "invalid escape sequence in string".into()
    } else if let Some(c) = at.chars().next().filter(|c| !c.is_ascii_whitespace()) {
        if c.is_ascii_alphabetic() {
            // The whole word the bad keyword is part of.
            let line = text.lines().nth(e.line().saturating_sub(1)).unwrap_or("");
            let pos = e.column().saturating_sub(1).min(line.len());
            let start = line[..pos]
                .rfind(|x: char| !x.is_ascii_alphanumeric())
                .map_or(0, |i| i + 1);
            let end = line[pos..]
                .find(|x: char| !x.is_ascii_alphanumeric())
                .map_or(line.len(), |i| pos + i);
            format!("invalid keyword '{}'", &line[start..end])
        } else if "{}[]:,\"0123456789-".contains(c) {
            "expecting value".into()
        } else if c == '\0' {
            // QEMU's message is a C string: the NUL ends it there.
            "stray ''".into()
        } else {
            format!("stray '{c}'")
        }
    } else {
        "expecting value".into()
    };
    format!("JSON parse error, {what}")
}

/// `{"return": value}` with the id.
pub fn reply(value: Value, id: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("return".into(), value);
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    Value::Object(m)
}

/// `{"error": {"class", "desc"}}` with the id.
pub fn error(e: &QmpError, id: Option<Value>) -> Value {
    let mut err = Map::new();
    err.insert("class".into(), Value::String(e.class.as_str().into()));
    err.insert("desc".into(), Value::String(e.desc.clone()));
    let mut m = Map::new();
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    m.insert("error".into(), Value::Object(err));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(line: &str) -> String {
        parse(line).unwrap_err().0.desc
    }

    /// R-QMP-1: QEMU's texts for bad input (captured from
    /// qemu-storage-daemon 10.0).
    #[test]
    fn r_qmp_1_bad_input_gets_qemus_texts() {
        assert_eq!(desc("{\"execute\":}"), "JSON parse error, expecting value");
        assert_eq!(
            desc("{\"execute\" \"query-version\"}"),
            "JSON parse error, missing : in object pair"
        );
        assert_eq!(
            desc("{\"execute\":\"query-version\",}"),
            "JSON parse error, expecting value"
        );
        assert_eq!(desc("}"), "JSON parse error, expecting value");
        assert_eq!(desc("@"), "JSON parse error, stray '@'");
        assert_eq!(desc("xyz"), "JSON parse error, invalid keyword 'xyz'");
        assert_eq!(
            desc("{execute:\"query-version\"}"),
            "JSON parse error, invalid keyword 'execute'"
        );
        assert_eq!(
            desc("{\"execute\":\"query-\\q\"}"),
            "JSON parse error, invalid escape sequence in string"
        );
        assert_eq!(
            desc("{\"execute\":\"a\",\"execute\":\"a\"}"),
            "JSON parse error, duplicate key"
        );
        assert_eq!(desc("[1,2]"), "QMP input must be a JSON object");
        assert_eq!(desc("null"), "QMP input must be a JSON object");
        assert_eq!(desc("{}"), "QMP input lacks member 'execute'");
        assert_eq!(
            desc("{\"execute\":5}"),
            "QMP input member 'execute' must be a string"
        );
        assert_eq!(
            desc("{\"execute\":\"q\",\"foo\":1}"),
            "QMP input member 'foo' is unexpected"
        );
        assert_eq!(
            desc("{\"execute\":\"q\",\"arguments\":[]}"),
            "QMP input member 'arguments' must be an object"
        );
        let (e, id) = parse("{\"id\":1,\"arguments\":{}}").unwrap_err();
        assert_eq!(
            (e.desc.as_str(), id),
            ("QMP input lacks member 'execute'", Some(Value::from(1)))
        );
    }

    #[test]
    fn replies_and_errors_in_qemus_member_order() {
        let r = crate::json::to_line(&reply(Value::Object(Map::new()), Some(Value::from("x"))));
        assert_eq!(r, r#"{"return": {}, "id": "x"}"#);
        let e = crate::json::to_line(&error(&QmpError::generic("no"), Some(Value::from(7))));
        assert_eq!(
            e,
            r#"{"id": 7, "error": {"class": "GenericError", "desc": "no"}}"#
        );
    }
}
