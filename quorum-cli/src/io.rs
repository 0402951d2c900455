//! `quorum io`: qemu-io's commands and messages over a quorum of raw images.
//!
//! Everything is checked before anything runs: the options, every `-c`
//! command (`parse`), every `--inject-error` rule, the children (opened, and
//! equal in size) and every command's range against the device size. Bad
//! input is one line on stderr and exit status 1, with no child written.
//! Then the commands run in order, printing what qemu-io prints; like
//! qemu-io, a failed command does not stop the others and makes the exit
//! status 1, and a blkverify mismatch prints QEMU's message and exits 1 at once.
//!
//! Like qemu-io (which opens images in writethrough mode), every successful
//! write is followed by a flush of the device, and the write fails with the
//! flush's error if that flush fails; and like QEMU closing the device, a
//! writable device is flushed once more before exiting (its result only
//! shows in events, for a child whose earlier flush failed).

mod parse;
mod report;

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use quorum_proto::{ChildId, Config, Errno, Event, NodeNames, ReadPattern, Timestamp};
use quorum_sync::{Child, Device, FileChild, InjectChild, InjectEvent, InjectRule, ReadError};

use parse::Cmd;

/// `quorum io CHILD... -c CMD...`
#[derive(Args, Debug)]
#[command(after_help = "\
Commands (qemu-io's language): read [-qv] [-P pattern] off len, \
write [-qz] [-P pattern] off len, flush, length. Sizes take qemu-io's \
suffixes (512, 4k, 1.5M, 0x1000).

Example:
  quorum io --threshold 2 a.img b.img c.img -c 'write -P 0xab 0 4k' -c 'read -P 0xab 0 4k'")]
pub(crate) struct IoArgs {
    /// Children: raw image paths, or NAME=PATH to name a child's node
    /// (default `children.N`).
    #[arg(value_name = "CHILD")]
    children: Vec<String>,
    /// A qemu-io command; repeat to run several, in order.
    #[arg(
        short = 'c',
        long = "cmd",
        value_name = "CMD",
        allow_hyphen_values = true
    )]
    commands: Vec<String>,
    /// How many children must agree (QEMU's vote-threshold). Required.
    #[arg(long, value_name = "N")]
    threshold: Option<String>,
    #[command(flatten)]
    pub(crate) opts: DeviceOpts,
    #[command(flatten)]
    map: crate::syncmap::MapOpts,
}

/// The device options `quorum io` and `quorum serve` share (QEMU's quorum
/// options, the node name, events and error injection).
#[derive(Args, Debug)]
pub(crate) struct DeviceOpts {
    /// `quorum` (vote, default) or `fifo` (first child that answers).
    #[arg(long, value_name = "PATTERN")]
    pub(crate) read_pattern: Option<String>,
    /// Rewrite the children outvoted by a read with the winning data.
    #[arg(long)]
    pub(crate) rewrite_corrupted: bool,
    /// Two children, threshold 2: a difference between them on a read is
    /// fatal (`quorum io` exits 1, `quorum serve` fails the read).
    #[arg(long)]
    pub(crate) blkverify: bool,
    /// Not in QEMU: a read answers as soon as threshold children agree; the
    /// others are still compared, reported and rewritten afterwards.
    #[arg(long)]
    pub(crate) early_quorum: bool,
    /// The device's node name, `reference` in QUORUM_FAILURE.
    #[arg(long, value_name = "NAME", default_value = "quorum")]
    pub(crate) node_name: String,
    /// Write every event as a QMP JSON line to FILE (`-`: standard output).
    #[arg(long, value_name = "FILE")]
    pub(crate) events: Option<String>,
    // Not a doc comment: rustdoc would read `[:once]` as a link.
    #[arg(
        long = "inject-error",
        value_name = "SPEC",
        help = "Fail a child's I/O as QEMU's blkdebug would: \
                CHILD:read|write|flush:ERRNO[:SECTOR][:once], CHILD a name or an index"
    )]
    pub(crate) inject: Vec<String>,
}

