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

/// The three drivers over `paths`, each with the same flags.
const DRIVERS: [&str; 3] = ["sync", "tokio", "preads"];

fn with(flags: &[&str], more: &[&'static str]) -> Vec<String> {
    flags
        .iter()
        .chain(more)
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
}

fn bench_s(paths: &[PathBuf], flags: &[String]) -> Output {
    let f: Vec<&str> = flags.iter().map(String::as_str).collect();
    bench(paths, &f)
}

/// Bytes that differ from file to file (`seed`) and from block to block.
fn fill(path: &Path, seed: u8) {
    let d: Vec<u8> = (0..SIZE)
        .map(|i| (i / 512) as u8 ^ seed.wrapping_mul(37) ^ (i as u8))
        .collect();
    std::fs::write(path, d).unwrap();
}

/// `Latency: p50 Aus, p90 Bus, p99 Cus, max Dus` and `Peak RSS: N KiB`:
/// the four latencies (µs) and the RSS (KiB).
fn stats_lines(out: &str) -> ([f64; 4], u64) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(is_closing_line(lines[1]), "{out}");
    let rest = lines[2]
        .strip_prefix("Latency: ")
        .unwrap_or_else(|| panic!("{out}"));
    let mut lat = [0.0; 4];
    for (i, (part, name)) in rest
        .split(", ")
        .zip(["p50", "p90", "p99", "max"])
        .enumerate()
    {
        let v = part
            .strip_prefix(name)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.strip_suffix("us"))
            .unwrap_or_else(|| panic!("{name} in {out}"));
        let (_, frac) = v.split_once('.').unwrap_or_else(|| panic!("{out}"));
        assert_eq!(frac.len(), 1, "one decimal: {out}");
        lat[i] = v.parse().unwrap();
    }
    assert_eq!(rest.split(", ").count(), 4, "{out}");
    let rss = lines[3]
        .strip_prefix("Peak RSS: ")
        .and_then(|v| v.strip_suffix(" KiB"))
        .unwrap_or_else(|| panic!("{out}"))
        .parse()
        .unwrap();
    (lat, rss)
}

#[test]
fn every_driver_writes_the_same_bytes() {
    for driver in DRIVERS {
        let p = replicas(&format!("write-{driver}"));
        let flags = [
            "-w",
            "--pattern",
            "0xcd",
            "-c",
            "16",
            "-d",
            "4",
            "-o",
            "8k",
            "--driver",
            driver,
        ];
        let o = bench(&p, &flags);
        assert!(o.status.success(), "{driver}: {}", stderr(&o));
        let out = stdout(&o);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "Sending 16 write requests, 4096 bytes each, 4 in parallel (starting at offset 8192, step size 4096)",
            "{driver}"
        );
        assert!(is_closing_line(lines[1]), "{driver}: {out}");
        assert_eq!(lines.len(), 2, "{driver}: {out}");
        for f in &p {
            let d = std::fs::read(f).unwrap();
            assert!(d[..8192].iter().all(|&b| b == 0), "{driver}");
            assert!(
                d[8192..8192 + 16 * 4096].iter().all(|&b| b == 0xcd),
                "{driver}"
            );
            assert!(d[8192 + 16 * 4096..].iter().all(|&b| b == 0), "{driver}");
        }
        // The flush schedule (drain, flush, go on) under every driver.
        let o = bench(
            &p,
            &[
                "-w",
                "-c",
                "300",
                "-d",
                "4",
                "--flush-interval",
                "100",
                "--driver",
                driver,
            ],
        );
        assert!(o.status.success(), "{driver}: {}", stderr(&o));
        let out = stdout(&o);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[1], "Sending flush every 100 requests", "{driver}");
        assert!(is_closing_line(lines[2]), "{driver}: {out}");
        // 300 zero-pattern writes from offset 0 wrap around the 1 MiB
        // device: they overwrite the 0xcd blocks too.
        for f in &p {
            let d = std::fs::read(f).unwrap();
            assert!(d.iter().all(|&b| b == 0), "{driver}");
        }
    }
}

#[test]
fn every_driver_reads_and_fails_past_the_end() {
    let p = replicas("read-drivers");
    for driver in DRIVERS {
        for flags in [
            &["-c", "600", "-d", "3", "-S", "12k"][..],
            &["-c", "100", "-d", "8", "-s", "64k"][..],
            &["-c", "50", "-d", "1", "-s", "1536"][..],
        ] {
            let flags = with(flags, &["--driver", driver]);
            let o = bench_s(&p, &flags);
            assert!(o.status.success(), "{flags:?}: {}", stderr(&o));
            let sync = bench_s(&p, &flags[..flags.len() - 2]);
            assert_eq!(
                stdout(&o).lines().next(),
                stdout(&sync).lines().next(),
                "{flags:?}"
            );
        }
        let o = bench(&p, &["-c", "1", "-o", "1M", "--driver", driver]);
        assert_eq!(o.status.code(), Some(1), "{driver}");
        assert_eq!(
            stderr(&o),
            "quorum bench: Failed request: Input/output error\n",
            "{driver}"
        );
    }
}

