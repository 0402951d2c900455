//! The running device as the QMP manager sees it: children opened from
//! `blockdev-add`'s specs (the same openers as the command line's
//! children), attached and detached through the blocking driver (which
//! drains the device, R-MEMBER-4), and the node names events carry.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use quorum_proto::{ChildId, NodeNames};
use quorum_qmp::event::outgoing;
use quorum_qmp::manager::Device as ManagedDevice;
use quorum_qmp::node::{Proto, Server, Spec, Stat};
use quorum_sync::{Child, Device};
use serde_json::json;

use super::qmp::Hub;
use crate::io::{Bad, now, open_child};

/// Node names by child id, shared by the event sink and the manager. A
/// child being attached has its name in `pending` until the core has
/// given it an id: an event about it can come before the id is known
/// here.
#[derive(Debug, Default)]
pub(crate) struct ChildNames {
    pub(crate) device: String,
    pub(crate) by_id: BTreeMap<u32, String>,
    pub(crate) pending: Option<String>,
}

/// [`ChildNames`] behind its lock, as events need them.
#[derive(Clone, Debug, Default)]
pub(crate) struct SharedNames(pub(crate) Arc<RwLock<ChildNames>>);

impl SharedNames {
    pub(crate) fn child(&self, id: ChildId) -> String {
        let n = self.0.read().unwrap_or_else(|p| p.into_inner());
        match (n.by_id.get(&id.0), &n.pending) {
            (Some(name), _) => name.clone(),
            (None, Some(p)) => p.clone(),
            (None, None) => id.to_string(),
        }
    }

    pub(crate) fn device(&self) -> String {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .device
            .clone()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ChildNames> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl NodeNames for SharedNames {
    fn write_device(&self, w: &mut dyn fmt::Write) -> fmt::Result {
        w.write_str(&self.device())
    }
    fn write_child(&self, child: ChildId, w: &mut dyn fmt::Write) -> fmt::Result {
        w.write_str(&self.child(child))
    }
}

/// The protocol node a command-line child is: a file, or an NBD export.
pub(crate) fn proto_of(path: &std::path::Path) -> Proto {
    let s = path.to_string_lossy();
    match quorum_nbd::NbdAddr::parse(&s) {
        Ok(quorum_nbd::NbdAddr::Tcp { host, port, export }) => Proto::Nbd {
            server: Server::Inet {
                host,
                port: port.to_string(),
            },
            export,
        },
        Ok(quorum_nbd::NbdAddr::Unix { path, export }) => Proto::Nbd {
            server: Server::Unix(path.display().to_string()),
            export,
        },
        Err(_) => Proto::File {
            filename: s.into_owned(),
        },
    }
}

/// The device behind `quorum serve`, for the manager.
pub(crate) struct Managed {
    pub(crate) device: Arc<Device>,
    pub(crate) names: SharedNames,
    pub(crate) hub: Arc<Hub>,
    pub(crate) size: u64,
    /// Children are opened for writing.
    pub(crate) writable: bool,
    pub(crate) export_id: String,
    /// Asks the server to stop (as SIGTERM does).
    pub(crate) stop: Box<dyn Fn() + Send>,
    /// `BLOCK_EXPORT_DELETED` was sent (by `quit`).
    pub(crate) export_deleted: Arc<std::sync::atomic::AtomicBool>,
    /// With `--map`: the background resync, and the names the map file
    /// records.
    pub(crate) resyncer: Option<Arc<super::resync::Resyncer>>,
    pub(crate) map_names: Option<Arc<std::sync::Mutex<quorum_sync::sync::Names>>>,
    /// Where each node opened at runtime is (its file or NBD address).
    pub(crate) opened: std::collections::HashMap<String, String>,
}

impl fmt::Debug for Managed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Managed").finish_non_exhaustive()
    }
}

/// `BLOCK_EXPORT_DELETED` for `id`, once.
pub(crate) fn export_deleted(hub: &Hub, id: &str, sent: &std::sync::atomic::AtomicBool) {
    if !sent.swap(true, std::sync::atomic::Ordering::SeqCst) {
        hub.publish(outgoing("BLOCK_EXPORT_DELETED", json!({"id": id}), now()));
    }
}

