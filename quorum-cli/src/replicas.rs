//! What `quorum scrub` and `quorum bench` share: children given as
//! `[NAME=]PATH`, opened as raw image files, and sizes with qemu-img's suffixes.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use quorum_nbd::{NbdAddr, NbdChild};
use quorum_proto::{ChildId, Event, NodeNames, Timestamp};
use quorum_sync::{Child, FileChild};

/// One child as given on the command line.
#[derive(Clone, Debug)]
pub(crate) struct ChildSpec {
    /// Node name: `NAME` from `NAME=PATH`, else `children.N`.
    pub(crate) name: String,
    pub(crate) path: PathBuf,
}

impl ChildSpec {
    /// An I/O error on this child, as every command words it:
    /// `NAME (PATH): MESSAGE`.
    pub(crate) fn error(&self, e: &std::io::Error) -> String {
        format!("{} ({}): {}", self.name, self.path.display(), io_msg(e))
    }
}

/// Splits `[NAME=]PATH` arguments; unnamed children are `children.N` (N is
/// the position). A name is refused if it is empty or given twice.
pub(crate) fn parse_children(args: &[String]) -> Result<Vec<ChildSpec>, String> {
    let mut out: Vec<ChildSpec> = Vec::new();
    for (i, a) in args.iter().enumerate() {
        let (name, path) = match a.split_once('=') {
            // A path may contain '=': only a name made of plain characters counts.
            Some((n, p))
                if !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) =>
            {
                (n.to_string(), p.to_string())
            }
            _ => (format!("children.{i}"), a.clone()),
        };
        if path.is_empty() {
            return Err(format!("child {name}: empty path"));
        }
        if out.iter().any(|c| c.name == name) {
            return Err(format!("child name {name} is given twice"));
        }
        out.push(ChildSpec {
            name,
            path: PathBuf::from(path),
        });
    }
    if out.is_empty() {
        return Err("no children given".into());
    }
    Ok(out)
}

/// Opens every child as a raw image file, read-only unless `writable`.
/// Refuses a file given twice (it would vote with itself) and anything that
/// is not a regular file or block device.
pub(crate) fn open_children(
    specs: &[ChildSpec],
    writable: bool,
    direct: bool,
) -> Result<Vec<Arc<dyn Child>>, String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut seen: Vec<(u64, u64, &str)> = Vec::new();
    let mut kids: Vec<Arc<dyn Child>> = Vec::new();
    for s in specs {
        let what = || format!("{} ({})", s.name, s.path.display());
        if let Some(addr) = s.path.to_str().filter(|p| NbdAddr::is_nbd(p)) {
            kids.push(open_nbd(addr).map_err(|e| format!("{}: {e}", s.name))?);
            continue;
        }
        let meta = std::fs::metadata(&s.path).map_err(|e| format!("{}: {}", what(), io_msg(&e)))?;
        let ft = meta.file_type();
        if !(ft.is_file() || ft.is_block_device()) {
            return Err(format!("{}: not a regular file or block device", what()));
        }
        let key = (meta.dev(), meta.ino());
        if let Some((_, _, other)) = seen.iter().find(|(d, i, _)| (*d, *i) == key) {
            return Err(format!("{} is the same file as {other}", what()));
        }
        seen.push((key.0, key.1, &s.name));
        let child = FileChild::open(&s.path, writable, direct)
            .map_err(|e| format!("{}: {}", what(), io_msg(&e)))?;
        kids.push(Arc::new(child));
    }
    Ok(kids)
}

/// An `nbd://HOST:PORT/EXPORT` or `nbd+unix:///EXPORT?socket=PATH` child,
/// connected and negotiated; the error says what went wrong.
pub(crate) fn open_nbd(addr: &str) -> Result<Arc<dyn Child>, String> {
    let a = NbdAddr::parse(addr)?;
    let c = NbdChild::open(a, quorum_nbd::client::DEFAULT_TIMEOUT)
        .map_err(|e| format!("{addr}: {}", io_msg(&e)))?;
    Ok(Arc::new(c))
}

/// Opens a child given as a path or an NBD address (see [`open_nbd`]).
pub(crate) fn open_child(
    path: &std::path::Path,
    writable: bool,
    direct: bool,
) -> Result<Arc<dyn Child>, String> {
    match path.to_str().filter(|p| NbdAddr::is_nbd(p)) {
        Some(addr) => open_nbd(addr),
        None => FileChild::open(path, writable, direct)
            .map(|f| Arc::new(f) as Arc<dyn Child>)
            .map_err(|e| io_msg(&e)),
    }
}