/// Bad input: one line, exit status 1.
pub(crate) struct Bad(pub(crate) String);

impl<T: fmt::Display> From<T> for Bad {
    fn from(m: T) -> Bad {
        Bad(m.to_string())
    }
}

/// Runs `quorum io`.
pub(crate) fn io(args: IoArgs) -> ExitCode {
    match prepare(&args) {
        Ok(run) => run.execute(),
        Err(Bad(m)) => {
            eprintln!("quorum io: {m}");
            ExitCode::FAILURE
        }
    }
}

/// A child as given on the command line.
pub(crate) struct ChildArg {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
}

/// Node names for events: the device's and each child's.
pub(crate) struct Names {
    pub(crate) device: String,
    pub(crate) children: Vec<String>,
}

impl NodeNames for Names {
    fn write_device(&self, w: &mut dyn fmt::Write) -> fmt::Result {
        w.write_str(&self.device)
    }
    fn write_child(&self, child: ChildId, w: &mut dyn fmt::Write) -> fmt::Result {
        match self.children.get(child.0 as usize) {
            Some(n) => w.write_str(n),
            None => write!(w, "{child}"),
        }
    }
}

/// Everything checked, ready to run.
struct Run {
    device: Device,
    commands: Vec<Cmd>,
    size: u64,
    /// Opened for writing: flush once more before exiting, as QEMU does
    /// when it closes the device.
    writable: bool,
    events: Option<Arc<Mutex<Box<dyn Write + Send>>>>,
}

fn prepare(args: &IoArgs) -> Result<Run, Bad> {
    // Options.
    let threshold = match &args.threshold {
        None => return Err(Bad("--threshold N is required".into())),
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| format!("--threshold: '{t}' is not a number"))?,
    };
    let read_pattern = match &args.opts.read_pattern {
        None => ReadPattern::Quorum,
        Some(p) => p
            .parse::<ReadPattern>()
            .map_err(|e| format!("can't open: {e} (got '{p}')"))?,
    };
    // Commands.
    if args.commands.is_empty() {
        return Err(Bad("no command given (-c CMD)".into()));
    }
    let commands = args
        .commands
        .iter()
        .map(|c| parse::parse(c).map_err(|e| format!("-c '{c}': {e}")))
        .collect::<Result<Vec<Cmd>, String>>()?;
    // Children and configuration.
    let children = child_args(&args.children)?;
    let config = Config::new(children.len(), threshold)
        .with_read_pattern(read_pattern)
        .with_rewrite_corrupted(args.opts.rewrite_corrupted)
        .with_early_quorum(args.opts.early_quorum)
        .with_blkverify(args.opts.blkverify);
    config
        .validate(16)
        .map_err(|e| format!("can't open: {e}"))?;
    let mut rules: Vec<Vec<InjectRule>> = vec![Vec::new(); children.len()];
    for spec in &args.opts.inject {
        let (child, rule) = inject_spec(spec, &children)?;
        rules[child].push(rule);
    }
    // Read-only unless something may write: a write command, or a read
    // that may rewrite an outvoted child.
    // (With a map, reads settle: they may write too.)
    let writable =
        args.opts.rewrite_corrupted || commands.iter().any(Cmd::writes) || args.map.map.is_some();
    let mut kids: Vec<Arc<dyn Child>> = Vec::new();
    let mut sizes = Vec::new();
    for (c, rules) in children.iter().zip(rules) {
        let file = open_child(&c.path, writable)?;
        let size = file
            .size()
            .map_err(|e| format!("can't open: {}: {}", c.path.display(), Errno::from(&e)))?;
        sizes.push(size);
        kids.push(if rules.is_empty() {
            file
        } else {
            Arc::new(InjectChild::new(file, rules))
        });
    }
    if let Some(i) = sizes.iter().position(|&s| s != sizes[0]) {
        return Err(Bad(format!(
            "can't open: Could not refresh total sector count: {} \
             (children differ in size: {} is {} bytes, {} is {} bytes)",
            Errno::EIO,
            children[0].name,
            sizes[0],
            children[i].name,
            sizes[i]
        )));
    }
    let size = sizes[0];
    for (c, text) in commands.iter().zip(&args.commands) {
        if let Some((offset, len)) = c.range() {
            if offset.checked_add(len).is_none_or(|end| end > size) {
                return Err(Bad(format!(
                    "-c '{text}': {offset} + {len} bytes is past the end of the device \
                     ({size} bytes; qemu-io: Input/output error)"
                )));
            }
        }
    }
    // Events.
    let events: Option<Box<dyn Write + Send>> = match args.opts.events.as_deref() {
        None => None,
        Some("-") => Some(Box::new(io::stdout())),
        Some(path) => Some(Box::new(io::BufWriter::new(File::create(path).map_err(
            |e| format!("--events: cannot create '{path}': {}", Errno::from(&e)),
        )?))),
    };
    let ids = children
        .iter()
        .enumerate()
        .map(|(i, c)| (i as u32, crate::syncmap::identity(&c.name, &c.path)))
        .collect();
    let (device, _) = crate::syncmap::open_device(config, kids, ids, size, &args.map)?;
    let events = events.map(|w| Arc::new(Mutex::new(w)));
    if let Some(out) = &events {
        let out = Arc::clone(out);
        let names = Names {
            device: args.opts.node_name.clone(),
            children: children.iter().map(|c| c.name.clone()).collect(),
        };
        device.set_event_sink(Box::new(move |_, ev: &Event| {
            let mut line = String::new();
            let _ = ev.write_qmp(&mut line, &names, now());
            let mut w = out.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(w, "{line}");
            let _ = w.flush();
        }));
    }
    Ok(Run {
        device,
        commands,
        size,
        writable,
        events,
    })
}

