//! `quorum sim` and `quorum replay` as a user runs them.

use std::process::{Command, Output};

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

#[test]
fn same_seed_prints_the_same_bytes_and_seeds_differ() {
    let a = quorum(&["sim", "--seed", "3", "--ops", "2000"]);
    let b = quorum(&["sim", "--seed", "3", "--ops", "2000"]);
    let c = quorum(&["sim", "--seed", "4", "--ops", "2000"]);
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(a.stdout, b.stdout);
    assert_ne!(a.stdout, c.stdout);
    let out = stdout(&a);
    for row in [
        "silent corruption",
        "detected (REPORT_BAD)",
        "repaired (rewrites)",
        "invariants checked",
        "trace hash",
    ] {
        assert!(out.contains(row), "summary lacks {row}:\n{out}");
    }
}

#[test]
fn bare_sim_runs_the_default_scenario() {
    let o = quorum(&["sim", "--ops", "500"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("seed 0: 3 children, threshold 2, "),
        "{}",
        stdout(&o)
    );
}

#[test]
fn record_then_replay_reproduces_and_tampering_is_refused() {
    let dir = std::env::temp_dir().join(format!("quorum-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("run.trace");
    let t = trace.to_str().unwrap();
    let rec = quorum(&["sim", "--seed", "11", "--ops", "300", "--record", t]);
    assert!(rec.status.success(), "{}", stderr(&rec));
    let rep = quorum(&["replay", t]);
    assert!(rep.status.success(), "{}", stderr(&rep));
    assert!(stdout(&rep).contains(": identical"));
    // Same summary table, same hash.
    let table = |s: &str| {
        s.lines()
            .take_while(|l| !l.starts_with("trace written") && !l.starts_with("replayed"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(table(&stdout(&rec)), table(&stdout(&rep)));

    let text = std::fs::read_to_string(&trace).unwrap();
    std::fs::write(&trace, text.replacen("\nd ", "\nd 9", 1)).unwrap();
    let bad = quorum(&["replay", t]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("corrupt trace"), "{}", stderr(&bad));

    std::fs::write(&trace, b"\x00\x01binary").unwrap();
    let foreign = quorum(&["replay", t]);
    assert_eq!(foreign.status.code(), Some(2));
    assert!(
        stderr(&foreign).contains("not a quorum-sim trace"),
        "{}",
        stderr(&foreign)
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_arguments_get_one_clear_line() {
    let o = quorum(&["sim", "--threshold", "5"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o).trim(),
        "quorum sim: threshold must be 1..=3 (the number of children), got 5"
    );
    let o = quorum(&["replay", "/nonexistent/trace"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).starts_with("quorum replay: cannot read /nonexistent/trace"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn sweep_reports_one_line() {
    let o = quorum(&["sim", "--sweep", "20", "--ops", "100"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Seeds with (seed >> 1) & 3 == 2 run sync tracking, == 3 crashes too:
    // 8 of 0..20 (4..8, 12..16), 4 of them with crashes; each in two modes.
    assert!(
        stdout(&o).starts_with("20 seeds, 40 runs (16 with sync tracking, 8 with crashes): "),
        "{}",
        stdout(&o)
    );
    let restarts: u64 = stdout(&o)
        .split(", ")
        .find_map(|p| p.strip_suffix(" restarts checked"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no restart count: {}", stdout(&o)));
    assert!(restarts > 0, "{}", stdout(&o));
    // Odd seeds run with early quorum: the line counts their answers.
    let early: u64 = stdout(&o)
        .split(", ")
        .find_map(|p| p.strip_suffix(" early answers"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no early answers count: {}", stdout(&o)));
    assert!(early > 0, "{}", stdout(&o));
}

/// The row of the summary table named `name`, as a number.
fn row(out: &str, name: &str) -> Option<u64> {
    out.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn early_quorum_flag_answers_early_records_and_replays() {
    let plain = quorum(&["sim", "--seed", "5", "--ops", "1500"]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    assert_eq!(row(&stdout(&plain), "early answers"), None);

    let dir = std::env::temp_dir().join(format!("quorum-cli-early-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("early.trace");
    let t = trace.to_str().unwrap();
    let o = quorum(&[
        "sim",
        "--seed",
        "5",
        "--ops",
        "1500",
        "--early-quorum",
        "--record",
        t,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let n = row(&stdout(&o), "early answers").expect("an early answers row");
    assert!(n > 0, "{}", stdout(&o));
    let text = std::fs::read_to_string(&trace).unwrap();
    assert!(
        text.lines().nth(1).is_some_and(|l| l.contains(" early=1")),
        "{}",
        text.lines().nth(1).unwrap_or("")
    );
    let rep = quorum(&["replay", t]);
    assert!(rep.status.success(), "{}", stderr(&rep));
    assert_eq!(row(&stdout(&rep), "early answers"), Some(n));
    std::fs::remove_dir_all(&dir).ok();
}

/// Sync tracking and crashes (issue 14): the flags, their clear errors, a
/// crash seed's replay command line, and a recorded crash run replayed.
#[test]
fn sync_and_crash_flags_run_record_and_replay() {
    let o = quorum(&["sim", "--seed", "3", "--ops", "2000", "--crash"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("\nrestarts checked "), "{out}");
    assert!(row(&out, "settle passes").is_some(), "{out}");

    let o = quorum(&["sim", "--ops", "500", "--sync", "131072"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(row(&stdout(&o), "map writes").is_some(), "{}", stdout(&o));
    assert!(!stdout(&o).contains("restarts checked"), "{}", stdout(&o));

    let o = quorum(&["sim", "--sync", "1000"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o).trim(),
        "quorum sim: sync chunk must be a power of two from 64 KiB to 64 MiB (0: no sync tracking), got 1000"
    );
    let o = quorum(&["sim", "--sync", "x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--sync"), "{}", stderr(&o));

    let dir = std::env::temp_dir().join(format!("quorum-cli-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("crash.trace");
    let t = trace.to_str().unwrap();
    let rec = quorum(&[
        "sim", "--seed", "7", "--ops", "3000", "--crash", "--record", t,
    ]);
    assert!(rec.status.success(), "{}", stderr(&rec));
    assert!(
        row(&stdout(&rec), "settle passes").is_some(),
        "{}",
        stdout(&rec)
    );
    let rep = quorum(&["replay", t]);
    assert!(rep.status.success(), "{}", stderr(&rep));
    assert!(stdout(&rep).contains(": identical"), "{}", stdout(&rep));
    std::fs::remove_dir_all(&dir).ok();
}
