//! `quorum io` as a user runs it, on real image files — and, where qemu-io
//! is installed, next to qemu-io on the same images.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SIZE: usize = 1 << 20;

fn quorum(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorum"))
        .arg("io")
        .args(args)
        .output()
        .expect("run quorum")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh directory with `n` zeroed images of `SIZE` bytes.
fn images(test: &str, n: usize) -> (PathBuf, Vec<PathBuf>) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("io-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let paths = (0..n)
        .map(|i| {
            let p = dir.join(format!("x{i}.img"));
            std::fs::write(&p, vec![0u8; SIZE]).unwrap();
            p
        })
        .collect();
    (dir, paths)
}

fn poke(path: &Path, offset: usize, bytes: &[u8]) {
    let mut d = std::fs::read(path).unwrap();
    d[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, d).unwrap();
}

fn contents(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// `quorum io` arguments: the children, then `extra`, then `-c` per command.
fn args(paths: &[PathBuf], extra: &[&str], cmds: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    for c in cmds {
        v.push("-c".into());
        v.push(c.to_string());
    }
    v
}

/// Replaces qemu-io's timing line (`4 KiB, 1 ops; 00.00 sec (...)`), whose
/// numbers differ run to run, by its first field.
fn untimed(out: &str) -> String {
    out.lines()
        .map(|l| match l.find(", 1 ops; ") {
            Some(i) if l.ends_with(" ops/sec)") => format!("{} <timing>", &l[..i]),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[test]
fn write_read_pattern_dump_length_flush() {
    let (_d, p) = images("basic", 3);
    let o = quorum(&args(
        &p,
        &["--threshold", "2"],
        &[
            "write -P 0x41 0 4k",
            "read -P 0x41 0 4k",
            "read -v 4080 17",
            "length",
            "flush",
            "write -z 1k 1k",
            "read -P 0 1k 1k",
            "read -q 0 1",
            "w 8k 512",
            "r -P 0xcd 8k 512",
        ],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    assert_eq!(
        untimed(&stdout(&o)),
        "wrote 4096/4096 bytes at offset 0\n4 KiB <timing>\n\
         read 4096/4096 bytes at offset 0\n4 KiB <timing>\n\
         00000ff0:  41 41 41 41 41 41 41 41 41 41 41 41 41 41 41 41  AAAAAAAAAAAAAAAA\n\
         00001000:  00  .\n\
         read 17/17 bytes at offset 4080\n17 bytes <timing>\n\
         1 MiB\n\
         wrote 1024/1024 bytes at offset 1024\n1 KiB <timing>\n\
         read 1024/1024 bytes at offset 1024\n1 KiB <timing>\n\
         wrote 512/512 bytes at offset 8192\n512 bytes <timing>\n\
         read 512/512 bytes at offset 8192\n512 bytes <timing>"
    );
    for c in contents(&p) {
        assert_eq!(&c[..1024], &[0x41; 1024]);
        assert_eq!(&c[1024..2048], &[0; 1024]);
        assert_eq!(&c[2048..4096], &[0x41; 2048]);
        assert_eq!(&c[8192..8704], &[0xcd; 512]);
    }
}

#[test]
fn pattern_mismatch_is_reported_and_exits_1() {
    let (_d, p) = images("pattern", 2);
    let o = quorum(&args(
        &p,
        &["--threshold", "2"],
        &["read -P 0xcd 0 4k", "read 0 1"],
    ));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        untimed(&stdout(&o)),
        "Pattern verification failed at offset 0, 4096 bytes\n\
         read 4096/4096 bytes at offset 0\n4 KiB <timing>\n\
         read 1/1 bytes at offset 0\n1 bytes <timing>"
    );
}

#[test]
fn a_failed_read_prints_qemu_io_message_and_exits_1() {
    let (_d, p) = images("failread", 3);
    // Three versions, threshold 2: no quorum, EIO.
    poke(&p[1], 0, &[1]);
    poke(&p[2], 0, &[2]);
    let o = quorum(&args(&p, &["--threshold", "2"], &["read 0 512", "length"]));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "read failed: Input/output error\n1 MiB\n");
}

#[test]
fn events_carry_names_and_qmp_shape() {
    let (d, p) = images("events", 3);
    poke(&p[1], 600, b"x");
    let ev = d.join("ev.jsonl");
    let mut a: Vec<String> = vec![
        format!("a={}", p[0].display()),
        format!("b={}", p[1].display()),
        p[2].display().to_string(),
    ];
    a.extend(args(
        &[],
        &[
            "--threshold",
            "3",
            "--node-name",
            "dev0",
            "--events",
            ev.to_str().unwrap(),
        ],
        &["read 0 1k"],
    ));
    let o = quorum(&a);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "read failed: Input/output error\n");
    let e = events(&ev);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0]["event"], "QUORUM_FAILURE");
    assert_eq!(e[0]["data"]["reference"], "dev0");
    assert_eq!(e[0]["data"]["sector-num"], 0);
    assert_eq!(e[0]["data"]["sectors-count"], 2);
    assert!(e[0]["timestamp"]["seconds"].as_u64().unwrap() > 1_600_000_000);
    assert!(e[0]["timestamp"]["microseconds"].as_u64().unwrap() < 1_000_000);

    // Threshold 2: b is outvoted and reported by its name; `-` is stdout.
    let mut a2 = a.clone();
    let i = a2.iter().position(|s| s == "3").unwrap();
    a2[i] = "2".into();
    let j = a2.iter().position(|s| s.ends_with("ev.jsonl")).unwrap();
    a2[j] = "-".into();
    let o = quorum(&a2);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["event"], "QUORUM_REPORT_BAD");
    assert_eq!(first["data"]["type"], "read");
    assert_eq!(first["data"]["node-name"], "b");
    assert!(first["data"].get("error").is_none());
    assert!(out.contains("read 1024/1024 bytes at offset 0"));
}

#[test]
fn rewrite_corrupted_repairs_the_outvoted_child() {
    let (_d, p) = images("rewrite", 3);
    poke(&p[2], 100, b"bad");
    let o = quorum(&args(
        &p,
        &["--threshold", "2", "--rewrite-corrupted"],
        &["read -P 0 0 4k"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(contents(&p)[2], vec![0; SIZE]);
    // Without the option the child stays as it was (and is opened read-only).
    poke(&p[2], 100, b"bad");
    let o = quorum(&args(&p, &["--threshold", "2"], &["read -P 0 0 4k"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(&contents(&p)[2][100..103], b"bad");
}

#[test]
fn early_quorum_reports_and_repairs_the_straggler_before_exit() {
    // The read answers once two children agree; the third is still judged,
    // reported and rewritten before the process ends.
    let (d, p) = images("early", 3);
    poke(&p[1], 4000, b"rot");
    let ev = d.join("events.jsonl");
    let o = quorum(&args(
        &p,
        &[
            "--threshold",
            "2",
            "--early-quorum",
            "--rewrite-corrupted",
            "--events",
            ev.to_str().unwrap(),
        ],
        &["read -P 0 0 8k"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(contents(&p)[1], vec![0; SIZE], "repaired before exit");
    let evs = events(&ev);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0]["event"], "QUORUM_REPORT_BAD");
    assert_eq!(evs[0]["data"]["node-name"], "children.1");
}

#[test]
fn fifo_reads_the_first_child_unchecked() {
    let (_d, p) = images("fifo", 3);
    poke(&p[0], 0, &[7; 512]);
    let o = quorum(&args(
        &p,
        &["--threshold", "2", "--read-pattern", "fifo"],
        &["read -P 7 0 512"],
    ));
    assert!(o.status.success(), "{}", stdout(&o));
    let o = quorum(&args(
        &p,
        &["--threshold", "2", "--read-pattern", "quorum"],
        &["read -P 0 0 512"],
    ));
    assert!(o.status.success(), "{}", stdout(&o));
}

#[test]
fn blkverify_mismatch_prints_qemu_message_and_exits_1() {
    let (_d, p) = images("blkverify", 2);
    poke(&p[1], 700, b"Z");
    let o = quorum(&args(
        &p,
        &["--threshold", "2", "--blkverify"],
        &["read 0 512", "read 512 1k", "read 0 1"],
    ));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        untimed(&stdout(&o)),
        "read 512/512 bytes at offset 0\n512 bytes <timing>"
    );
    assert_eq!(
        stderr(&o),
        "quorum: offset=512 bytes=1024 contents mismatch at offset 700\n"
    );
}

/// `(injection, commands, expected stdout)` with threshold 3 over 3 children,
/// so that a failure of child 0 fails the request.
fn injection_cases() -> Vec<(&'static str, Vec<&'static str>, &'static str)> {
    vec![
        (
            "0:read:28",
            vec!["write 0 1", "read 0 1", "write 0 1", "write -z 0 1"],
            "wrote 1/1 bytes at offset 0\n1 bytes <timing>\n\
             read failed: No space left on device\n\
             write failed: No space left on device\n\
             write failed: No space left on device",
        ),
        (
            "0:write:28",
            vec!["write -z 0 4k", "read 0 1", "write 0 1", "read 0 1"],
            "wrote 4096/4096 bytes at offset 0\n4 KiB <timing>\n\
             read 1/1 bytes at offset 0\n1 bytes <timing>\n\
             write failed: No space left on device\n\
             read failed: No space left on device",
        ),
        (
            "0:flush:28",
            vec!["flush", "read 0 1", "write 0 1", "read 0 1"],
            "read 1/1 bytes at offset 0\n1 bytes <timing>\n\
             write failed: No space left on device\n\
             read failed: No space left on device",
        ),
        (
            "0:read:5:8",
            vec!["read 0 4k", "read 4k 4k", "read 4097 1"],
            "read 4096/4096 bytes at offset 0\n4 KiB <timing>\n\
             read failed: Input/output error\n\
             read 1/1 bytes at offset 4097\n1 bytes <timing>",
        ),
        (
            "0:read:5:once",
            vec!["read 0 1", "read 0 1"],
            "read failed: Input/output error\n\
             read 1/1 bytes at offset 0\n1 bytes <timing>",
        ),
    ]
}

#[test]
fn inject_error_has_blkdebug_meaning() {
    for (k, (spec, cmds, want)) in injection_cases().into_iter().enumerate() {
        let (_d, p) = images(&format!("inject{k}"), 3);
        let o = quorum(&args(
            &p,
            &["--threshold", "3", "--inject-error", spec],
            &cmds,
        ));
        assert_eq!(untimed(&stdout(&o)), want, "{spec}");
        assert_eq!(o.status.code(), Some(1), "{spec}");
    }
}

#[test]
fn inject_error_events_name_the_child_and_the_error() {
    let (d, p) = images("inject-events", 3);
    let ev = d.join("ev.jsonl");
    let o = quorum(&args(
        &p,
        &[
            "--threshold",
            "2",
            "--inject-error",
            "children.1:write:28",
            "--events",
            ev.to_str().unwrap(),
        ],
        &["write 0 1k", "flush"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let e = events(&ev);
    let kinds: Vec<(String, String)> = e
        .iter()
        .map(|e| {
            (
                e["data"]["type"].as_str().unwrap_or("").to_string(),
                e["data"]["error"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    // The write fails on children.1; the writethrough flush after it then
    // reaches the still active rule (the child is dirty); the explicit
    // flush does too, since a failed flush leaves the child dirty, and so
    // does the flush on exit, as QEMU's on close. (Checked against
    // qemu-storage-daemon with a writethrough NBD client, one command a
    // second to beat QMP's throttle.)
    let w = ("write".to_string(), "No space left on device".to_string());
    let f = ("flush".to_string(), "No space left on device".to_string());
    assert_eq!(kinds, vec![w, f.clone(), f.clone(), f], "{e:?}");
    for e in &e {
        assert_eq!(e["data"]["node-name"], "children.1");
    }
    assert_eq!(e[0]["data"]["sectors-count"], 2);
    assert_eq!(e[1]["data"]["sectors-count"], 0);
    assert_eq!(contents(&p)[1], vec![0; SIZE]);
    assert_eq!(&contents(&p)[0][..1024], &[0xcd; 1024]);
}

/// Every bad input: exit 1, one line on stderr, nothing on stdout, and the
/// images unchanged byte for byte.
#[test]
fn bad_input_is_one_line_and_writes_nothing() {
    let (d, p) = images("bad", 3);
    poke(&p[1], 0, b"distinct bytes, so that a write would show");
    let small = d.join("small.img");
    std::fs::write(&small, vec![0u8; SIZE / 2]).unwrap();
    let missing = d.join("missing.img");
    let dir = d.join("a-directory");
    std::fs::create_dir_all(&dir).unwrap();
    let w = "write 0 4k";
    let s = |x: &Path| x.display().to_string();
    let p0 = s(&p[0]);
    let p1 = s(&p[1]);
    let p2 = s(&p[2]);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![p0.clone(), p1.clone(), s(&missing)], "missing.img"),
        (vec![p0.clone(), p1.clone(), s(&dir)], "Is a directory"),
        (vec![p0.clone(), p1.clone(), s(&small)], "differ in size"),
        (vec![p0.clone(), p1.clone(), p2.clone()], ""),
    ];
    let std3 = ["--threshold", "2"];
    let mut runs: Vec<(Vec<String>, &str)> = Vec::new();
    for (kids, needle) in &cases[..3] {
        let mut a = kids.clone();
        a.extend(args(&[], &std3, &[w]));
        runs.push((a, needle));
    }
    let good = &cases[3].0;
    let with = |extra: &[&str], cmds: &[&str]| {
        let mut a = good.clone();
        a.extend(args(&[], extra, cmds));
        a
    };
    runs.extend([
        (with(&["--threshold", "0"], &[w]), "vote-threshold"),
        (
            with(&["--threshold", "4"], &[w]),
            "threshold may not exceed",
        ),
        (with(&["--threshold", "x"], &[w]), "--threshold"),
        (with(&[], &[w]), "--threshold N is required"),
        (with(&["--threshold", "2"], &[]), "no command"),
        (
            with(&["--threshold", "2", "--read-pattern", "random"], &[w]),
            "read-pattern as fifo or quorum",
        ),
        (
            with(&["--threshold", "2", "--blkverify"], &[w]),
            "blkverify=on can only be set",
        ),
        (
            with(&["--threshold", "2"], &[w, "read 1M 1"]),
            "past the end",
        ),
        (
            with(&["--threshold", "2"], &[w, "write 1020k 8k"]),
            "past the end",
        ),
        (
            with(&["--threshold", "2"], &[w, "read x 1"]),
            "non-numeric argument",
        ),
        (
            with(&["--threshold", "2"], &[w, "frobnicate"]),
            "command \"frobnicate\" not found",
        ),
        (
            with(&["--threshold", "2"], &[w, "read"]),
            "bad argument count 0 to read",
        ),
        (
            with(&["--threshold", "2"], &[w, "write -P 0x1ff 0 1"]),
            "not a valid pattern byte",
        ),
        (
            with(&["--threshold", "2"], &[w, "read 0 3G"]),
            "length cannot exceed",
        ),
        (
            with(&["--threshold", "2", "--inject-error", "7:read:5"], &[w]),
            "no child named or numbered '7'",
        ),
        (
            with(&["--threshold", "2", "--inject-error", "0:trim:5"], &[w]),
            "unknown operation",
        ),
        (
            with(&["--threshold", "2", "--inject-error", "0:read"], &[w]),
            "wrong number of fields",
        ),
    ]);
    let mut before = contents(&p);
    before.push(std::fs::read(&small).unwrap());
    for (a, needle) in runs {
        let o = quorum(&a);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{a:?}: {err}");
        assert_eq!(stdout(&o), "", "{a:?}");
        assert_eq!(err.lines().count(), 1, "{a:?}: {err}");
        assert!(err.starts_with("quorum io: "), "{err}");
        assert!(err.contains(needle), "{a:?}: {err} lacks {needle}");
        let mut now = contents(&p);
        now.push(std::fs::read(&small).unwrap());
        assert!(now == before, "{a:?} changed an image");
    }
    assert!(!missing.exists());
}

// ---------------------------------------------------------------------------
// Side by side with qemu-io (skipped, with a note, when it is not installed).

fn qemu_io() -> Option<PathBuf> {
    let ok = Command::new("qemu-io")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("qemu-io not installed: comparison skipped");
    }
    ok.then(|| PathBuf::from("qemu-io"))
}

/// qemu-io's `--image-opts` for a quorum over `paths`, with blkdebug under
/// child 0 when `inject` holds blkdebug options.
fn image_opts(paths: &[PathBuf], threshold: usize, extra: &str, inject: &str) -> String {
    let mut s = format!("driver=quorum,vote-threshold={threshold}{extra}");
    for (i, p) in paths.iter().enumerate() {
        if i == 0 && !inject.is_empty() {
            s += &format!(
                ",children.0.driver=raw,children.0.file.driver=blkdebug,\
                 children.0.file.image.filename={}{inject}",
                p.display()
            );
        } else {
            s += &format!(
                ",children.{i}.driver=raw,children.{i}.file.filename={}",
                p.display()
            );
        }
    }
    s
}

/// blkdebug options equivalent to an `--inject-error 0:…` spec.
fn blkdebug(spec: &str) -> String {
    let f: Vec<&str> = spec.split(':').collect();
    let event = match f[1] {
        "read" => "read_aio",
        "write" => "write_aio",
        _ => "flush_to_disk",
    };
    let mut s = format!(
        ",children.0.file.inject-error.0.event={event},children.0.file.inject-error.0.errno={}",
        f[2]
    );
    for x in &f[3..] {
        if *x == "once" {
            s += ",children.0.file.inject-error.0.once=on";
        } else {
            s += &format!(",children.0.file.inject-error.0.sector={x}");
        }
    }
    s
}

/// Runs the same commands through qemu-io and `quorum io`, each on its own
/// copy of the same images; compares stdout (untimed), stderr, the exit
/// status and the images afterwards.
fn side_by_side(test: &str, setup: &dyn Fn(&[PathBuf]), threshold: usize, opts: Case<'_>) {
    let Some(qemu) = qemu_io() else { return };
    let n = opts.children;
    let (_a, ours) = images(&format!("{test}-ours"), n);
    let (_b, theirs) = images(&format!("{test}-qemu"), n);
    setup(&ours);
    setup(&theirs);
    let mut qargs = vec![
        "--image-opts".to_string(),
        image_opts(
            &theirs,
            threshold,
            opts.qemu_extra,
            &opts.inject.map(blkdebug).unwrap_or_default(),
        ),
    ];
    for c in opts.cmds {
        qargs.push("-c".into());
        qargs.push(c.to_string());
    }
    let q = Command::new(qemu)
        .args(&qargs)
        .output()
        .expect("run qemu-io");
    let t = threshold.to_string();
    let mut extra = vec!["--threshold", t.as_str()];
    extra.extend_from_slice(opts.ours_extra);
    if let Some(spec) = opts.inject {
        extra.extend(["--inject-error", spec]);
    }
    let o = quorum(&args(&ours, &extra, opts.cmds));
    assert_eq!(untimed(&stdout(&o)), untimed(&stdout(&q)), "{test}: stdout");
    assert_eq!(stderr(&o), stderr(&q), "{test}: stderr");
    assert_eq!(o.status.code(), q.status.code(), "{test}: exit status");
    assert!(
        contents(&ours) == contents(&theirs),
        "{test}: images differ"
    );
}

#[derive(Clone, Copy)]
struct Case<'a> {
    children: usize,
    cmds: &'a [&'a str],
    inject: Option<&'a str>,
    ours_extra: &'a [&'a str],
    qemu_extra: &'a str,
}

const PLAIN: Case<'static> = Case {
    children: 3,
    cmds: &[],
    inject: None,
    ours_extra: &[],
    qemu_extra: "",
};

#[test]
fn same_as_qemu_io_for_the_commands() {
    side_by_side(
        "qemu-cmds",
        &|_| {},
        2,
        Case {
            cmds: &[
                "write -P 0x41 0 4k",
                "read -P 0x41 0 4k",
                "read -P 0x42 0 1k",
                "read -v 4090 20",
                "length",
                "flush",
                "write -z 1k 1.5k",
                "read -P 0 1k 1536",
                "w 0x10000 512",
                "r -q 0 1",
                "read 0 1 -v",
            ],
            ..PLAIN
        },
    );
}

#[test]
fn same_as_qemu_io_when_votes_fail_or_repair() {
    let corrupt = |p: &[PathBuf]| {
        poke(&p[1], 0, &[1; 10]);
        poke(&p[2], 4096, &[2; 10]);
    };
    side_by_side(
        "qemu-votes",
        &corrupt,
        3,
        Case {
            cmds: &["read 0 512", "read 4k 4k", "read 8k 4k"],
            ..PLAIN
        },
    );
    side_by_side(
        "qemu-rewrite",
        &corrupt,
        2,
        Case {
            cmds: &["read -P 0 0 512", "read -P 0 4k 4k"],
            ours_extra: &["--rewrite-corrupted"],
            qemu_extra: ",rewrite-corrupted=on",
            ..PLAIN
        },
    );
    side_by_side(
        "qemu-blkverify",
        &|p| poke(&p[1], 700, b"Z"),
        2,
        Case {
            children: 2,
            cmds: &["read 0 512", "read 512 1k", "read 0 1"],
            ours_extra: &["--blkverify"],
            qemu_extra: ",blkverify=on",
            ..PLAIN
        },
    );
}

#[test]
fn same_as_qemu_io_under_error_injection() {
    for (k, (spec, cmds, _)) in injection_cases().into_iter().enumerate() {
        side_by_side(
            &format!("qemu-inject{k}"),
            &|_| {},
            3,
            Case {
                cmds: &cmds,
                inject: Some(spec),
                ..PLAIN
            },
        );
    }
}

#[test]
fn same_as_qemu_io_for_sectors_fifo_and_rewrites_under_injection() {
    side_by_side(
        "qemu-write-sector",
        &|_| {},
        3,
        Case {
            cmds: &[
                "write 0 4k",
                "write 8k 512",
                "read 0 4k",
                "read 8k 1",
                "write -z 8k 1",
            ],
            inject: Some("0:write:28:16"),
            ..PLAIN
        },
    );
    side_by_side(
        "qemu-fifo",
        &|p| poke(&p[1], 0, &[9; 512]),
        3,
        Case {
            cmds: &["read -P 9 0 512", "read -P 9 0 512"],
            inject: Some("0:read:5:once"),
            ours_extra: &["--read-pattern", "fifo"],
            qemu_extra: ",read-pattern=fifo",
            ..PLAIN
        },
    );
    // The rewrite of an outvoted child is a write: write_aio fails it, and
    // the child stays corrupt (rewrite errors are ignored).
    side_by_side(
        "qemu-rewrite-inject",
        &|p| poke(&p[0], 0, &[3; 16]),
        2,
        Case {
            cmds: &["read -P 0 0 512", "read -P 0 0 512"],
            inject: Some("0:write:5"),
            ours_extra: &["--rewrite-corrupted"],
            qemu_extra: ",rewrite-corrupted=on",
            ..PLAIN
        },
    );
}
