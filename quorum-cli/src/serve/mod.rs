//! `quorum serve`: the quorum device as an NBD export.
//!
//! One [`Device`] is shared by every client; each connection has its own
//! thread, which runs the handshake ([`quorum_nbd::server::Handshake`]) and
//! then the client's requests one after another, checked by
//! [`quorum_nbd::server::check`] before they reach the device. A client that
//! misbehaves — garbage, a truncated or oversized option, a request past the
//! end or over the payload limit — gets an error reply or has its connection
//! closed; nothing it sends can stop the server or touch other connections.

use std::io::{self, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Args;
use quorum_nbd::blocking::{Backend, Conn, ReadSink, Workers, serve_connection};
use quorum_nbd::server::Export;
use quorum_nbd::wire::{err, nbd_error};
use quorum_proto::{Config, Event, ReadPattern};
use quorum_sync::{Child, Device, InjectChild, InjectRule, ReadError};

use crate::io::{Bad, DeviceOpts, child_args, inject_spec, now, open_child};

mod managed;
mod qmp;
mod resync;

use managed::{Managed, SharedNames, export_deleted, proto_of};
use quorum_qmp::manager::Manager;
use quorum_qmp::node::Spec;
use quorum_qmp::session::Version;

/// `quorum serve --listen ADDR CHILD...`
#[derive(Args, Debug)]
#[command(after_help = "\
Children are raw image paths or NBD exports (nbd://HOST:PORT/EXPORT,
nbd+unix:///EXPORT?socket=PATH), each optionally NAME=CHILD.

Example:
  quorum serve --listen 127.0.0.1:10809 --events - a.img b.img c.img
  qemu-io -f raw -c 'read -P 0 0 4k' nbd://127.0.0.1:10809")]
pub(crate) struct ServeArgs {
    /// Children: raw image paths or NBD addresses, or NAME=CHILD to name a
    /// child's node (default `children.N`).
    #[arg(value_name = "CHILD", required = true)]
    children: Vec<String>,
    /// Where to listen: HOST:PORT (port 0 picks a free one) or unix:PATH.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10809")]
    listen: String,
    /// How many children must agree [default: a majority, N/2+1].
    #[arg(long, value_name = "N")]
    threshold: Option<String>,
    #[command(flatten)]
    opts: DeviceOpts,
    /// The export's name (clients asking for "" get it too).
    #[arg(long, value_name = "NAME", default_value = "")]
    export_name: String,
    /// Export read-only: writes get EPERM; children are opened read-only
    /// unless --rewrite-corrupted must repair them.
    #[arg(long)]
    read_only: bool,
    /// Connections served at once; more are closed at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_connections: usize,
    /// A QMP monitor (QEMU's management protocol) on unix:PATH or a
    /// loopback HOST:PORT: add and remove children, query them, receive
    /// events, quit. As powerful as root over the data.
    #[arg(long, value_name = "ADDR")]
    qmp: Option<String>,
    /// The export's id in QMP events (`BLOCK_EXPORT_DELETED`).
    #[arg(long, value_name = "ID", default_value = "export0")]
    export_id: String,
    #[command(flatten)]
    map: crate::syncmap::MapOpts,
    /// The resync's speed limit in bytes per second (suffixes K M G; 0: no
    /// limit); changeable over QMP with block-job-set-speed.
    #[arg(long, value_name = "RATE", default_value = "200M")]
    resync_speed: String,
}

/// The largest READ or WRITE payload (QEMU's server takes 32 MiB too).
const MAX_PAYLOAD: u32 = 32 << 20;

/// Runs `quorum serve` until killed.
pub(crate) fn serve(args: ServeArgs) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Bad(m)) => {
            eprintln!("quorum serve: {m}");
            ExitCode::FAILURE
        }
    }
}

/// The device, its size, and what a monitor needs: each child's node
/// (spec and handle, child ids 0..n) and the names events carry.
struct Opened {
    device: Device,
    size: u64,
    nodes: Vec<(Spec, Arc<dyn Child>, u32)>,
    names: SharedNames,
    /// With `--map`: the children's names the map file records.
    map_names: Option<Arc<std::sync::Mutex<quorum_sync::sync::Names>>>,
}

