//! The commands of R-QMP-2 over one quorum device: the block nodes a
//! monitor knows (the device's node, its children, nodes added and not
//! attached), `blockdev-add`, `x-blockdev-change`, `blockdev-del`,
//! `query-named-block-nodes`, `quit`. What a command does to the device —
//! opening a child, attaching it (the core names it and drains the device,
//! R-MEMBER), detaching it — is a [`Device`]'s; which refusals come first
//! and in which words is QEMU's (`blockdev.c`, `block.c`).

use serde_json::{Map, Value, json};

use crate::message::{Command, QmpError};
use crate::node::{self, Spec, Stat};
use crate::schema::{Ty, check, str_of};
use crate::session::{Handler, Version};

/// What the manager asks of the device and its driver.
pub trait Device {
    /// An open child.
    type Child: Clone;
    /// Opens `spec`'s protocol node (a file, a connection to an NBD
    /// server): QEMU's error text on failure.
    fn open(&mut self, spec: &Spec) -> Result<Self::Child, String>;
    /// What the driver knows about `child` now.
    fn stat(&self, child: &Self::Child) -> Stat;
    /// Attaches `child` (node `node`): the core's child id, or the core's
    /// refusal (R-MEMBER). `trusted`: it joins in sync (QEMU's behaviour);
    /// otherwise, under sync tracking, it is rebuilt (R-SYNC-7).
    fn attach(&mut self, node: &str, child: Self::Child, trusted: bool) -> Result<u32, String>;
    /// Detaches the child with id `id`, or the core's refusal.
    fn detach(&mut self, id: u32) -> Result<(), String>;
    /// The children's ids, in slot order.
    fn children(&self) -> Vec<u32>;
    /// The device's size and vote threshold.
    fn shape(&self) -> (u64, usize);
    /// Our own members (`x-…`) for the node of child `id`, if attached.
    fn extra(&self, id: Option<u32>) -> Map<String, Value> {
        let _ = id;
        Map::new()
    }
    /// Starts a clean stop (`quit`).
    fn quit(&mut self);
    /// The block jobs running (resync, R-SYNC-5).
    fn jobs(&self) -> Vec<JobInfo> {
        Vec::new()
    }
    /// Controls the job of `device`; `None` if there is none.
    fn job(&mut self, device: &str, op: JobOp) -> Option<Result<(), QmpError>> {
        let _ = (device, op);
        None
    }
}

/// A block job as `query-block-jobs` shows it (QEMU's `BlockJobInfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    /// The job's id (QEMU: `device`).
    pub device: String,
    /// Its type.
    pub kind: String,
    /// Bytes to do, done included.
    pub len: u64,
    /// Bytes done.
    pub offset: u64,
    /// Bytes per second, 0 for no limit.
    pub speed: u64,
    /// QEMU's status name.
    pub status: String,
    /// Paused by the user.
    pub paused: bool,
    /// Working right now.
    pub busy: bool,
    /// Ready to complete (never, for a resync: it completes by itself).
    pub ready: bool,
}

/// What a `block-job-*` command asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobOp {
    /// `block-job-set-speed`.
    SetSpeed(u64),
    /// `block-job-pause`.
    Pause,
    /// `block-job-resume`.
    Resume,
    /// `block-job-cancel`.
    Cancel,
}

/// A node a monitor can name.
#[derive(Clone, Debug)]
struct Node<C> {
    spec: Spec,
    child: C,
    /// The generated name of the protocol node under a `raw` node.
    implicit: Option<String>,
    /// The core's id while attached.
    attached: Option<u32>,
    /// Creation order (QEMU lists the newest node first).
    seq: u64,
}

/// The device's node and every other node, with the commands over them.
#[derive(Debug)]
pub struct Manager<D: Device> {
    device: D,
    name: String,
    read_only: bool,
    version: Version,
    /// Newest last.
    nodes: Vec<Node<D::Child>>,
    generated: u64,
    /// Creation order of the device's node, and of the next node.
    device_seq: u64,
    next_seq: u64,
}

