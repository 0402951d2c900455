//! `quorum scrub`: vote over the whole device, region by region.
//!
//! Every region is one ordinary quorum read of the device; with `--repair`
//! the device has `rewrite-corrupted` on, so the core itself rewrites the
//! outvoted copies. The summary is built from the core's events only
//! (QUORUM_REPORT_BAD names a child that failed or was outvoted,
//! QUORUM_FAILURE a region without quorum): the CLI never compares bytes.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use quorum_proto::{Config, Event, Timestamp};
use quorum_sync::{Device, ReadError};

use crate::replicas::{self, EventLog, Names};

/// Options of `quorum scrub`.
#[derive(Args, Debug)]
#[command(after_help = "\
Exit status:
  0  every region had all children agreeing
  1  some children were outvoted or failed in some regions (with --repair,
     the outvoted copies were rewritten from the winning one)
  2  a region had no quorum (it is left as it was), or bad input
     (missing, unreadable, duplicate or different-size children, a bad
     threshold or region size), reported before anything is written

With --map FILE (which needs --repair: settling writes) only the chunks
the map marks are visited, and the status is 0 when they all settled
agreeing; 1 when a child was behind on some (they were copied to it) or
was outvoted (rewritten); 2 when chunks were left without quorum (still
marked), or on bad input: a map for other children, another size or
another chunk size, a damaged or foreign file (--map-reset starts it over).

Without --repair the children are opened read-only and never written.")]
pub(crate) struct ScrubArgs {
    /// Children: raw image files or block devices, each `PATH` or
    /// `NAME=PATH` (default name `children.N`, N counting from 0).
    #[arg(required = true, value_name = "CHILD")]
    children: Vec<String>,
    /// Rewrite outvoted copies from the winning one (rewrite-corrupted=on;
    /// children are opened read-write). Afterwards the replicas are
    /// byte-identical wherever a quorum existed.
    #[arg(long)]
    repair: bool,
    /// How many children must agree (vote-threshold) [default: a majority
    /// of the children, N/2+1]
    #[arg(long, value_name = "N")]
    threshold: Option<usize>,
    /// Bytes voted per region (suffixes k, M, G as in qemu-img).
    #[arg(long, value_name = "SIZE", default_value = "1M")]
    region_size: String,
    /// Print the summary as one JSON object on standard output.
    #[arg(long)]
    json: bool,
    /// Write every QUORUM_REPORT_BAD and QUORUM_FAILURE event as a QMP JSON
    /// line to FILE (`-`: standard output).
    #[arg(long, value_name = "FILE")]
    events: Option<String>,
    /// The device's node name (QUORUM_FAILURE's `reference`).
    #[arg(long, default_value = "quorum", value_name = "NAME")]
    node_name: String,
    /// With --map: settle and resync offline from the sync map instead of
    /// voting over the whole device — only the chunks a crash left
    /// unsettled and those stale on some child (SPEC R-SYNC-4, R-SYNC-8).
    /// Exit status then: see the command's help.
    #[command(flatten)]
    map: crate::syncmap::MapOpts,
}

/// One child's trouble in one region.
struct Bad {
    region: u64,
    offset: u64,
    len: u64,
    /// `None`: outvoted (its copy differed); else the read error.
    read_error: Option<String>,
    /// A rewrite of this copy failed, with this error.
    rewrite_error: Option<String>,
}

/// A region without quorum.
struct NoQuorum {
    region: u64,
    offset: u64,
    len: u64,
    error: String,
}

struct Report {
    size: u64,
    region_size: u64,
    regions: u64,
    threshold: usize,
    repair: bool,
    children: Vec<(replicas::ChildSpec, Vec<Bad>)>,
    no_quorum: Vec<NoQuorum>,
}

impl Report {
    fn bad_regions(&self) -> u64 {
        let mut r: Vec<u64> = self
            .children
            .iter()
            .flat_map(|(_, b)| b.iter().map(|b| b.region))
            .collect();
        r.sort_unstable();
        r.dedup();
        r.len() as u64
    }

    fn exit(&self) -> u8 {
        if !self.no_quorum.is_empty() {
            2
        } else if self.children.iter().any(|(_, b)| !b.is_empty()) {
            1
        } else {
            0
        }
    }