fn open_device(args: &ServeArgs, hub: Option<&Arc<qmp::Hub>>) -> Result<Opened, Bad> {
    let children = child_args(&args.children)?;
    let threshold = match &args.threshold {
        None => crate::replicas::majority(children.len()),
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| format!("--threshold: '{t}' is not a number"))?,
    };
    let read_pattern = match &args.opts.read_pattern {
        None => ReadPattern::Quorum,
        Some(p) => p
            .parse::<ReadPattern>()
            .map_err(|e| format!("--read-pattern: {e} (got '{p}')"))?,
    };
    let config = Config::new(children.len(), threshold)
        .with_read_pattern(read_pattern)
        .with_rewrite_corrupted(args.opts.rewrite_corrupted)
        .with_early_quorum(args.opts.early_quorum)
        .with_blkverify(args.opts.blkverify);
    config.validate(16).map_err(|e| e.to_string())?;
    let mut rules: Vec<Vec<InjectRule>> = vec![Vec::new(); children.len()];
    for spec in &args.opts.inject {
        let (child, rule) = inject_spec(spec, &children)?;
        rules[child].push(rule);
    }
    let mut kids: Vec<Arc<dyn Child>> = Vec::new();
    let mut nodes = Vec::new();
    let mut sizes = Vec::new();
    for (c, rules) in children.iter().zip(rules) {
        let child =
            // Repairs write to the children even when the export is read-only.
            open_child(&c.path, !args.read_only || args.opts.rewrite_corrupted)
                .map_err(|Bad(m)| format!("{}: {m}", c.name))?;
        let size = child
            .size()
            .map_err(|e| format!("{}: {}", c.name, crate::replicas::io_msg(&e)))?;
        sizes.push((c.name.clone(), size));
        let child: Arc<dyn Child> = if rules.is_empty() {
            child
        } else {
            Arc::new(InjectChild::new(child, rules))
        };
        let spec = Spec {
            name: c.name.clone(),
            raw: false,
            proto: proto_of(&c.path),
            read_only: args.read_only && !args.opts.rewrite_corrupted,
        };
        nodes.push((spec, child.clone(), kids.len() as u32));
        kids.push(child);
    }
    if sizes.iter().any(|(_, s)| *s != sizes[0].1) {
        let list: Vec<String> = sizes
            .iter()
            .map(|(n, s)| format!("{n} is {s} bytes"))
            .collect();
        return Err(Bad(format!("children differ in size: {}", list.join(", "))));
    }
    let size = sizes[0].1;
    let ids: quorum_sync::sync::Names = children
        .iter()
        .enumerate()
        .map(|(i, c)| (i as u32, crate::syncmap::identity(&c.name, &c.path)))
        .collect();
    let (device, map_names) = crate::syncmap::open_device(config, kids, ids, size, &args.map)?;
    let names = SharedNames::default();
    {
        let mut n = names.0.write().unwrap_or_else(|p| p.into_inner());
        n.device = args.opts.node_name.clone();
        for (i, c) in children.iter().enumerate() {
            n.by_id.insert(i as u32, c.name.clone());
        }
    }
    let mut file: Option<Box<dyn Write + Send>> = match &args.opts.events {
        None => None,
        Some(path) if path == "-" => Some(Box::new(io::stdout())),
        Some(path) => {
            Some(Box::new(std::fs::File::create(path).map_err(|e| {
                format!("--events: cannot create '{path}': {e}")
            })?))
        }
    };
    if file.is_some() || hub.is_some() {
        let (names, hub) = (names.clone(), hub.cloned());
        device.set_event_sink(Box::new(move |_, ev: &Event| {
            let ts = now();
            if let Some(out) = &mut file {
                // Every event, unthrottled, in SPEC R-EVENT-4's shape.
                let mut line = String::new();
                let _ = ev.write_qmp(&mut line, &names, ts);
                line.push('\n');
                let _ = out.write_all(line.as_bytes());
                let _ = out.flush();
            }
            if let Some(hub) = &hub {
                let child = match ev {
                    Event::ReportBad { child, .. } => names.child(*child),
                    Event::Failure { .. } => String::new(),
                };
                let data = quorum_qmp::event::quorum_data(ev, &names.device(), &child);
                hub.publish(quorum_qmp::event::outgoing(ev.name(), data, ts));
            }
        }));
    }
    Ok(Opened {
        device,
        size,
        nodes,
        names,
        map_names,
    })
}

