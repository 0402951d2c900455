//! What carries the requests: the blocking driver, the async driver, or no
//! quorum at all (`--driver preads`, the floor to compare with). Delayed
//! children (`--delay`) are the drivers' own `DelayChild`ren.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use quorum_proto::{Config, Errno};
use quorum_sync::{Child, DelayChild, Device};
use quorum_tokio::{
    AsyncChild, AsyncDevice, Blocking, DelayChild as AsyncDelayChild, TokioFileChild,
};

use super::args::DriverArg;
use crate::replicas;

/// What carries the requests, built before the opening line is printed.
pub(super) enum Engine {
    Sync(Arc<Device>),
    Tokio(tokio::runtime::Runtime, Arc<AsyncDevice>),
    Preads(Arc<Plain>),
}

/// The children as plain files, for `--driver preads`.
pub(super) struct Plain {
    pub(super) files: Vec<File>,
    /// Each file's `--delay` (zero for none).
    pub(super) delays: Vec<Duration>,
}

/// Opens the children for `driver` (after `replicas::open_children` has
/// checked them) and builds its device.
pub(super) fn engine(
    driver: DriverArg,
    config: Config,
    specs: &[replicas::ChildSpec],
    kids: Vec<Arc<dyn Child>>,
    delays: &[Duration],
    write: bool,
    direct: bool,
) -> Result<Engine, String> {
    match driver {
        DriverArg::Sync => {
            let kids = kids
                .into_iter()
                .zip(delays)
                .map(|(k, &delay)| {
                    if delay.is_zero() {
                        k
                    } else {
                        Arc::new(DelayChild::new(k, delay)) as Arc<dyn Child>
                    }
                })
                .collect();
            let dev = Device::new(config, kids).map_err(|e| e.to_string())?;
            Ok(Engine::Sync(Arc::new(dev)))
        }
        DriverArg::Tokio => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_time()
                .build()
                .map_err(|e| format!("cannot start the tokio runtime: {}", replicas::io_msg(&e)))?;
            let children = rt.block_on(async {
                let mut out: Vec<Arc<dyn AsyncChild>> = Vec::new();
                for ((s, k), &delay) in specs.iter().zip(kids).zip(delays) {
                    let is_nbd = s.path.to_str().is_some_and(quorum_nbd::NbdAddr::is_nbd);
                    let child: Arc<dyn AsyncChild> = if is_nbd {
                        // An NBD export is a blocking child: on the blocking pool.
                        Arc::new(Blocking::new(k))
                    } else {
                        drop(k);
                        let f = TokioFileChild::open(&s.path, write, direct)
                            .await
                            .map_err(|e| s.error(&e))?;
                        Arc::new(f)
                    };
                    out.push(if delay.is_zero() {
                        child
                    } else {
                        Arc::new(AsyncDelayChild::new(child, delay))
                    });
                }
                Ok::<_, String>(out)
            })?;
            let dev = AsyncDevice::new(config, children).map_err(|e| e.to_string())?;
            Ok(Engine::Tokio(rt, Arc::new(dev)))
        }
        DriverArg::Preads => {
            drop(kids);
            let mut files = Vec::new();
            for s in specs {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(write)
                    .open(&s.path)
                    .map_err(|e| s.error(&e))?;
                files.push(f);
            }
            Ok(Engine::Preads(Arc::new(Plain {
                files,
                delays: delays.to_vec(),
            })))
        }
    }
}

/// One `--driver preads` request: the same range of every child file, one
/// after another (each after its `--delay`).
pub(super) fn plain_io(
    p: &Plain,
    bufs: &mut [Vec<u8>],
    offset: u64,
    write: bool,
) -> Result<(), String> {
    for ((f, buf), &delay) in p.files.iter().zip(bufs.iter_mut()).zip(&p.delays) {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let r = if write {
            f.write_all_at(buf, offset)
        } else {
            f.read_exact_at(buf, offset)
        };
        r.map_err(|e| match e.kind() {
            // A read past the end, as the quorum drivers word it.
            io::ErrorKind::UnexpectedEof => Errno::EIO.to_string(),
            _ => replicas::io_msg(&e),
        })?;
    }
    Ok(())
}

/// A `--driver preads` flush: `fdatasync` every file, as a file child does.
pub(super) fn plain_flush(p: &Plain) -> Result<(), String> {
    for (f, &delay) in p.files.iter().zip(&p.delays) {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        f.sync_data().map_err(|e| replicas::io_msg(&e))?;
    }
    Ok(())
}