/// The commands answered, in `query-commands` order.
pub const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-version",
    "query-commands",
    "query-named-block-nodes",
    "blockdev-add",
    "x-blockdev-change",
    "blockdev-del",
    "query-block-jobs",
    "block-job-set-speed",
    "block-job-pause",
    "block-job-resume",
    "block-job-cancel",
    "quit",
];

impl<D: Device> Manager<D> {
    /// A manager for `device`, whose node is `name`; `children` are its
    /// children at start, with their child ids, as nodes a monitor can
    /// detach, attach again and delete (as if each had been its own
    /// `--blockdev`).
    pub fn new(
        device: D,
        name: &str,
        read_only: bool,
        version: Version,
        children: Vec<(Spec, D::Child, u32)>,
    ) -> Self {
        let mut m = Manager {
            device,
            name: name.to_string(),
            read_only,
            version,
            nodes: Vec::new(),
            generated: 0,
            device_seq: 0,
            next_seq: 0,
        };
        for (spec, child, id) in children {
            let implicit = spec.raw.then(|| m.generate());
            let seq = m.seq();
            m.nodes.push(Node {
                spec,
                child,
                implicit,
                attached: Some(id),
                seq,
            });
        }
        m.device_seq = m.seq();
        m
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, to change.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The node name of child `id`, if it is attached.
    pub fn node_of(&self, id: u32) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.attached == Some(id))
            .map(|n| n.spec.name.as_str())
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// A name for a node the user did not name, QEMU's style.
    fn generate(&mut self) -> String {
        let n = self.generated;
        self.generated += 1;
        // QEMU appends two random digits; these are a hash of the counter.
        format!("#block{n}{:02}", (n * 37 + 11) % 100)
    }

    fn known(&self, name: &str) -> bool {
        name == self.name
            || self
                .nodes
                .iter()
                .any(|n| n.spec.name == name || n.implicit.as_deref() == Some(name))
    }

    fn query_nodes(&self, args: &Map<String, Value>) -> Result<Value, QmpError> {
        check("", args, &[("flat", Ty::Bool, false)])?;
        let (size, threshold) = self.device.shape();
        let ids = self.device.children();
        let mut attached: Vec<&Node<D::Child>> = Vec::new();
        for id in &ids {
            attached.extend(self.nodes.iter().find(|n| n.attached == Some(*id)));
        }
        let opts: Vec<Value> = attached.iter().map(|n| n.spec.options()).collect();
        let stats: Vec<Stat> = attached
            .iter()
            .map(|n| self.device.stat(&n.child))
            .collect();
        let filename = node::quorum_filename(&opts, threshold);
        let mut image = Map::new();
        image.insert("virtual-size".into(), json!(size));
        image.insert("filename".into(), json!(filename));
        image.insert("format".into(), json!("quorum"));
        if let Some(total) = stats.iter().map(|s| s.allocated).sum::<Option<u64>>() {
            image.insert("actual-size".into(), json!(total));
        }
        let dev = node::info(
            &self.name,
            "quorum",
            &filename,
            Value::Object(image),
            self.read_only,
        );
        let mut listed: Vec<(u64, Vec<Value>)> = vec![(self.device_seq, vec![Value::Object(dev)])];
        for n in &self.nodes {
            let stat = self.device.stat(&n.child);
            let file = n.spec.proto.filename();
            let proto_drv = n.spec.proto.driver();
            let (drv, format) = if n.spec.raw {
                ("raw", "raw")
            } else {
                (proto_drv, proto_drv)
            };
            let mut top = node::info(
                &n.spec.name,
                drv,
                &file,
                node::image(&file, format, &n.spec.proto, &stat),
                n.spec.read_only,
            );
            top.insert(
                "x-child".into(),
                n.attached
                    .map_or(Value::Null, |id| json!(format!("children.{id}"))),
            );
            let slot = n.attached.and_then(|id| ids.iter().position(|c| *c == id));
            top.insert("x-slot".into(), slot.map_or(Value::Null, |s| json!(s)));
            top.insert("x-reachable".into(), json!(stat.reachable));
            top.append(&mut self.device.extra(n.attached));
            let mut entries = vec![Value::Object(top)];
            if let Some(implicit) = &n.implicit {
                let image = node::image(&file, proto_drv, &n.spec.proto, &stat);
                entries.push(Value::Object(node::info(
                    implicit,
                    proto_drv,
                    &file,
                    image,
                    n.spec.read_only,
                )));
            }
            listed.push((n.seq, entries));
        }
        listed.sort_by_key(|e| std::cmp::Reverse(e.0));
        Ok(Value::Array(
            listed.into_iter().flat_map(|(_, e)| e).collect(),
        ))
    }

