//! `--map FILE` (SPEC R-SYNC) for `quorum serve`, `quorum io` and
//! `quorum scrub`: the map file opened (or created) for a device and its
//! children, and the device built over it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use quorum_proto::Config;
use quorum_sync::sync::{FileSink, MapError, MapFile, Names, SyncMap};
use quorum_sync::{Child, Device};

use crate::io::Bad;

/// The children's names a map file records, shared with whoever adds
/// children at runtime.
pub(crate) type SharedNames = Arc<Mutex<Names>>;

/// How a map file knows a child: its node name and where it is
/// (`NAME=PATH` or `NAME=nbd://...`). Another child at the same place in
/// the list is another child: its map is refused.
pub(crate) fn identity(name: &str, path: &Path) -> String {
    let mut id = format!("{name}={}", path.display());
    // The file keeps so many bytes of it: compare what it keeps.
    let mut cut = id.len().min(quorum_sync::sync::file::MAX_NAME);
    while !id.is_char_boundary(cut) {
        cut -= 1;
    }
    id.truncate(cut);
    id
}

/// The map options every command shares.
#[derive(Args, Debug, Default)]
pub(crate) struct MapOpts {
    /// Sync tracking (SPEC R-SYNC): the map of stale and unsettled chunks,
    /// kept in FILE (created when missing). A child that misses writes is
    /// resynced on those chunks only; after a crash only the unsettled
    /// chunks are settled.
    #[arg(long, value_name = "FILE")]
    pub(crate) map: Option<PathBuf>,
    /// The chunk size of a new map (a power of two, 64K to 64M) [default: 1M].
    #[arg(long, value_name = "SIZE")]
    pub(crate) chunk_size: Option<String>,
    /// Start the map over with every chunk unsettled (a full settle pass):
    /// for a map that is damaged or belongs to other children.
    #[arg(long)]
    pub(crate) map_reset: bool,
}

/// A device over `kids` (named by `names`, ids 0.. in order) of `size`
/// bytes: with `opts.map`, sync tracking over that map file, persisted as
/// it changes; otherwise a plain device. Also the shared list of names the
/// map file records (for children added later).
pub(crate) fn open_device(
    config: Config,
    kids: Vec<Arc<dyn Child>>,
    names: Names,
    size: u64,
    opts: &MapOpts,
) -> Result<(Device, Option<SharedNames>), Bad> {
    let Some(path) = &opts.map else {
        if opts.map_reset || opts.chunk_size.is_some() {
            return Err(Bad("--map-reset and --chunk-size need --map FILE".into()));
        }
        return Ok((Device::new(config, kids)?, None));
    };
    let chunk = match &opts.chunk_size {
        None => None,
        Some(c) => Some(
            crate::replicas::parse_size(c)
                .filter(|c| {
                    c.is_power_of_two()
                        && (quorum_proto::sync::MIN_CHUNK..=quorum_proto::sync::MAX_CHUNK)
                            .contains(c)
                })
                .ok_or_else(|| {
                    format!("--chunk-size: '{c}' is not a power of two from 64K to 64M")
                })?,
        ),
    };
    let (map, file) = open_map(path, size, chunk, &names, opts.map_reset)?;
    let config = config.with_sync_tracking(map.chunk());
    let shared = Arc::new(Mutex::new(names));
    let sink = FileSink {
        file,
        names: shared.clone(),
    };
    let dev = Device::with_sync(
        config,
        kids,
        map,
        Some(Box::new(sink)),
        Duration::from_secs(1),
    )?;
    Ok((dev, Some(shared)))
}

/// Opens or creates the map file at `path` for a device of `size` bytes
/// over `names` (ids 0.., in order): the map, and the file. A map for
/// other children, another size or another chunk size is refused unless
/// `reset`, which starts it over with every chunk unsettled.
fn open_map(
    path: &Path,
    size: u64,
    chunk: Option<u64>,
    names: &Names,
    reset: bool,
) -> Result<(SyncMap, MapFile), Bad> {
    let ids: Vec<u32> = names.iter().map(|n| n.0).collect();
    let chunk_or_default = chunk.unwrap_or(1 << 20);
    let fresh = |unsettled: bool| -> Result<(SyncMap, MapFile), Bad> {
        let mut map = SyncMap::new(size, chunk_or_default, &ids);
        if unsettled {
            map.unsettle_all();
        }
        let file = MapFile::create(path, &map, names).map_err(|e| e.to_string())?;
        let g = map.generation();
        map.written(g);
        Ok((map, file))
    };
    if reset {
        return fresh(true);
    }
    if !path.exists() {
        // A new map: every child holds the same data (or the user says
        // so by starting with it); nothing to settle.
        return fresh(false);
    }
    let (file, map, found) = MapFile::open(path).map_err(|e| e.to_string())?;
    let mismatch = |why: String| Bad(MapError::Mismatch(path.to_path_buf(), why).to_string());
    if map.size() != size {
        return Err(mismatch(format!(
            "it is for a device of {} bytes, this one has {size}",
            map.size()
        )));
    }
    if let Some(c) = chunk
        && c != map.chunk()
    {
        return Err(mismatch(format!(
            "its chunks are {} bytes, --chunk-size says {c}",
            map.chunk()
        )));
    }
    let listed = |n: &Names| n.iter().map(|x| x.1.clone()).collect::<Vec<_>>().join(", ");
    let by_name: Vec<&String> = found.iter().map(|x| &x.1).collect();
    let given: Vec<&String> = names.iter().map(|x| &x.1).collect();
    if by_name != given {
        return Err(mismatch(format!(
            "it is for the children {}, not {}",
            listed(&found),
            listed(names)
        )));
    }
    // The map's ids are its own; this run numbers the children 0.. again.
    let mut renumbered = SyncMap::new(size, map.chunk(), &ids);
    renumbered.copy_marks_from(&map, &found.iter().map(|x| x.0).collect::<Vec<_>>());
    let g = renumbered.generation();
    renumbered.written(g);
    Ok((renumbered, file))
}