/// Opens a child: a raw image file (QEMU's message when that fails) or an
/// NBD address.
pub(crate) fn open_child(path: &std::path::Path, writable: bool) -> Result<Arc<dyn Child>, Bad> {
    if path.to_str().is_some_and(quorum_nbd::NbdAddr::is_nbd) {
        return crate::replicas::open_child(path, writable, false)
            .map_err(|e| Bad(format!("can't open: {e}")));
    }
    let file = FileChild::open(path, writable, false).map_err(|e| {
        format!(
            "can't open: Could not open '{}': {}",
            path.display(),
            Errno::from(&e)
        )
    })?;
    Ok(Arc::new(file))
}

pub(crate) fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs(),
        microseconds: d.subsec_micros(),
    }
}

/// `PATH` or `NAME=PATH` (a `NAME` has no `/`); default names `children.N`.
pub(crate) fn child_args(raw: &[String]) -> Result<Vec<ChildArg>, Bad> {
    if raw.is_empty() {
        return Err(Bad(
            "no children given: quorum io CHILD... --threshold N -c CMD".into(),
        ));
    }
    let mut out: Vec<ChildArg> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let (name, path) = match r.split_once('=') {
            Some((n, p)) if !n.contains('/') => {
                if n.is_empty() || p.is_empty() {
                    return Err(Bad(format!("child '{r}': expected NAME=PATH")));
                }
                (n.to_string(), p)
            }
            _ => (format!("children.{i}"), r.as_str()),
        };
        if out.iter().any(|c| c.name == name) {
            return Err(Bad(format!("two children are named '{name}'")));
        }
        out.push(ChildArg {
            name,
            path: PathBuf::from(path),
        });
    }
    Ok(out)
}