    fn blockdev_add(&mut self, args: &Map<String, Value>) -> Result<Value, QmpError> {
        let spec = node::parse(args)?;
        if self.known(&spec.name) {
            return Err(QmpError::generic(format!(
                "Duplicate nodes with node-name='{}'",
                spec.name
            )));
        }
        if spec.name.len() >= node::MAX_NAME {
            return Err(QmpError::generic("Node name too long"));
        }
        let child = self.device.open(&spec).map_err(QmpError::generic)?;
        let implicit = spec.raw.then(|| self.generate());
        let seq = self.seq();
        self.nodes.push(Node {
            spec,
            child,
            implicit,
            attached: None,
            seq,
        });
        Ok(json!({}))
    }

    fn change(&mut self, args: &Map<String, Value>) -> Result<Value, QmpError> {
        check(
            "",
            args,
            &[
                ("parent", Ty::Str, true),
                ("child", Ty::Str, false),
                ("node", Ty::Str, false),
                ("x-trusted", Ty::Bool, false),
            ],
        )?;
        let trusted = args
            .get("x-trusted")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let parent = str_of(args, "parent").unwrap_or_default();
        if !self.known(parent) {
            return Err(QmpError::generic(format!(
                "Cannot find device='{parent}' nor node-name='{parent}'"
            )));
        }
        let (child, node) = (str_of(args, "child"), str_of(args, "node"));
        match (child, node) {
            (Some(_), Some(_)) => {
                return Err(QmpError::generic(
                    "The parameters child and node are in conflict",
                ));
            }
            (None, None) => {
                return Err(QmpError::generic("Either child or node must be specified"));
            }
            _ => {}
        }
        // QEMU (blockdev.c, block.c): the child or node is looked up
        // first, then whether the parent takes the change.
        if let Some(child) = child {
            let id = if parent == self.name {
                child
                    .strip_prefix("children.")
                    .and_then(|n| n.parse::<u32>().ok())
                    .filter(|id| {
                        self.device.children().contains(id) && format!("children.{id}") == child
                    })
            } else {
                None
            };
            // A raw node's only child is its protocol node, `file`.
            let raw_file = child == "file"
                && self
                    .nodes
                    .iter()
                    .any(|n| n.spec.name == parent && n.implicit.is_some());
            let Some(id) = id else {
                if raw_file {
                    return Err(QmpError::generic(format!(
                        "The node {parent} does not support removing a child"
                    )));
                }
                return Err(QmpError::generic(format!(
                    "Node '{parent}' does not have child '{child}'"
                )));
            };
            self.device.detach(id).map_err(QmpError::generic)?;
            for n in &mut self.nodes {
                if n.attached == Some(id) {
                    n.attached = None;
                }
            }
            return Ok(json!({}));
        }
        let node = node.unwrap_or_default();
        let found = self
            .nodes
            .iter()
            .position(|n| n.spec.name == node || n.implicit.as_deref() == Some(node));
        if found.is_none() && node != self.name {
            return Err(QmpError::generic(format!("Node '{node}' not found")));
        }
        if parent != self.name {
            return Err(QmpError::generic(format!(
                "The node {parent} does not support adding a child"
            )));
        }
        let Some(i) = found else {
            // The device's own node: its export is its parent.
            return Err(QmpError::generic(format!(
                "The node {node} already has a parent"
            )));
        };
        if self.nodes[i].attached.is_some() || self.nodes[i].implicit.as_deref() == Some(node) {
            return Err(QmpError::generic(format!(
                "The node {node} already has a parent"
            )));
        }
        let child = self.nodes[i].child.clone();
        let id = self
            .device
            .attach(node, child, trusted)
            .map_err(QmpError::generic)?;
        self.nodes[i].attached = Some(id);
        Ok(json!({}))
    }

