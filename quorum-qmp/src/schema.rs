//! Arguments checked as QEMU's QAPI visitor checks them
//! (`qapi/qobject-input-visitor.c`): members in schema order, a missing
//! one is "Parameter 'X' is missing", a wrong type "Invalid parameter type
//! for 'X', expected: T", and whatever is left over "Parameter 'X' is
//! unexpected". Nested members are named with dots (`file.filename`).

use serde_json::{Map, Value};

use crate::message::QmpError;

/// A member's type, as QEMU names it in its error text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    /// `string`.
    Str,
    /// `boolean`.
    Bool,
    /// `integer`.
    Int,
    /// `object`.
    Obj,
    /// `array`.
    List,
    /// Anything (checked elsewhere).
    Any,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Str => "string",
            Ty::Bool => "boolean",
            Ty::Int => "integer",
            Ty::Obj => "object",
            Ty::List => "array",
            Ty::Any => "any",
        }
    }

    fn fits(self, v: &Value) -> bool {
        match self {
            Ty::Str => v.is_string(),
            Ty::Bool => v.is_boolean(),
            Ty::Int => v.is_i64() || v.is_u64(),
            Ty::Obj => v.is_object(),
            Ty::List => v.is_array(),
            Ty::Any => true,
        }
    }
}

/// One member: name, type, required.
pub type Member = (&'static str, Ty, bool);

/// Checks `args` (at `prefix`, "" at the top) against `members`: the first
/// problem in QEMU's order, or `Ok`.
pub fn check(prefix: &str, args: &Map<String, Value>, members: &[Member]) -> Result<(), QmpError> {
    let full = |n: &str| {
        if prefix.is_empty() {
            n.to_string()
        } else {
            format!("{prefix}.{n}")
        }
    };
    for &(name, ty, required) in members {
        match args.get(name) {
            None if required => {
                return Err(QmpError::generic(format!(
                    "Parameter '{}' is missing",
                    full(name)
                )));
            }
            Some(v) if !ty.fits(v) => {
                return Err(QmpError::generic(format!(
                    "Invalid parameter type for '{}', expected: {}",
                    full(name),
                    ty.name()
                )));
            }
            _ => {}
        }
    }
    // The first left over as QEMU's visitor finds it: in the order of the
    // GLib hash table it keeps the members it has not visited in.
    let unexpected = |k: &String| !members.iter().any(|m| m.0 == k.as_str());
    if let Some(extra) = glib_first(args, unexpected) {
        return Err(QmpError::generic(format!(
            "Parameter '{}' is unexpected",
            full(extra)
        )));
    }
    Ok(())
}

/// GLib's `g_str_hash` (djb2).
fn g_str_hash(s: &str) -> u32 {
    s.bytes().fold(5381u32, |h, c| {
        h.wrapping_shl(5).wrapping_add(h).wrapping_add(u32::from(c))
    })
}

/// The first key of `args` that `pick` accepts, in the order a GLib hash
/// table holding all of `args`' keys (inserted in QEMU's dictionary order)
/// iterates them: 8 buckets (modulo 7, GLib's smallest table) with its
/// probing, for the few members a command takes; QEMU's dictionary order
/// beyond that.
fn glib_first(args: &Map<String, Value>, pick: impl Fn(&String) -> bool) -> Option<&String> {
    let keys = crate::json::qemu_key_order(args.keys());
    if keys.len() > 7 {
        return keys.into_iter().find(|k| pick(k));
    }
    let mut table: [Option<&String>; 8] = [None; 8];
    for k in keys {
        let mut i = (g_str_hash(k).wrapping_mul(11) % 7) as usize;
        let mut step = 0;
        while table[i].is_some() {
            step += 1;
            i = (i + step) & 7;
        }
        table[i] = Some(k);
    }
    table.into_iter().flatten().find(|k| pick(k))
}

/// The string member `name` of `args` (after [`check`]).
pub fn str_of<'a>(args: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    args.get(name).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    const CHANGE: &[Member] = &[
        ("parent", Ty::Str, true),
        ("child", Ty::Str, false),
        ("node", Ty::Str, false),
    ];

    #[test]
    fn qemus_texts_in_qemus_order() {
        let e = |v| check("", &obj(v), CHANGE).unwrap_err().desc;
        assert_eq!(e(json!({})), "Parameter 'parent' is missing");
        assert_eq!(
            e(json!({"parent": 5})),
            "Invalid parameter type for 'parent', expected: string"
        );
        assert_eq!(
            e(json!({"parent": "q", "x": 1})),
            "Parameter 'x' is unexpected"
        );
        assert_eq!(e(json!({"child": 1})), "Parameter 'parent' is missing");
        assert!(check("", &obj(json!({"parent": "q", "node": "n"})), CHANGE).is_ok());
        let e = check("file", &obj(json!({})), &[("filename", Ty::Str, true)]).unwrap_err();
        assert_eq!(e.desc, "Parameter 'file.filename' is missing");
    }

    /// qemu-storage-daemon 10.0 named 'y' for {"x": 1, "y": 2}, whether
    /// or not other members were expected (its GLib table's order).
    #[test]
    fn of_two_unexpected_members_qemus_pick() {
        let e = |v| check("", &obj(v), CHANGE).unwrap_err().desc;
        assert_eq!(
            e(json!({"parent": "q", "x": 1, "y": 2})),
            "Parameter 'y' is unexpected"
        );
        let e = check("", &obj(json!({"x": 1, "y": 2})), &[])
            .unwrap_err()
            .desc;
        assert_eq!(e, "Parameter 'y' is unexpected");
    }
}
