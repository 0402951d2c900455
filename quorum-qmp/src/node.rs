//! Block nodes as `blockdev-add` describes them and
//! `query-named-block-nodes` shows them, in QEMU's shapes: a `file` node
//! (a raw image), an `nbd` node (an export), or a `raw` node over either
//! (which in QEMU is two nodes, the second with a generated `#block…`
//! name; both are listed here too).

use serde_json::{Map, Value, json};

use crate::message::QmpError;
use crate::schema::{Ty, check, str_of};

/// Where a child's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proto {
    /// A file (`driver: file`).
    File {
        /// Its path.
        filename: String,
    },
    /// An NBD export (`driver: nbd`).
    Nbd {
        /// The server.
        server: Server,
        /// The export's name.
        export: String,
    },
}

/// An NBD server's address (QEMU's `SocketAddress`, the two kinds used).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Server {
    /// `{"type": "unix", "path"}`.
    Unix(String),
    /// `{"type": "inet", "host", "port"}`.
    Inet {
        /// Host name or address.
        host: String,
        /// Port (QMP gives it as a string).
        port: String,
    },
}

impl Proto {
    /// The name QEMU shows for it (`file`, `image.filename`): the path, or
    /// the NBD URI.
    pub fn filename(&self) -> String {
        match self {
            Proto::File { filename } => filename.clone(),
            Proto::Nbd {
                server: Server::Unix(p),
                export,
            } => format!("nbd+unix:///{export}?socket={p}"),
            Proto::Nbd {
                server: Server::Inet { host, port },
                export,
            } => format!("nbd://{host}:{port}/{export}"),
        }
    }

    /// QEMU's driver name for it.
    pub fn driver(&self) -> &'static str {
        match self {
            Proto::File { .. } => "file",
            Proto::Nbd { .. } => "nbd",
        }
    }

    /// Its options as QEMU prints them inside a `json:` filename (its own
    /// member order, with NBD's server flattened).
    fn options(&self) -> Value {
        match self {
            Proto::File { filename } => json!({"driver": "file", "filename": filename}),
            Proto::Nbd {
                server: Server::Unix(p),
                export,
            } => {
                json!({"server.path": p, "driver": "nbd", "export": export, "server.type": "unix"})
            }
            Proto::Nbd {
                server: Server::Inet { host, port },
                export,
            } => {
                json!({"server.port": port, "server.host": host, "driver": "nbd", "export": export, "server.type": "inet"})
            }
        }
    }
}

/// A node to create: its name, whether a `raw` node sits over the
/// protocol node, and the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// `node-name`.
    pub name: String,
    /// `driver: raw` over the protocol node.
    pub raw: bool,
    /// The protocol node.
    pub proto: Proto,
    /// `read-only`.
    pub read_only: bool,
}

impl Spec {
    /// The options QEMU prints for this node inside its parent's `json:`
    /// filename.
    pub fn options(&self) -> Value {
        if self.raw {
            json!({"driver": "raw", "file": self.proto.options()})
        } else {
            self.proto.options()
        }
    }
}

/// QEMU's block drivers (`BlockdevDriver`): a name among them that is not
/// supported here gets our own refusal; any other name QEMU's.
const QEMU_DRIVERS: &[&str] = &[
    "blkdebug",
    "blklogwrites",
    "blkreplay",
    "blkverify",
    "bochs",
    "cloop",
    "compress",
    "copy-before-write",
    "copy-on-read",
    "dmg",
    "file",
    "snapshot-access",
    "ftp",
    "ftps",
    "gluster",
    "host_cdrom",
    "host_device",
    "http",
    "https",
    "io_uring",
    "iscsi",
    "luks",
    "nbd",
    "nfs",
    "null-aio",
    "null-co",
    "nvme",
    "nvme-io_uring",
    "parallels",
    "preallocate",
    "qcow",
    "qcow2",
    "qed",
    "quorum",
    "raw",
    "rbd",
    "replication",
    "ssh",
    "throttle",
    "vdi",
    "vhdx",
    "virtio-blk-vfio-pci",
    "virtio-blk-vhost-user",
    "virtio-blk-vhost-vdpa",
    "vmdk",
    "vpc",
    "vvfat",
];

/// The members every node takes (`BlockdevOptions`' base).
const BASE: &[(&str, Ty, bool)] = &[
    ("driver", Ty::Str, true),
    ("node-name", Ty::Str, false),
    ("discard", Ty::Str, false),
    ("cache", Ty::Obj, false),
    ("active", Ty::Bool, false),
    ("read-only", Ty::Bool, false),
    ("auto-read-only", Ty::Bool, false),
    ("force-share", Ty::Bool, false),
    ("detect-zeroes", Ty::Str, false),
];