/// A listening socket of either kind.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

fn run(args: &ServeArgs) -> Result<(), Bad> {
    let monitor = args.qmp.as_deref().map(qmp::bind).transpose()?;
    let hub = monitor.as_ref().map(|_| qmp::Hub::start());
    let speed = crate::replicas::parse_size(&args.resync_speed).ok_or_else(|| {
        format!(
            "--resync-speed: '{}' is not a rate in bytes per second",
            args.resync_speed
        )
    })?;
    let Opened {
        device,
        size,
        nodes,
        names,
        map_names,
    } = open_device(args, hub.as_ref())?;
    let export = Export {
        name: args.export_name.clone(),
        size,
        read_only: args.read_only,
        max_payload: MAX_PAYLOAD,
    };
    let unix_path = args.listen.strip_prefix("unix:").map(str::to_string);
    let (listener, url) = if let Some(path) = &unix_path {
        use std::os::unix::fs::FileTypeExt;
        // A stale socket from an earlier run is replaced; anything else is kept.
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(path);
        }
        let l = UnixListener::bind(path).map_err(|e| format!("--listen {path}: {e}"))?;
        let url = format!("nbd+unix:///{}?socket={path}", args.export_name);
        (Listener::Unix(l), url)
    } else {
        let l = TcpListener::bind(&args.listen)
            .map_err(|e| format!("--listen {}: {e}", args.listen))?;
        let a = l.local_addr().map_err(|e| e.to_string())?;
        (Listener::Tcp(l), format!("nbd://{a}/{}", args.export_name))
    };
    let stop = Stop::new(&listener)?;
    let mut monitor_path: Option<String> = None;
    stop.on_signals()?;
    // Tests and scripts read this line to learn the port.
    println!("quorum serve: listening on {url} ({size} bytes)");
    let _ = io::stdout().flush();
    let device = Arc::new(device);
    let resyncer = args
        .map
        .map
        .as_ref()
        .map(|_| resync::Resyncer::start(device.clone(), hub.clone(), speed));
    let export_gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let (Some(listener), Some(hub)) = (monitor, &hub) {
        let stopper = stop.clone();
        let managed = Managed {
            device: device.clone(),
            names,
            hub: hub.clone(),
            size,
            writable: !args.read_only || args.opts.rewrite_corrupted,
            export_id: args.export_id.clone(),
            stop: Box::new(move || stopper.request("QMP quit")),
            export_deleted: export_gone.clone(),
            resyncer: resyncer.clone(),
            map_names: map_names.clone(),
            opened: std::collections::HashMap::new(),
        };
        let version = Version {
            qemu: (10, 0, 0),
            package: format!("quorum {}", env!("CARGO_PKG_VERSION")),
        };
        let manager = Manager::new(
            managed,
            &args.opts.node_name,
            args.read_only,
            version.clone(),
            nodes,
        );
        log(&format!("QMP monitor on {}", listener.describe()));
        monitor_path = Some(listener.describe());
        qmp::spawn(
            listener,
            Arc::new(std::sync::Mutex::new(manager)),
            hub.clone(),
            version,
        );
    }
    /// A unix connection's send buffer (the kernel caps it at
    /// `net.core.wmem_max`).
    const SEND_BUFFER: usize = 1 << 20;
    let backend: Arc<dyn Backend> = Arc::new(Served(device.clone()));
    let workers = Arc::new(Workers::new());
    let active = Arc::new(AtomicUsize::new(0));
    let mut conns: Vec<Connection> = Vec::new();
    let mut n = 0u64;
    while !stop.requested() {
        let accepted = match &listener {
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                let shut = s.try_clone().ok();
                let conn: Box<dyn Conn> = Box::new(s);
                let shut: Option<Shutdown> = shut.map(|c| {
                    Box::new(move |how| {
                        let _ = c.shutdown(how);
                    }) as Shutdown
                });
                (conn, shut)
            }),
            Listener::Unix(l) => l.accept().map(|(s, _)| {
                // Room for a pipelining client's replies (the default,
                // 208 KiB, holds three 64 KiB reads): a full socket puts
                // the replying thread to sleep until the client reads. 64K
                // reads at depth 8: 24.7k IOPS against 22.8k, 7 interleaved
                // runs each. (TCP tunes its own buffer; setting one would
                // turn that off.)
                let _ = rustix::net::sockopt::set_socket_send_buffer_size(&s, SEND_BUFFER);
                let shut = s.try_clone().ok();
                let conn: Box<dyn Conn> = Box::new(s);
                let shut: Option<Shutdown> = shut.map(|c| {
                    Box::new(move |how| {
                        let _ = c.shutdown(how);
                    }) as Shutdown
                });
                (conn, shut)
            }),
        };
        let (conn, shut) = match accepted {
            Ok(x) => x,
            Err(_) if stop.requested() => break, // woken to stop
            Err(e) => {
                accept_failed(&e);
                continue;
            }
        };
        if stop.requested() {
            break; // a client just too late
        }
        n += 1;
        conns.retain(|c| !c.handle.is_finished());
        if active.load(Ordering::SeqCst) >= args.max_connections {
            log(&format!(
                "connection {n}: refused, {} connections open",
                args.max_connections
            ));
            continue; // dropped: closed
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (backend, export, counter, workers) = (
            backend.clone(),
            export.clone(),
            Arc::clone(&active),
            workers.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("nbd-conn-{n}"))
            .spawn(move || {
                let why = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    serve_connection(conn, &export, backend, &workers)
                }))
                .unwrap_or_else(|_| "internal error".into());
                counter.fetch_sub(1, Ordering::SeqCst);
                log(&format!("connection {n}: {why}"));
            });
        match spawned {
            Ok(handle) => conns.push(Connection { handle, shut }),
            Err(_) => {
                active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
    // SIGTERM, SIGINT: no new connection; each open one serves what it has
    // read (and what its client had already sent), then ends; the children
    // are flushed.
    drop(listener);
    if let Some(path) = &unix_path {
        let _ = std::fs::remove_file(path);
    }
    if let Some(hub) = &hub {
        export_deleted(hub, &args.export_id, &export_gone);
    }
    let open = conns.len();
    for c in &conns {
        if let Some(shut) = &c.shut {
            shut(std::net::Shutdown::Read);
        }
    }
    // A client that does not read its replies would hold its connection
    // (and the exit) forever: after the grace period its stream is cut.
    // Its requests still run to their end; only their replies are lost.
    let t = std::time::Instant::now();
    while conns.iter().any(|c| !c.handle.is_finished()) && t.elapsed() < STOP_GRACE {
        std::thread::sleep(Duration::from_millis(10));
    }
    for c in &conns {
        if let (false, Some(shut)) = (c.handle.is_finished(), &c.shut) {
            log("stopping: a client that reads no replies is cut off");
            shut(std::net::Shutdown::Both);
        }
    }
    for c in conns {
        let _ = c.handle.join();
    }
    if let Some(r) = &resyncer {
        r.shutdown();
    }
    let flushed = match device.flush() {
        Ok(()) => "children flushed".to_string(),
        Err(e) => format!("flush failed: {e}"),
    };
    if args.map.map.is_some() {
        device.write_map();
    }
    log(&format!(
        "stopped: {open} connection(s) finished, {flushed}"
    ));
    if let Some(hub) = &hub {
        hub.end();
    }
    if let Some(p) = monitor_path
        .as_deref()
        .and_then(|m| m.strip_prefix("unix:"))
    {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// Ends a connection's stream: its reading side (it serves what it has,
/// then closes), or both.
type Shutdown = Box<dyn Fn(std::net::Shutdown) + Send>;

/// How long connections have, once a stop is asked for, to answer what
/// they have read before their streams are cut.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A connection's thread and how to make it end.
struct Connection {
    handle: std::thread::JoinHandle<()>,
    shut: Option<Shutdown>,
}

/// A request to stop serving (SIGTERM, SIGINT, QMP `quit`): a flag the
/// accept loop reads, and the listening socket, shut down to wake it.
#[derive(Clone)]
struct Stop {
    flag: Arc<std::sync::atomic::AtomicBool>,
    wake: Arc<std::os::fd::OwnedFd>,
}

impl Stop {
    fn new(listener: &Listener) -> Result<Stop, Bad> {
        // The same socket under another descriptor. Shutting it down wakes
        // an `accept` blocked on it (EINVAL) whatever became of its address:
        // connecting to the address, as before, did nothing when the socket
        // file had been removed or taken over by another server.
        let wake = match listener {
            Listener::Tcp(l) => l.try_clone().map(std::os::fd::OwnedFd::from),
            Listener::Unix(l) => l.try_clone().map(std::os::fd::OwnedFd::from),
        }
        .map_err(|e| format!("--listen: {e}"))?;
        Ok(Stop {
            flag: Arc::default(),
            wake: Arc::new(wake),
        })
    }

    fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Stops the server (once); `why` goes to the log.
    fn request(&self, why: &str) {
        if self.flag.swap(true, Ordering::SeqCst) {
            return;
        }
        log(&format!(
            "{why}: stopping (requests in flight finish, children are flushed)"
        ));
        let _ = rustix::net::shutdown(&*self.wake, rustix::net::Shutdown::Both);
    }

    /// SIGTERM and SIGINT stop the server (signal-hook: the handler only
    /// writes to a pipe; a thread of ours does the rest).
    fn on_signals(&self) -> Result<(), Bad> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
            .map_err(|e| format!("cannot handle signals: {e}"))?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    me.request(if sig == SIGINT { "SIGINT" } else { "SIGTERM" });
                }
            })
            .map_err(|e| format!("cannot handle signals: {e}"))?;
        Ok(())
    }
}