    fn status(&self) -> &'static str {
        match self.exit() {
            0 => "clean",
            1 => "minority",
            _ => "no-quorum",
        }
    }

    /// Whether this bad copy was rewritten: repair on, a quorum existed,
    /// the copy was outvoted (a failed read is never rewritten, R-READ-7)
    /// and no rewrite failed.
    fn repaired(&self, b: &Bad) -> bool {
        self.repair
            && b.read_error.is_none()
            && b.rewrite_error.is_none()
            && !self.no_quorum.iter().any(|n| n.region == b.region)
    }
}

/// Events of a scrub's device: the names they are told with, the
/// `--events` log, and the events themselves, collected as they come.
type Collected = Arc<Mutex<Vec<(Event, Timestamp)>>>;

fn observe(
    dev: &Device,
    a: &ScrubArgs,
    specs: &[replicas::ChildSpec],
) -> Result<(Names, Option<EventLog>, Collected), String> {
    let names = Names {
        device: a.node_name.clone(),
        children: dev
            .children()
            .into_iter()
            .zip(specs.iter().map(|s| s.name.clone()))
            .collect(),
    };
    let log = a.events.as_deref().map(EventLog::create).transpose()?;
    let events: Collected = Arc::default();
    let sink = events.clone();
    dev.set_event_sink(Box::new(move |_, ev| {
        sink.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((*ev, replicas::now()));
    }));
    Ok((names, log, events))
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("quorum scrub: {msg}");
    ExitCode::from(2)
}