/// The device size: all children must have the same (R-CFG-7). The error
/// names every child's size.
pub(crate) fn common_size(specs: &[ChildSpec], kids: &[Arc<dyn Child>]) -> Result<u64, String> {
    let mut sizes = Vec::new();
    for (s, k) in specs.iter().zip(kids) {
        let n = k.size().map_err(|e| s.error(&e))?;
        sizes.push(n);
    }
    let lengths = sizes.iter().map(|&n| Ok(n));
    match quorum_proto::device_length(lengths) {
        Ok(n) => Ok(n),
        Err(_) => {
            let list: Vec<String> = specs
                .iter()
                .zip(&sizes)
                .map(|(s, n)| format!("{} is {n} bytes", s.name))
                .collect();
            Err(format!("children differ in size: {}", list.join(", ")))
        }
    }
}

/// An I/O error as the C library words it, without Rust's "(os error N)".
pub(crate) fn io_msg(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => quorum_proto::Errno(n).to_string(),
        None => e.to_string(),
    }
}

/// The majority of `n`: the default threshold.
pub(crate) fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// Node names for events: each child's id with its name.
pub(crate) struct Names {
    pub(crate) device: String,
    pub(crate) children: Vec<(ChildId, String)>,
}

impl Names {
    /// The name of `child`.
    pub(crate) fn child(&self, child: ChildId) -> String {
        self.children
            .iter()
            .find(|(id, _)| *id == child)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| child.to_string())
    }
}

impl NodeNames for Names {
    fn write_device(&self, w: &mut dyn fmt::Write) -> fmt::Result {
        w.write_str(&self.device)
    }
    fn write_child(&self, child: ChildId, w: &mut dyn fmt::Write) -> fmt::Result {
        w.write_str(&self.child(child))
    }
}

/// Now, as a QMP timestamp.
pub(crate) fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs(),
        microseconds: d.subsec_micros(),
    }
}

/// Where `--events` goes: a file, or standard output for `-`.
pub(crate) enum EventLog {
    File(File),
    Stdout,
}

impl EventLog {
    /// Creates (truncates) `path`, or standard output for `-`.
    pub(crate) fn create(path: &str) -> Result<EventLog, String> {
        if path == "-" {
            return Ok(EventLog::Stdout);
        }
        File::create(path)
            .map(EventLog::File)
            .map_err(|e| format!("cannot create event log {path}: {}", io_msg(&e)))
    }

    /// Writes one event as a QMP JSON line.
    pub(crate) fn write(&mut self, ev: &Event, names: &Names, ts: Timestamp) -> Result<(), String> {
        let mut line = String::new();
        // Writing into a String cannot fail.
        let _ = ev.write_qmp(&mut line, names, ts);
        line.push('\n');
        let r = match self {
            EventLog::File(f) => f.write_all(line.as_bytes()),
            EventLog::Stdout => std::io::stdout().write_all(line.as_bytes()),
        };
        r.map_err(|e| format!("cannot write event log: {}", io_msg(&e)))
    }
}

/// A byte count as qemu-img's `cvtnum` reads it: a number with an optional
/// binary suffix `b k M G T P E` (any case; no suffix is bytes), possibly
/// with a fraction (`1.5M`). `None` if it is not one.
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num.starts_with('.') {
        return None;
    }
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        "e" => 60,
        _ => return None,
    };
    let mult = 1u128 << shift;
    let value = if let Some((int, frac)) = num.split_once('.') {
        if frac.contains('.') || (shift == 0 && !frac.is_empty()) {
            return None;
        }
        // As QEMU's qemu_strtosz: the number as a double minus its integer
        // part, times the unit, rounded (1.1M is 1153434).
        let number: f64 = format!("{int}.{}", if frac.is_empty() { "0" } else { frac })
            .parse()
            .ok()?;
        let int: u128 = int.parse().ok()?;
        let f = number - int as f64;
        int.checked_mul(mult)?
            .checked_add((f * mult as f64).round() as u128)?
    } else {
        num.parse::<u128>().ok()?.checked_mul(mult)?
    };
    u64::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_cvtnum() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("1.5M"), Some(3 << 19));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("512b"), Some(512));
        assert_eq!(parse_size("1x"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("-5"), None);
        assert_eq!(parse_size("99999999999E"), None);
    }

    #[test]
    fn children_are_named_by_position_or_by_name() {
        let c =
            parse_children(&["a.img".into(), "disk2=b.img".into(), "/x=y/c.img".into()]).unwrap();
        assert_eq!(c[0].name, "children.0");
        assert_eq!(c[1].name, "disk2");
        assert_eq!(c[1].path, PathBuf::from("b.img"));
        assert_eq!(c[2].name, "children.2");
        assert!(parse_children(&["x=a".into(), "x=b".into()]).is_err());
        assert!(parse_children(&[]).is_err());
    }
}