#[test]
fn quorum_drivers_vote_and_preads_does_not() {
    let p = replicas("vote");
    // Every child different: no two agree.
    for (i, f) in p.iter().enumerate() {
        fill(f, i as u8 + 1);
    }
    for driver in ["sync", "tokio"] {
        for early in [&[][..], &["--early-quorum"][..]] {
            let flags = with(&["-c", "8", "-d", "2", "--driver", driver], early);
            let o = bench_s(&p, &flags);
            assert_eq!(o.status.code(), Some(1), "{flags:?}");
            assert_eq!(
                stderr(&o),
                "quorum bench: Failed request: Input/output error\n",
                "{flags:?}"
            );
        }
    }
    // preads has no vote: the same files read fine.
    let o = bench(&p, &["-c", "8", "-d", "2", "--driver", "preads"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Two agree (the third differs everywhere): the quorum answers.
    std::fs::copy(&p[0], &p[1]).unwrap();
    for driver in ["sync", "tokio"] {
        let o = bench(&p, &["-c", "64", "-d", "4", "--driver", driver]);
        assert!(o.status.success(), "{driver}: {}", stderr(&o));
        // And with threshold 3 it may not.
        let o = bench(
            &p,
            &[
                "-c",
                "64",
                "-d",
                "4",
                "--threshold",
                "3",
                "--driver",
                driver,
            ],
        );
        assert_eq!(o.status.code(), Some(1), "{driver}");
    }
}

#[test]
fn early_quorum_answers_with_the_agreeing_children() {
    let p = replicas("early");
    for (i, f) in p.iter().enumerate() {
        fill(f, i as u8 + 1);
    }
    // Children 0 and 2 agree; child 1, the odd one out, is also slow.
    std::fs::copy(&p[0], &p[2]).unwrap();
    for driver in ["sync", "tokio"] {
        let o = bench(
            &p,
            &[
                "-c",
                "32",
                "-d",
                "4",
                "--early-quorum",
                "--delay",
                "1=1ms",
                "--driver",
                driver,
            ],
        );
        assert!(o.status.success(), "{driver}: {}", stderr(&o));
        assert!(is_closing_line(stdout(&o).lines().nth(1).unwrap()));
        // Threshold 3 with early quorum still needs all three to agree.
        let o = bench(
            &p,
            &[
                "-c",
                "8",
                "-d",
                "1",
                "--early-quorum",
                "--threshold",
                "3",
                "--driver",
                driver,
            ],
        );
        assert_eq!(o.status.code(), Some(1), "{driver}");
    }
}

#[test]
fn stats_print_latency_and_peak_rss() {
    let p = replicas("stats");
    for driver in DRIVERS {
        let o = bench(&p, &["-c", "500", "-d", "4", "--stats", "--driver", driver]);
        assert!(o.status.success(), "{driver}: {}", stderr(&o));
        let (lat, rss) = stats_lines(&stdout(&o));
        assert!(lat[0] > 0.0, "{driver}: {lat:?}");
        assert!(
            lat.windows(2).all(|w| w[0] <= w[1]),
            "{driver}: percentiles out of order: {lat:?}"
        );
        // A few MiB for the program, far less than a GiB.
        assert!((500..1 << 20).contains(&rss), "{driver}: {rss} KiB");
    }
    // With a child delayed by 2 ms, every quorum read waits for it (no
    // early quorum): even the median request takes 2 ms.
    for driver in DRIVERS {
        let o = bench(
            &p,
            &[
                "-c", "20", "-d", "1", "--stats", "--delay", "1=2ms", "--driver", driver,
            ],
        );
        assert!(o.status.success(), "{driver}: {}", stderr(&o));
        let (lat, _) = stats_lines(&stdout(&o));
        assert!(lat[0] >= 2000.0, "{driver}: {lat:?}");
    }
    // A write bench with a final flush prints the same two lines after it.
    let o = bench(
        &p,
        &[
            "-w",
            "-c",
            "20",
            "-d",
            "2",
            "--flush-interval",
            "10",
            "--stats",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[3].starts_with("Latency: p50 "), "{out}");
    assert!(lines[4].starts_with("Peak RSS: "), "{out}");
}

#[test]
fn bad_new_flags_are_refused_clearly() {
    let p = replicas("bad-new");
    let fmt = |d: &str| {
        format!(
            "Invalid delay specified: '{d}'. Expected SLOT=DURATION with a unit ns, us, ms or s, e.g. 2=1ms."
        )
    };
    let mut cases: Vec<(Vec<&str>, String)> = [
        "2", "=1ms", "x=1ms", "-1=1ms", "0=1", "0=ms", "0=1min", "0=-1ms", "0=.5ms", "0=1.ms",
    ]
    .iter()
    .map(|d| (vec!["--delay", *d], fmt(d)))
    .collect();
    cases.push((
        vec!["--delay", "3=1ms"],
        "Invalid delay specified: '3=1ms'. There is no child 3: the children are 0 to 2.".into(),
    ));
    cases.push((
        vec!["--delay", "0=1ms", "--delay", "0=2ms"],
        "Invalid delay specified: '0=2ms'. Child 0 already has a delay.".into(),
    ));
    cases.push((
        vec!["--driver", "preads", "-t", "none"],
        "--driver preads supports only --cache writeback".into(),
    ));
    for (flags, want) in &cases {
        let o = bench(&p, flags);
        assert_eq!(o.status.code(), Some(1), "{flags:?}");
        assert_eq!(
            stderr(&o).trim_end(),
            format!("quorum bench: {want}"),
            "{flags:?}"
        );
        assert!(stdout(&o).is_empty(), "{flags:?}");
    }
    let o = bench(&p, &["--driver", "aio"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("[possible values: sync, tokio, preads]"),
        "{}",
        stderr(&o)
    );
    let help = stdout(&quorum(&["bench", "--help"]));
    for h in [
        "--driver <DRIVER>",
        "--early-quorum",
        "--delay <SLOT=DURATION>",
        "--stats",
        "Latency: p50 Aus, p90 Bus, p99 Cus, max Dus",
        "Peak RSS: N KiB",
    ] {
        assert!(help.contains(h), "help lacks {h}:\n{help}");
    }
}