fn with_base(own: &[(&'static str, Ty, bool)]) -> Vec<(&'static str, Ty, bool)> {
    BASE.iter().chain(own).copied().collect()
}

/// Whether `name` is well formed as QEMU's `id_wellformed` has it: a
/// letter, then letters, digits, `-`, `.`, `_`. (Its length is checked
/// after duplicates, as QEMU does: [`MAX_NAME`].)
pub fn valid_name(name: &str) -> bool {
    let mut c = name.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|x| x.is_ascii_alphanumeric() || "-._".contains(x))
}

/// Node names are shorter than this (QEMU: "Node name too long").
pub const MAX_NAME: usize = 32;

/// Parses `blockdev-add`'s arguments.
pub fn parse(args: &Map<String, Value>) -> Result<Spec, QmpError> {
    let driver = driver_of("", args)?;
    let (raw, proto) = match driver {
        "raw" => {
            check(
                "",
                args,
                &with_base(&[
                    ("file", Ty::Any, true),
                    ("offset", Ty::Int, false),
                    ("size", Ty::Int, false),
                ]),
            )?;
            if args.contains_key("offset") || args.contains_key("size") {
                return Err(QmpError::generic(
                    "quorum serve: a raw node's 'offset' and 'size' are not supported",
                ));
            }
            let Some(Value::Object(file)) = args.get("file") else {
                return Err(QmpError::generic(
                    "quorum serve: 'file' must be the protocol node's options (a reference to another node is not supported)",
                ));
            };
            let d = driver_of("file", file)?;
            (true, protocol("file", d, file)?)
        }
        d => (false, protocol("", d, args)?),
    };
    let name = match str_of(args, "node-name") {
        None => {
            return Err(QmpError::generic(
                "'node-name' must be specified for the root node",
            ));
        }
        Some(n) if !valid_name(n) => {
            return Err(QmpError::generic(format!("Invalid node-name: '{n}'")));
        }
        Some(n) => n.to_string(),
    };
    let read_only = args
        .get("read-only")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Spec {
        name,
        raw,
        proto,
        read_only,
    })
}

fn driver_of<'a>(prefix: &str, args: &'a Map<String, Value>) -> Result<&'a str, QmpError> {
    let full = |n: &str| {
        if prefix.is_empty() {
            n.to_string()
        } else {
            format!("{prefix}.{n}")
        }
    };
    match args.get("driver") {
        None => Err(QmpError::generic(format!(
            "Parameter '{}' is missing",
            full("driver")
        ))),
        Some(Value::String(d)) if QEMU_DRIVERS.contains(&d.as_str()) => Ok(d),
        Some(Value::String(d)) => Err(QmpError::generic(format!(
            "Parameter '{}' does not accept value '{d}'",
            full("driver")
        ))),
        Some(_) => Err(QmpError::generic(format!(
            "Invalid parameter type for '{}', expected: string",
            full("driver")
        ))),
    }
}

fn protocol(prefix: &str, driver: &str, args: &Map<String, Value>) -> Result<Proto, QmpError> {
    let own: &[(&'static str, Ty, bool)] = match driver {
        "file" => &[
            ("filename", Ty::Str, true),
            ("aio", Ty::Str, false),
            ("locking", Ty::Str, false),
        ],
        "nbd" => &[
            ("server", Ty::Obj, true),
            ("export", Ty::Str, false),
            ("tls-creds", Ty::Str, false),
            ("reconnect-delay", Ty::Int, false),
            ("open-timeout", Ty::Int, false),
        ],
        other => {
            return Err(QmpError::generic(format!(
                "quorum serve: driver '{other}' is not supported: children are 'file' or 'nbd' nodes, or 'raw' over one"
            )));
        }
    };
    // The members a protocol node takes itself (under a raw node, without
    // the base's node-only members being checked twice).
    check(prefix, args, &with_base(own))?;
    if args.contains_key("tls-creds") {
        return Err(QmpError::generic(
            "quorum serve: NBD over TLS is not supported",
        ));
    }
    match driver {
        "file" => Ok(Proto::File {
            filename: str_of(args, "filename").unwrap_or_default().to_string(),
        }),
        _ => {
            let sp = if prefix.is_empty() {
                "server".to_string()
            } else {
                format!("{prefix}.server")
            };
            let Some(Value::Object(s)) = args.get("server") else {
                return Err(QmpError::generic(format!("Parameter '{sp}' is missing")));
            };
            let server = match s.get("type").and_then(Value::as_str) {
                Some("unix") => {
                    check(
                        &sp,
                        s,
                        &[
                            ("type", Ty::Str, true),
                            ("path", Ty::Str, true),
                            ("abstract", Ty::Bool, false),
                            ("tight", Ty::Bool, false),
                        ],
                    )?;
                    Server::Unix(str_of(s, "path").unwrap_or_default().to_string())
                }
                Some("inet") => {
                    check(
                        &sp,
                        s,
                        &[
                            ("type", Ty::Str, true),
                            ("host", Ty::Str, true),
                            ("port", Ty::Str, true),
                            ("numeric", Ty::Bool, false),
                            ("ipv4", Ty::Bool, false),
                            ("ipv6", Ty::Bool, false),
                            ("keep-alive", Ty::Bool, false),
                        ],
                    )?;
                    Server::Inet {
                        host: str_of(s, "host").unwrap_or_default().to_string(),
                        port: str_of(s, "port").unwrap_or_default().to_string(),
                    }
                }
                Some(t) if ["vsock", "fd"].contains(&t) => {
                    return Err(QmpError::generic(format!(
                        "quorum serve: NBD servers of type '{t}' are not supported"
                    )));
                }
                Some(t) => {
                    return Err(QmpError::generic(format!(
                        "Parameter '{sp}.type' does not accept value '{t}'"
                    )));
                }
                None if s.contains_key("type") => {
                    return Err(QmpError::generic(format!(
                        "Invalid parameter type for '{sp}.type', expected: string"
                    )));
                }
                None => {
                    return Err(QmpError::generic(format!(
                        "Parameter '{sp}.type' is missing"
                    )));
                }
            };
            Ok(Proto::Nbd {
                server,
                export: str_of(args, "export").unwrap_or_default().to_string(),
            })
        }
    }
}

/// What a driver knows about an open node's image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    /// Its size.
    pub size: u64,
    /// Bytes allocated (files only).
    pub allocated: Option<u64>,
    /// Whether its I/O can reach it now (an NBD child's connection is up).
    pub reachable: bool,
}