    fn blockdev_del(&mut self, args: &Map<String, Value>) -> Result<Value, QmpError> {
        check("", args, &[("node-name", Ty::Str, true)])?;
        let name = str_of(args, "node-name").unwrap_or_default();
        if name == self.name {
            return Err(QmpError::generic(format!("Node {name} is in use")));
        }
        let Some(i) = self
            .nodes
            .iter()
            .position(|n| n.spec.name == name || n.implicit.as_deref() == Some(name))
        else {
            return Err(QmpError::generic(format!(
                "Failed to find node with node-name='{name}'"
            )));
        };
        let n = &self.nodes[i];
        if n.attached.is_some() || n.implicit.as_deref() == Some(name) {
            return Err(QmpError::generic(format!("Block device {name} is in use")));
        }
        // Dropping the node closes its child (the file, the connection).
        self.nodes.remove(i);
        Ok(json!({}))
    }
}

impl<D: Device> Manager<D> {
    /// `block-job-set-speed`, `-pause`, `-resume`, `-cancel`.
    fn job_command(&mut self, c: &Command) -> Result<Value, QmpError> {
        let args = &c.arguments;
        let mut members = vec![("device", Ty::Str, true)];
        match c.execute.as_str() {
            "block-job-set-speed" => members.push(("speed", Ty::Int, true)),
            "block-job-cancel" => members.push(("force", Ty::Bool, false)),
            _ => {}
        }
        check("", args, &members)?;
        let device = str_of(args, "device").unwrap_or_default().to_string();
        let op = match c.execute.as_str() {
            "block-job-set-speed" => {
                let speed = args.get("speed").and_then(Value::as_i64).unwrap_or(-1);
                if speed < 0 {
                    return Err(QmpError::generic("Invalid parameter 'speed'"));
                }
                JobOp::SetSpeed(speed as u64)
            }
            "block-job-pause" => JobOp::Pause,
            "block-job-resume" => JobOp::Resume,
            _ => JobOp::Cancel,
        };
        match self.device.job(&device, op) {
            Some(r) => r.map(|()| json!({})),
            None => Err(QmpError {
                class: crate::message::ErrorClass::DeviceNotActive,
                desc: format!("Block job '{device}' not found"),
            }),
        }
    }
}

impl<D: Device> Handler for Manager<D> {
    fn commands(&self) -> Vec<&'static str> {
        COMMANDS.to_vec()
    }

    fn execute(&mut self, c: &Command) -> Result<Value, QmpError> {
        let args = &c.arguments;
        let none = |args: &Map<String, Value>| check("", args, &[]);
        match c.execute.as_str() {
            "query-version" => {
                none(args)?;
                Ok(self.version.to_json())
            }
            "query-commands" => {
                none(args)?;
                Ok(Value::Array(
                    COMMANDS.iter().rev().map(|n| json!({"name": n})).collect(),
                ))
            }
            "query-named-block-nodes" => self.query_nodes(args),
            "blockdev-add" => self.blockdev_add(args),
            "x-blockdev-change" => self.change(args),
            "blockdev-del" => self.blockdev_del(args),
            "quit" => {
                none(args)?;
                self.device.quit();
                Ok(json!({}))
            }
            "query-block-jobs" => {
                none(args)?;
                let jobs = self.device.jobs().into_iter().map(|j| {
                    json!({
                        "auto-finalize": true, "io-status": "ok", "device": j.device,
                        "auto-dismiss": true, "busy": j.busy, "len": j.len, "offset": j.offset,
                        "status": j.status, "paused": j.paused, "speed": j.speed, "ready": j.ready,
                        "type": j.kind,
                    })
                });
                Ok(Value::Array(jobs.collect()))
            }
            "block-job-set-speed" | "block-job-pause" | "block-job-resume" | "block-job-cancel" => {
                self.job_command(c)
            }
            other => Err(QmpError::not_found(format!(
                "The command {other} has not been found"
            ))),
        }
    }
}