/// One line on stderr; a closed stderr is no reason to stop serving.
fn log(line: &str) {
    let _ = writeln!(io::stderr(), "quorum serve: {line}");
}

/// Out of descriptors or memory: say so, and give the system a moment
/// rather than spinning.
fn accept_failed(e: &io::Error) {
    log(&format!("accept: {e}"));
    std::thread::sleep(std::time::Duration::from_millis(100));
}

/// The device as the NBD server's backend: errnos become NBD errors as the
/// protocol document asks ([`nbd_error`]); a blkverify mismatch is EIO,
/// with QEMU's message on stderr.
struct Served(Arc<Device>);

fn nbd(r: Result<(), quorum_proto::Errno>) -> Result<(), u32> {
    r.map_err(|e| nbd_error(e.0))
}

/// A device read's error as the NBD error its client gets; a contents
/// mismatch is said on stderr too.
fn read_error(offset: u64, len: usize, r: Result<(), ReadError>) -> Result<(), u32> {
    match r {
        Ok(()) => Ok(()),
        Err(ReadError::Io(e)) => Err(nbd_error(e.0)),
        Err(ReadError::ContentsMismatch { offset: at }) => {
            let _ = writeln!(
                io::stderr(),
                "quorum: offset={offset} bytes={len} contents mismatch at offset {at}"
            );
            Err(err::EIO)
        }
    }
}

impl Backend for Served {
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), u32> {
        let len = buf.len();
        read_error(offset, len, self.0.read(offset, buf))
    }
    fn read_with(&self, offset: u64, len: usize, f: &mut ReadSink<'_>) {
        self.0.read_with(offset, len, |r| match r {
            Ok(data) => f(Ok(data)),
            Err(e) => f(read_error(offset, len, Err(e)).map(|()| &[][..])),
        });
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), u32> {
        nbd(self.0.write(offset, data))
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), u32> {
        nbd(self.0.write_zeroes(offset, len))
    }
    fn flush(&self) -> Result<(), u32> {
        nbd(self.0.flush())
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<(u64, bool), u32> {
        self.0
            .block_status(offset, len)
            .map(|e| (e.len, e.zero))
            .map_err(|e| nbd_error(e.0))
    }
}