/// `CHILD:read|write|flush:ERRNO[:SECTOR][:once]` → (child index, rule).
pub(crate) fn inject_spec(spec: &str, children: &[ChildArg]) -> Result<(usize, InjectRule), Bad> {
    let bad = |why: &str| {
        Bad(format!(
            "--inject-error '{spec}': {why} (expected CHILD:read|write|flush:ERRNO[:SECTOR][:once])"
        ))
    };
    let parts: Vec<&str> = spec.split(':').collect();
    if !(3..=5).contains(&parts.len()) {
        return Err(bad("wrong number of fields"));
    }
    let child = children
        .iter()
        .position(|c| c.name == parts[0])
        .or_else(|| {
            parts[0]
                .parse::<usize>()
                .ok()
                .filter(|&i| i < children.len())
        })
        .ok_or_else(|| bad(&format!("no child named or numbered '{}'", parts[0])))?;
    let event = match parts[1] {
        "read" => InjectEvent::Read,
        "write" => InjectEvent::Write,
        "flush" => InjectEvent::Flush,
        other => return Err(bad(&format!("unknown operation '{other}'"))),
    };
    let errno = match parts[2].parse::<i32>() {
        Ok(n) if n > 0 => Errno(n),
        _ => return Err(bad(&format!("'{}' is not a positive errno", parts[2]))),
    };
    let mut sector = None;
    let mut once = false;
    for (i, p) in parts.iter().enumerate().skip(3) {
        if *p == "once" && i == parts.len() - 1 {
            once = true;
        } else if i == 3 {
            sector = Some(
                p.parse::<u64>()
                    .map_err(|_| bad(&format!("'{p}' is not a sector number")))?,
            );
        } else {
            return Err(bad(&format!("unexpected '{p}'")));
        }
    }
    Ok((
        child,
        InjectRule {
            event,
            errno,
            sector,
            once,
        },
    ))
}