/// One `BlockDeviceInfo` of `query-named-block-nodes`, members in QEMU's
/// order. `image` is the node's `ImageInfo`.
pub fn info(
    name: &str,
    drv: &str,
    filename: &str,
    image: Value,
    read_only: bool,
) -> Map<String, Value> {
    let v = json!({
        "iops_rd": 0, "detect_zeroes": "off", "active": true, "image": image, "iops_wr": 0,
        "ro": read_only, "node-name": name, "backing_file_depth": 0, "drv": drv, "iops": 0,
        "bps_wr": 0, "write_threshold": 0, "encrypted": false, "bps": 0, "bps_rd": 0,
        "cache": {"no-flush": false, "direct": false, "writeback": true}, "file": filename,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A node's `ImageInfo`: format `format`, what `stat` says; files carry
/// their allocation and QEMU's `format-specific` and `dirty-flag`, NBD
/// exports neither.
pub fn image(filename: &str, format: &str, proto: &Proto, stat: &Stat) -> Value {
    let mut m = Map::new();
    m.insert("virtual-size".into(), json!(stat.size));
    m.insert("filename".into(), json!(filename));
    m.insert("format".into(), json!(format));
    if let (Proto::File { .. }, Some(a)) = (proto, stat.allocated) {
        m.insert("actual-size".into(), json!(a));
        if format == "file" {
            m.insert(
                "format-specific".into(),
                json!({"type": "file", "data": {}}),
            );
        }
        m.insert("dirty-flag".into(), json!(false));
    }
    Value::Object(m)
}

/// The quorum node's `json:` filename over its children's options.
pub fn quorum_filename(children: &[Value], threshold: usize) -> String {
    let v = json!({"children": children, "driver": "quorum", "vote-threshold": threshold});
    format!("json:{}", crate::json::to_line(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn qemus_shapes_parse() {
        let s = parse(&obj(json!({"driver": "raw", "node-name": "n", "file": {"driver": "file", "filename": "/a"}}))).unwrap();
        assert!(s.raw);
        assert_eq!(
            s.proto,
            Proto::File {
                filename: "/a".into()
            }
        );
        let s = parse(&obj(json!({"driver": "nbd", "node-name": "n", "server": {"type": "inet", "host": "h", "port": "1"}, "export": "e"})))
            .unwrap();
        assert_eq!(s.proto.filename(), "nbd://h:1/e");
        let s = parse(&obj(
            json!({"driver": "nbd", "node-name": "n", "server": {"type": "unix", "path": "/s"}}),
        ))
        .unwrap();
        assert_eq!(s.proto.filename(), "nbd+unix:///?socket=/s");
    }

    #[test]
    fn qemus_refusals() {
        let e = |v| parse(&obj(v)).unwrap_err().desc;
        assert_eq!(
            e(json!({"driver": "nosuchdrv", "node-name": "m2"})),
            "Parameter 'driver' does not accept value 'nosuchdrv'"
        );
        assert_eq!(
            e(json!({"driver": "raw", "file": {"driver": "file", "filename": "/a"}})),
            "'node-name' must be specified for the root node"
        );
        assert_eq!(
            e(json!({"driver": "file", "node-name": "#x", "filename": "/a"})),
            "Invalid node-name: '#x'"
        );
        assert_eq!(
            e(json!({"driver": "file", "node-name": "x"})),
            "Parameter 'filename' is missing"
        );
        assert_eq!(
            e(json!({"driver": "raw", "node-name": "x", "file": {"driver": "file"}})),
            "Parameter 'file.filename' is missing"
        );
        assert_eq!(
            e(json!({"driver": "nbd", "node-name": "x", "server": {"type": "unix"}})),
            "Parameter 'server.path' is missing"
        );
        assert!(e(json!({"driver": "qcow2", "node-name": "x"})).contains("not supported"));
    }
}
