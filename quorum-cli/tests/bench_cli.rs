//! `quorum bench` as a user runs it: qemu-img bench's flags and lines.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SIZE: usize = 1 << 20;

fn quorum(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorum"))
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

fn replicas(test: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (0..3)
        .map(|i| {
            let p = dir.join(format!("r{i}.img"));
            std::fs::write(&p, vec![0u8; SIZE]).unwrap();
            p
        })
        .collect()
}

fn bench(paths: &[PathBuf], flags: &[&str]) -> Output {
    let mut a = vec!["bench"];
    a.extend(paths.iter().map(|p| p.to_str().unwrap()));
    a.extend_from_slice(flags);
    quorum(&a)
}

/// `Run completed in X.XXX seconds.` with exactly three decimals.
fn is_closing_line(l: &str) -> bool {
    let Some(x) = l
        .strip_prefix("Run completed in ")
        .and_then(|r| r.strip_suffix(" seconds."))
    else {
        return false;
    };
    let Some((int, frac)) = x.split_once('.') else {
        return false;
    };
    !int.is_empty()
        && int.chars().all(|c| c.is_ascii_digit())
        && frac.len() == 3
        && frac.chars().all(|c| c.is_ascii_digit())
}

#[test]
fn defaults_and_lines_are_qemu_img_benchs() {
    let p = replicas("defaults");
    // Default count 75000 is long for a test: only the count is given.
    let o = bench(&p, &["-c", "200"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "Sending 200 read requests, 4096 bytes each, 64 in parallel (starting at offset 0, step size 4096)"
    );
    assert!(is_closing_line(lines[1]), "{out}");
    assert_eq!(lines.len(), 2, "{out}");
    let help = stdout(&quorum(&["bench", "--help"]));
    for h in [
        "75000",
        "[default: 64]",
        "[default: 4096]",
        "majority",
        "Run completed in",
    ] {
        assert!(help.contains(h), "help lacks {h}:\n{help}");
    }
}

#[test]
fn flags_are_parsed_like_qemu_img() {
    let p = replicas("flags");
    let o = bench(
        &p,
        &[
            "-c", "0x10", "-d", "010", "-s", "1k", "-S", "8k", "-o", "512",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).lines().next().unwrap(),
        "Sending 16 read requests, 1024 bytes each, 8 in parallel (starting at offset 512, step size 8192)"
    );
    let o = bench(
        &p,
        &[
            "--count=50",
            "--depth=2",
            "--buffer-size=1.5k",
            "--step-size=0",
            "--read-pattern",
            "fifo",
            "--threshold",
            "3",
            "-q",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).lines().next().unwrap(),
        "Sending 50 read requests, 1536 bytes each, 2 in parallel (starting at offset 0, step size 1536)"
    );
}

#[test]
fn writes_put_the_pattern_on_every_child() {
    let p = replicas("write");
    let o = bench(
        &p,
        &["-w", "--pattern", "0xab", "-c", "16", "-d", "4", "-o", "8k"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("Sending 16 write requests, 4096 bytes each, 4 in parallel (starting at offset 8192, step size 4096)\n"));
    for f in &p {
        let d = std::fs::read(f).unwrap();
        assert!(d[..8192].iter().all(|&b| b == 0));
        assert!(d[8192..8192 + 16 * 4096].iter().all(|&b| b == 0xab));
        assert!(d[8192 + 16 * 4096..].iter().all(|&b| b == 0));
    }
    let o = bench(
        &p,
        &["-w", "-c", "300", "-d", "4", "--flush-interval", "100"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[1], "Sending flush every 100 requests");
    assert!(is_closing_line(lines[2]), "{out}");
}

#[test]
fn reads_wrap_around_the_device() {
    let p = replicas("wrap");
    // 1 MiB device, 600 x 4 KiB: wraps twice without reaching past the end.
    let o = bench(&p, &["-c", "600", "-d", "3", "-S", "12k"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn bad_flags_are_refused_with_qemu_img_messages() {
    let p = replicas("bad");
    let cases: &[(&[&str], &str)] = &[
        (&["-c", "abc"], "Invalid request count specified: 'abc'."),
        (
            &["-c", "0"],
            "Invalid request count specified. Must be between 1 and 2147483647.",
        ),
        (
            &["-d", "-1"],
            "Invalid queue depth specified. Must be between 1 and 2147483647.",
        ),
        (&["-s", "1x"], "Invalid buffer size specified: '1x'."),
        (
            &["-s", "3G"],
            "Invalid buffer size specified. Must be between 1 and 2147483647.",
        ),
        (
            &["-S", "-1"],
            "Invalid step size specified. Must be between 0 and 2147483647.",
        ),
        (&["-o", "x"], "Invalid offset specified: 'x'."),
        (
            &["-w", "--pattern", "256"],
            "Invalid pattern byte specified. Must be between 0 and 255.",
        ),
        (
            &["--flush-interval", "100"],
            "--flush-interval is only available in write tests",
        ),
        (
            &["-w", "-d", "4", "--flush-interval", "2"],
            "Flush interval can't be smaller than depth",
        ),
        (&["-t", "bogus"], "Invalid cache mode"),
        (
            &["--threshold", "4"],
            "threshold may not exceed children count",
        ),
    ];
    for (flags, want) in cases {
        let o = bench(&p, flags);
        assert_eq!(o.status.code(), Some(1), "{flags:?}");
        assert_eq!(
            stderr(&o).trim_end(),
            format!("quorum bench: {want}"),
            "{flags:?}"
        );
        assert!(stdout(&o).is_empty(), "{flags:?}");
    }
    // Unknown flags are usage errors.
    let o = bench(&p, &["-Z"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("'-Z'"), "{}", stderr(&o));
    // A request past the end fails as qemu-img's does.
    let o = bench(&p, &["-c", "1", "-o", "1M"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("quorum bench: Failed request: "),
        "{}",
        stderr(&o)
    );
    // Children of different sizes.
    let short = p[0].with_file_name("short.img");
    std::fs::write(&short, [0u8; 4096]).unwrap();
    let o = bench(&[p[0].clone(), p[1].clone(), short], &["-c", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("children differ in size"),
        "{}",
        stderr(&o)
    );
}

/// With qemu-img installed, both print the same opening line for the same
/// flags on the same files.
#[test]
fn opening_line_matches_qemu_img_when_installed() {
    let Ok(v) = Command::new("qemu-img").arg("--version").output() else {
        eprintln!("qemu-img not installed: skipped");
        return;
    };
    if !v.status.success() {
        return;
    }
    let p = replicas("qemu");
    let opts = format!(
        "driver=quorum,vote-threshold=2,children.0.driver=raw,children.0.file.filename={},children.1.driver=raw,children.1.file.filename={},children.2.driver=raw,children.2.file.filename={}",
        p[0].display(),
        p[1].display(),
        p[2].display()
    );
    for flags in [
        &["-c", "100", "-d", "1"][..],
        &["-c", "64", "-d", "8", "-s", "8k", "-S", "16k", "-o", "512"][..],
        &[
            "-w",
            "-c",
            "200",
            "-d",
            "2",
            "--pattern",
            "7",
            "--flush-interval",
            "50",
        ][..],
    ] {
        let q = Command::new("qemu-img")
            .args(["bench", "--image-opts"])
            .args(flags)
            .arg(&opts)
            .output()
            .unwrap();
        let ours = bench(&p, flags);
        assert!(q.status.success(), "qemu-img: {}", stderr(&q));
        assert!(ours.status.success(), "{}", stderr(&ours));
        let (q, ours) = (stdout(&q), stdout(&ours));
        let ql: Vec<&str> = q.lines().collect();
        let ol: Vec<&str> = ours.lines().collect();
        assert_eq!(ql.len(), ol.len(), "{q}\n{ours}");
        assert_eq!(ql[..ql.len() - 1], ol[..ol.len() - 1]);
        assert!(is_closing_line(ql[ql.len() - 1]) && is_closing_line(ol[ol.len() - 1]));
    }
}