impl Run {
    fn execute(self) -> ExitCode {
        let mut ok = true;
        let stdout = io::stdout();
        for cmd in &self.commands {
            match self.one(cmd) {
                Step::Ok(text) => print!("{text}"),
                Step::Failed(text) => {
                    print!("{text}");
                    ok = false;
                }
                Step::Fatal(msg) => {
                    let _ = stdout.lock().flush();
                    self.flush_events();
                    eprintln!("{msg}");
                    return ExitCode::FAILURE;
                }
            }
            let _ = stdout.lock().flush();
        }
        if self.writable {
            // QEMU flushes on close; the result changes nothing but events.
            let _ = self.device.flush();
        }
        // With --map: the marks as they stand, written.
        self.device.write_map();
        self.flush_events();
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    fn flush_events(&self) {
        if let Some(e) = &self.events {
            let _ = e.lock().unwrap_or_else(|p| p.into_inner()).flush();
        }
    }

    fn one(&self, cmd: &Cmd) -> Step {
        match *cmd {
            Cmd::Read {
                offset,
                len,
                pattern,
                verbose,
                quiet,
            } => {
                let mut buf = vec![0u8; len as usize];
                let t = Instant::now();
                let r = if len == 0 {
                    Ok(())
                } else {
                    self.device.read(offset, &mut buf)
                };
                let t = t.elapsed();
                match r {
                    Err(ReadError::Io(e)) => Step::Failed(format!("read failed: {e}\n")),
                    Err(ReadError::ContentsMismatch { offset: at }) => Step::Fatal(format!(
                        "quorum: offset={offset} bytes={len} contents mismatch at offset {at}"
                    )),
                    Ok(()) => {
                        let mut out = String::new();
                        let mut good = true;
                        if let Some(p) = pattern {
                            if buf.iter().any(|&b| b != p) {
                                out += &format!(
                                    "Pattern verification failed at offset {offset}, {len} bytes\n"
                                );
                                good = false;
                            }
                        }
                        if !quiet {
                            if verbose {
                                out += &report::dump(&buf, offset);
                            }
                            out += &report::report("read", offset, len, t);
                        }
                        if good {
                            Step::Ok(out)
                        } else {
                            Step::Failed(out)
                        }
                    }
                }
            }
            Cmd::Write {
                offset,
                len,
                fill,
                quiet,
            } => {
                let t = Instant::now();
                let r = if len == 0 {
                    Ok(())
                } else {
                    match fill {
                        Some(b) => self.device.write(offset, &vec![b; len as usize]),
                        None => self.device.write_zeroes(offset, len),
                    }
                    // Writethrough, as qemu-io: flush after a successful write.
                    .and_then(|()| self.device.flush())
                };
                let t = t.elapsed();
                match r {
                    Err(e) => Step::Failed(format!("write failed: {e}\n")),
                    Ok(()) if quiet => Step::Ok(String::new()),
                    Ok(()) => Step::Ok(report::report("wrote", offset, len, t)),
                }
            }
            // qemu-io prints nothing for a flush, even a failed one.
            Cmd::Flush => match self.device.flush() {
                Ok(()) => Step::Ok(String::new()),
                Err(_) => Step::Failed(String::new()),
            },
            Cmd::Length => Step::Ok(format!("{}\n", report::cvtstr(self.size as f64))),
        }
    }
}

/// What one command printed and how it ended.
enum Step {
    Ok(String),
    Failed(String),
    /// Print on stderr and exit 1 now (blkverify).
    Fatal(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kids(n: usize) -> Vec<ChildArg> {
        ok(child_args(
            &(0..n).map(|i| format!("/x/{i}.img")).collect::<Vec<_>>(),
        ))
    }

    fn ok<T>(r: Result<T, Bad>) -> T {
        r.map_err(|b| b.0).expect("accepted")
    }

    #[test]
    fn children_are_named_by_default_or_by_name() {
        let c = ok(child_args(&["a=/x/a.img".into(), "/y=z/b.img".into()]));
        assert_eq!(c[0].name, "a");
        assert_eq!(c[0].path, PathBuf::from("/x/a.img"));
        assert_eq!(c[1].name, "children.1");
        assert_eq!(c[1].path, PathBuf::from("/y=z/b.img"));
        assert!(child_args(&["a=1".into(), "a=2".into()]).is_err());
        assert!(child_args(&[]).is_err());
    }

    #[test]
    fn injection_specs() {
        let c = kids(3);
        let (i, r) = ok(inject_spec("1:read:5", &c));
        assert_eq!(i, 1);
        assert_eq!(
            r,
            InjectRule {
                errno: Errno::EIO,
                ..rule()
            }
        );
        let (i, r) = ok(inject_spec("children.2:flush:28:once", &c));
        assert_eq!(i, 2);
        assert_eq!(r.event, InjectEvent::Flush);
        assert!(r.once && r.sector.is_none());
        let (_, r) = ok(inject_spec("0:write:5:8:once", &c));
        assert_eq!((r.sector, r.once), (Some(8), true));
        for bad in [
            "3:read:5",
            "x:read:5",
            "0:discard:5",
            "0:read:0",
            "0:read:x",
            "0:read:5:x",
            "0:read:5:once:1",
            "0:read",
            "0:read:5:1:2:3",
        ] {
            assert!(inject_spec(bad, &c).is_err(), "{bad}");
        }
    }

    fn rule() -> InjectRule {
        InjectRule {
            event: InjectEvent::Read,
            errno: Errno::EIO,
            sector: None,
            once: false,
        }
    }

    #[test]
    fn names_come_from_the_command_line() {
        let n = Names {
            device: "dev".into(),
            children: vec!["a".into()],
        };
        let ev = Event::Failure {
            sector_num: 0,
            sectors_count: 1,
        };
        let mut s = String::new();
        let _ = ev.write_qmp(&mut s, &n, Timestamp::default());
        assert!(s.contains("\"reference\": \"dev\""), "{s}");
    }
}
