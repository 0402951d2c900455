//! Sync tracking's storage and work (SPEC R-SYNC): the map of marks the
//! core asks and changes ([`map`]), its file ([`file`](mod@file)), and the resync
//! scheduler ([`resync`]). The core decides; this keeps the marks and
//! walks them.

pub mod file;
pub mod map;
pub mod resync;

pub use file::{MapError, MapFile, Names};
pub use map::{Applied, Bits, SyncMap};
pub use resync::{Job, JobEvent, JobState, JobStatus, ResyncTarget};

/// Where a running device's map is persisted (a [`MapFile`] with its
/// children's names, usually).
pub trait MapSink: Send {
    /// Writes `map` durably.
    fn write(&mut self, map: &SyncMap) -> std::io::Result<()>;
}

/// A [`MapFile`] as a sink, with the names of the children it is for.
#[derive(Debug)]
pub struct FileSink {
    /// The file.
    pub file: MapFile,
    /// Children's names by id (kept up to date by whoever adds children).
    pub names: std::sync::Arc<std::sync::Mutex<Names>>,
}

impl MapSink for FileSink {
    fn write(&mut self, map: &SyncMap) -> std::io::Result<()> {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // Only the children the map has.
        let names: Names = names
            .into_iter()
            .filter(|(id, _)| map.children().any(|c| c == *id))
            .collect();
        self.file.write(map, &names)
    }
}