/// Runs `quorum scrub`.
pub(crate) fn scrub(a: ScrubArgs) -> ExitCode {
    // Everything is checked before anything is opened for writing.
    let specs = match replicas::parse_children(&a.children) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let region_size = match replicas::parse_size(&a.region_size) {
        Some(n) if n > 0 && n <= 1 << 30 => n,
        _ => {
            return fail(format!(
                "invalid region size '{}': expected 1 byte to 1G (suffixes k, M, G)",
                a.region_size
            ));
        }
    };
    if a.json && a.events.as_deref() == Some("-") {
        return fail("--events - and --json would both write to standard output");
    }
    let threshold = a.threshold.unwrap_or(replicas::majority(specs.len()));
    let config = Config::new(specs.len(), threshold).with_rewrite_corrupted(a.repair);
    if let Err(e) = config.validate(16) {
        return fail(e);
    }
    let kids = match replicas::open_children(&specs, a.repair, false) {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    let size = match replicas::common_size(&specs, &kids) {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    if a.map.map.is_some() {
        return resync_offline(&a, config, kids, &specs, size);
    }
    let dev = match Device::new(config, kids) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let (names, mut log, events) = match observe(&dev, &a, &specs) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };

    let regions = size.div_ceil(region_size);
    let mut report = Report {
        size,
        region_size,
        regions,
        threshold,
        repair: a.repair,
        children: specs.iter().map(|s| (s.clone(), Vec::new())).collect(),
        no_quorum: Vec::new(),
    };
    let bar = ProgressBar::new(size);
    if let Ok(style) = ProgressStyle::with_template(
        "scrub {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
    ) {
        bar.set_style(style);
    }
    let mut buf = vec![0u8; region_size.min(size) as usize];
    for region in 0..regions {
        let offset = region * region_size;
        let len = region_size.min(size - offset);
        let res = dev.read(offset, &mut buf[..len as usize]);
        let evs = std::mem::take(&mut *events.lock().unwrap_or_else(|p| p.into_inner()));
        let mut failure = false;
        for (ev, ts) in evs {
            if let Some(l) = log.as_mut() {
                if let Err(e) = l.write(&ev, &names, ts) {
                    bar.finish_and_clear();
                    return fail(e);
                }
            }
            match ev {
                Event::ReportBad {
                    op, error, child, ..
                } => {
                    let name = names.child(child);
                    let Some((_, bads)) = report.children.iter_mut().find(|(s, _)| s.name == name)
                    else {
                        continue;
                    };
                    let is_read = op.as_str() == "read";
                    let err = error.map(|e| e.to_string());
                    match bads.last_mut() {
                        Some(b) if b.region == region => {
                            if !is_read {
                                b.rewrite_error = err.or(Some("error".into()));
                            }
                        }
                        _ => bads.push(Bad {
                            region,
                            offset,
                            len,
                            read_error: if is_read { err.clone() } else { None },
                            rewrite_error: if is_read { None } else { err },
                        }),
                    }
                }
                Event::Failure { .. } => failure = true,
            }
        }
        if let Err(e) = res {
            let error = match e {
                ReadError::Io(e) => e.to_string(),
                other => other.to_string(),
            };
            report.no_quorum.push(NoQuorum {
                region,
                offset,
                len,
                error,
            });
        } else if failure {
            // QUORUM_FAILURE without a failed read does not happen for reads;
            // count it as no quorum all the same.
            report.no_quorum.push(NoQuorum {
                region,
                offset,
                len,
                error: "QUORUM_FAILURE".into(),
            });
        }
        bar.inc(len);
        if region % 16 == 0 {
            bar.set_message(format!(
                "bad regions {} no quorum {}",
                report.bad_regions(),
                report.no_quorum.len()
            ));
        }
    }
    bar.finish_and_clear();
    if a.repair {
        if let Err(e) = dev.flush() {
            return fail(format!("flush after repair failed: {e}"));
        }
    }
    if a.json {
        println!("{}", json(&report));
    } else {
        print!("{}", human(&report));
    }
    ExitCode::from(report.exit())
}

/// `quorum scrub --map`: the resync a running `quorum serve` would do, run
/// to its end at full speed with a progress bar.
fn resync_offline(
    a: &ScrubArgs,
    config: Config,
    kids: Vec<Arc<dyn quorum_sync::Child>>,
    specs: &[replicas::ChildSpec],
    size: u64,
) -> ExitCode {
    use quorum_sync::sync::{Job, ResyncTarget};
    // Settling and resync write: the children must be writable.
    if !a.repair {
        return fail("--map settles and resyncs, which writes to the children: add --repair");
    }
    let ids = specs
        .iter()
        .enumerate()
        .map(|(i, s)| (i as u32, crate::syncmap::identity(&s.name, &s.path)))
        .collect();
    let dev = match crate::syncmap::open_device(config, kids, ids, size, &a.map) {
        Ok((d, _)) => d,
        Err(crate::io::Bad(e)) => return fail(e),
    };
    let (names, mut log, events) = match observe(&dev, a, specs) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    let work = dev.work();
    // The chunks some child is behind on: copied whatever their bytes
    // (the rest of the work is settling, which may find them equal).
    let behind = dev.sync_map().map_or(0, |m| {
        (0..m.chunks())
            .filter(|&c| m.children().any(|k| m.is_stale(k, c)))
            .count() as u64
    });
    let bar = ProgressBar::new(work);
    if let Ok(style) = ProgressStyle::with_template(
        "resync {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    let job = Job::new(0);
    let end = job.run(&dev, &mut |_| bar.set_position(job.state().offset));
    bar.finish_and_clear();
    let _ = dev.flush();
    dev.write_map();
    for (ev, ts) in std::mem::take(&mut *events.lock().unwrap_or_else(|p| p.into_inner())) {
        if let Some(l) = log.as_mut()
            && let Err(e) = l.write(&ev, &names, ts)
        {
            return fail(e);
        }
    }
    let settled = dev.settled_differences();
    let chunks = dev.sync_map().map_or(1, |m| m.chunk());
    let summary = format!(
        "resync: {} bytes brought back in sync ({} chunk(s) of {} bytes, {behind} of them behind on a child), {settled} difference(s) settled, {} chunk(s) left without quorum",
        end.offset,
        end.offset.div_ceil(chunks),
        chunks,
        end.failed
    );
    if a.json {
        println!(
            "{{\"resynced_bytes\": {}, \"behind_chunks\": {behind}, \"settled_differences\": {settled}, \"no_quorum_chunks\": {}}}",
            end.offset, end.failed
        );
    } else {
        println!("{summary}");
    }
    // As without a map: 1 when a child was behind or outvoted (and is
    // rewritten now), 0 when every chunk settled agreeing.
    ExitCode::from(if end.failed > 0 {
        2
    } else if behind > 0 || settled > 0 {
        1
    } else {
        0
    })
}

/// How many bad regions a child's human summary lists.
const LIST: usize = 20;

fn human(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "scrubbed {} bytes in {} regions of {} bytes: {} children, threshold {}, {}",
        r.size,
        r.regions,
        r.region_size,
        r.children.len(),
        r.threshold,
        if r.repair { "repair" } else { "read-only" }
    );
    for (s, bads) in &r.children {
        if bads.is_empty() {
            let _ = writeln!(o, "{} ({}): clean", s.name, s.path.display());
            continue;
        }
        let repaired = bads.iter().filter(|b| r.repaired(b)).count();
        let _ = write!(
            o,
            "{} ({}): {} bad region{}",
            s.name,
            s.path.display(),
            bads.len(),
            if bads.len() == 1 { "" } else { "s" }
        );
        if r.repair {
            let _ = write!(o, ", {repaired} repaired");
        }
        o.push('\n');
        for b in bads.iter().take(LIST) {
            let what = match &b.read_error {
                None => "outvoted".to_string(),
                Some(e) => format!("read error: {e}"),
            };
            let _ = write!(
                o,
                "  region {} (offset {}, {} bytes): {what}",
                b.region, b.offset, b.len
            );
            if let Some(e) = &b.rewrite_error {
                let _ = write!(o, ", rewrite failed: {e}");
            } else if r.repaired(b) {
                o.push_str(", repaired");
            }
            o.push('\n');
        }
        if bads.len() > LIST {
            let _ = writeln!(o, "  ... and {} more (--json lists all)", bads.len() - LIST);
        }
    }
    for n in r.no_quorum.iter().take(LIST) {
        let _ = writeln!(
            o,
            "no quorum: region {} (offset {}, {} bytes): {}",
            n.region, n.offset, n.len, n.error
        );
    }
    if r.no_quorum.len() > LIST {
        let _ = writeln!(
            o,
            "no quorum: ... and {} more (--json lists all)",
            r.no_quorum.len() - LIST
        );
    }
    let _ = match r.exit() {
        0 => writeln!(o, "result: clean"),
        1 => writeln!(
            o,
            "result: minority copies in {} region{}{}",
            r.bad_regions(),
            if r.bad_regions() == 1 { "" } else { "s" },
            if r.repair { " (repaired)" } else { "" }
        ),
        _ => writeln!(
            o,
            "result: {} region{} without quorum",
            r.no_quorum.len(),
            if r.no_quorum.len() == 1 { "" } else { "s" }
        ),
    };
    o
}

/// A JSON string literal.
fn js(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn opt(s: &Option<String>) -> String {
    s.as_deref().map(js).unwrap_or_else(|| "null".into())
}

fn json(r: &Report) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "{{\"size\": {}, \"region_size\": {}, \"regions\": {}, \"threshold\": {}, \"repair\": {}, \"children\": [",
        r.size, r.region_size, r.regions, r.threshold, r.repair
    );
    for (i, (s, bads)) in r.children.iter().enumerate() {
        if i > 0 {
            o.push_str(", ");
        }
        let _ = write!(
            o,
            "{{\"name\": {}, \"path\": {}, \"bad_regions\": [",
            js(&s.name),
            js(&s.path.to_string_lossy())
        );
        for (j, b) in bads.iter().enumerate() {
            if j > 0 {
                o.push_str(", ");
            }
            let _ = write!(
                o,
                "{{\"region\": {}, \"offset\": {}, \"length\": {}, \"problem\": {}, \"read_error\": {}, \"rewrite_error\": {}, \"repaired\": {}}}",
                b.region,
                b.offset,
                b.len,
                js(if b.read_error.is_some() {
                    "read-error"
                } else {
                    "outvoted"
                }),
                opt(&b.read_error),
                opt(&b.rewrite_error),
                r.repaired(b)
            );
        }
        o.push_str("]}");
    }
    o.push_str("], \"no_quorum\": [");
    for (i, n) in r.no_quorum.iter().enumerate() {
        if i > 0 {
            o.push_str(", ");
        }
        let _ = write!(
            o,
            "{{\"region\": {}, \"offset\": {}, \"length\": {}, \"error\": {}}}",
            n.region,
            n.offset,
            n.len,
            js(&n.error)
        );
    }
    let _ = write!(
        o,
        "], \"status\": {}, \"exit\": {}}}",
        js(r.status()),
        r.exit()
    );
    o
}