impl ManagedDevice for Managed {
    type Child = Arc<dyn Child>;

    fn open(&mut self, spec: &Spec) -> Result<Arc<dyn Child>, String> {
        let path = match &spec.proto {
            Proto::File { filename } => filename.clone(),
            p @ Proto::Nbd { .. } => p.filename(),
        };
        let writable = self.writable && !spec.read_only;
        self.opened.insert(spec.name.clone(), path.clone());
        open_child(std::path::Path::new(&path), writable).map_err(|Bad(m)| {
            m.strip_prefix("can't open: ")
                .map_or(m.clone(), str::to_string)
        })
    }

    fn stat(&self, child: &Arc<dyn Child>) -> Stat {
        Stat {
            size: child.size().unwrap_or(0),
            allocated: child.allocated(),
            reachable: child.reachable(),
        }
    }

    fn attach(&mut self, node: &str, child: Arc<dyn Child>, trusted: bool) -> Result<u32, String> {
        // Not in QEMU, which would fail the reads past the child's end: a
        // child smaller than the device is refused.
        match child.size() {
            Ok(s) if s < self.size => {
                return Err(format!(
                    "quorum serve: node {node} is {s} bytes, smaller than the device ({} bytes)",
                    self.size
                ));
            }
            Err(e) => return Err(format!("quorum serve: node {node}: {e}")),
            Ok(_) => {}
        }
        self.names.write().pending = Some(node.to_string());
        // R-SYNC-7: rebuilt online unless trusted (QEMU's behaviour).
        self.device.set_rebuild(!trusted);
        let r = self.device.add_child(child);
        let mut names = self.names.write();
        names.pending = None;
        let id = r.map_err(|e| e.to_string())?;
        names.by_id.insert(id.0, node.to_string());
        drop(names);
        if let Some(m) = &self.map_names {
            // Known as the command line would name it (NAME=PATH), so a
            // restart with it listed opens the map (a rebuild a crash
            // stopped resumes).
            let known = match self.opened.get(node) {
                Some(at) => crate::syncmap::identity(node, std::path::Path::new(at)),
                None => node.to_string(),
            };
            m.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((id.0, known));
        }
        if let Some(r) = &self.resyncer {
            r.poke();
        }
        Ok(id.0)
    }

    fn detach(&mut self, id: u32) -> Result<(), String> {
        self.device
            .remove_child(ChildId(id))
            .map_err(|e| e.to_string())?;
        self.names.write().by_id.remove(&id);
        Ok(())
    }

    fn children(&self) -> Vec<u32> {
        self.device.children().iter().map(|c| c.0).collect()
    }

    fn shape(&self) -> (u64, usize) {
        (self.size, self.device.config().threshold)
    }

    fn extra(&self, id: Option<u32>) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        let (Some(id), Some(map)) = (id, self.device.sync_map()) else {
            return m;
        };
        // What votes: a chunk copied counts as done before its flush.
        let stale = (0..map.chunks())
            .filter(|&c| map.is_stale(id, c))
            .map(|c| map.range_of(c).1)
            .sum::<u64>();
        let resyncing = self.resyncer.as_ref().is_some_and(|r| !r.jobs().is_empty());
        let state = match (stale, resyncing) {
            (0, _) => "in-sync",
            (_, true) => "resyncing",
            (_, false) => "stale",
        };
        m.insert("x-sync".into(), json!(state));
        m.insert("x-stale-bytes".into(), json!(stale));
        m
    }

    fn jobs(&self) -> Vec<quorum_qmp::manager::JobInfo> {
        self.resyncer.as_ref().map(|r| r.jobs()).unwrap_or_default()
    }

    fn job(
        &mut self,
        device: &str,
        op: quorum_qmp::manager::JobOp,
    ) -> Option<Result<(), quorum_qmp::message::QmpError>> {
        self.resyncer.as_ref()?.control(device, op)
    }

    fn quit(&mut self) {
        // As qemu-storage-daemon: the export goes first, then the reply.
        export_deleted(&self.hub, &self.export_id, &self.export_deleted);
        (self.stop)();
    }
}
