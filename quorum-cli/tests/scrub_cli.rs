//! `quorum scrub` as a user runs it, on real image files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SIZE: usize = 512 * 1024;
const REGION: usize = 64 * 1024;

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

/// A fresh directory with `n` identical replicas of `SIZE` bytes.
fn replicas(test: &str, n: usize) -> (PathBuf, Vec<PathBuf>) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("scrub-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 + i / 4096) as u8).collect();
    let paths: Vec<PathBuf> = (0..n)
        .map(|i| {
            let p = dir.join(format!("r{i}.img"));
            std::fs::write(&p, &data).unwrap();
            p
        })
        .collect();
    (dir, paths)
}

/// Overwrites bytes of one file, behind the device's back.
fn corrupt(path: &Path, offset: usize, bytes: &[u8]) {
    let mut d = std::fs::read(path).unwrap();
    d[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, d).unwrap();
}

fn args<'a>(paths: &'a [PathBuf], extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["scrub", "--region-size", "64k"];
    v.extend(paths.iter().map(|p| p.to_str().unwrap()));
    v.extend_from_slice(extra);
    v
}

fn read_all(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn clean_replicas_exit_0() {
    let (_d, p) = replicas("clean", 3);
    let o = quorum(&args(&p, &[]));
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("children.0"), "{out}");
    assert!(out.contains("result: clean"), "{out}");
    assert!(out.contains("8 regions of 65536 bytes"), "{out}");
}

#[test]
fn one_bad_replica_is_named_with_its_regions_and_nothing_is_written() {
    let (_d, p) = replicas("minority", 3);
    for region in [1, 4, 7] {
        corrupt(&p[1], region * REGION + 100, b"corrupt!");
    }
    let before = read_all(&p);
    let o = quorum(&args(&p, &[]));
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("children.1 ("), "{out}");
    assert!(out.contains("3 bad regions"), "{out}");
    for region in [1, 4, 7] {
        let line = format!(
            "region {region} (offset {}, 65536 bytes): outvoted",
            region * REGION
        );
        assert!(out.contains(&line), "missing {line}:\n{out}");
    }
    assert!(
        out.contains("children.0 (") && out.contains("): clean"),
        "{out}"
    );
    assert!(
        out.contains("result: minority copies in 3 regions\n"),
        "{out}"
    );
    // Without --repair the children are not written at all.
    assert_eq!(read_all(&p), before);
}

#[test]
fn repair_makes_the_replicas_byte_identical() {
    let (_d, p) = replicas("repair", 3);
    corrupt(&p[2], 0, b"X");
    corrupt(&p[2], 3 * REGION + 4095, b"YYYY");
    corrupt(&p[0], 6 * REGION + 17, b"Z");
    let o = quorum(&args(&p, &["--repair"]));
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("2 bad regions, 2 repaired"), "{out}");
    assert!(out.contains("1 bad region, 1 repaired"), "{out}");
    assert!(out.contains("(repaired)"), "{out}");
    let after = read_all(&p);
    assert!(
        after[0] == after[1] && after[1] == after[2],
        "replicas differ after --repair"
    );
    let again = quorum(&args(&p, &[]));
    assert_eq!(again.status.code(), Some(0), "{}", stdout(&again));
}

#[test]
fn a_region_without_quorum_exits_2_and_is_not_rewritten() {
    let (_d, p) = replicas("noquorum", 3);
    corrupt(&p[0], 2 * REGION + 10, b"AAAA");
    corrupt(&p[1], 2 * REGION + 10, b"BBBB");
    // And a minority copy elsewhere, which --repair does fix.
    corrupt(&p[2], 5 * REGION, b"CCCC");
    let before = read_all(&p);
    let o = quorum(&args(&p, &["--repair"]));
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("no quorum: region 2 (offset 131072, 65536 bytes)"),
        "{out}"
    );
    assert!(out.contains("result: 1 region without quorum"), "{out}");
    let after = read_all(&p);
    let r2 = 2 * REGION..3 * REGION;
    for i in 0..3 {
        assert_eq!(
            after[i][r2.clone()],
            before[i][r2.clone()],
            "region 2 of r{i} written"
        );
    }
    let r5 = 5 * REGION..6 * REGION;
    assert_eq!(
        after[2][r5.clone()],
        after[0][r5.clone()],
        "minority not repaired"
    );
}

#[test]
fn json_summary_has_per_child_bad_regions() {
    let (_d, p) = replicas("json", 3);
    corrupt(&p[0], REGION, b"!!");
    corrupt(&p[0], 3 * REGION, b"!!");
    let mut a = vec!["scrub", "--json", "--region-size", "64k"];
    let named = format!("disk-a={}", p[0].display());
    a.push(&named);
    a.extend(p[1..].iter().map(|p| p.to_str().unwrap()));
    let o = quorum(&a);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("valid JSON");
    assert_eq!(v["status"], "minority");
    assert_eq!(v["exit"], 1);
    assert_eq!(v["size"], SIZE as u64);
    assert_eq!(v["regions"], 8);
    assert_eq!(v["threshold"], 2);
    let kids = v["children"].as_array().unwrap();
    assert_eq!(kids.len(), 3);
    assert_eq!(kids[0]["name"], "disk-a");
    let bad: Vec<u64> = kids[0]["bad_regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(bad, vec![REGION as u64, 3 * REGION as u64]);
    assert_eq!(kids[0]["bad_regions"][0]["problem"], "outvoted");
    assert_eq!(kids[0]["bad_regions"][0]["repaired"], false);
    assert_eq!(kids[1]["name"], "children.1");
    assert!(kids[1]["bad_regions"].as_array().unwrap().is_empty());
    assert!(v["no_quorum"].as_array().unwrap().is_empty());
}

#[test]
fn events_are_qmp_lines() {
    let (d, p) = replicas("events", 3);
    corrupt(&p[1], 0, b"?");
    let log = d.join("events.jsonl");
    let log_s = log.to_str().unwrap().to_string();
    let o = quorum(&args(&p, &["--events", &log_s]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["event"], "QUORUM_REPORT_BAD");
    assert_eq!(lines[0]["data"]["node-name"], "children.1");
    assert_eq!(lines[0]["data"]["sector-num"], 0);
    assert_eq!(lines[0]["data"]["sectors-count"], (REGION / 512) as u64);
}

#[test]
fn bad_input_is_one_line_exit_2_and_nothing_written() {
    let (d, p) = replicas("badinput", 3);
    corrupt(&p[1], 0, b"?");
    let before = read_all(&p);
    let short = d.join("short.img");
    std::fs::write(&short, vec![0u8; SIZE / 2]).unwrap();
    let missing = d.join("missing.img");
    let ps: Vec<&str> = p.iter().map(|p| p.to_str().unwrap()).collect();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![ps[0], ps[1], missing.to_str().unwrap()],
            "No such file or directory",
        ),
        (
            vec![ps[0], ps[1], short.to_str().unwrap()],
            "children differ in size",
        ),
        (
            vec![ps[0], ps[1], ps[2], "--threshold", "4"],
            "threshold may not exceed",
        ),
        (
            vec![ps[0], ps[1], ps[2], "--threshold", "0"],
            "vote-threshold",
        ),
        (vec![ps[0], ps[1], ps[0]], "same file"),
        (
            vec![ps[0], ps[1], ps[2], "--region-size", "0"],
            "region size",
        ),
    ];
    for (extra, want) in cases {
        let mut a = vec!["scrub", "--repair"];
        a.extend(extra);
        let o = quorum(&a);
        assert_eq!(o.status.code(), Some(2), "{a:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{a:?}: {err}");
        assert!(err.starts_with("quorum scrub: "), "{err}");
        assert!(err.contains(want), "{a:?}: {err}");
        assert!(stdout(&o).is_empty());
    }
    assert_eq!(read_all(&p), before, "bad input wrote to a child");
}

#[test]
fn default_threshold_is_a_majority() {
    let o = quorum(&["scrub", "--help"]);
    let out = stdout(&o);
    assert!(out.contains("majority"), "{out}");
    assert!(out.contains("Exit status"), "{out}");
    // Five children, two corrupted alike: 3 of 5 is still a quorum.
    let (_d, p) = replicas("majority", 5);
    corrupt(&p[3], 0, b"same");
    corrupt(&p[4], 0, b"same");
    let o = quorum(&args(&p, &[]));
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("threshold 3"));
    // With --threshold 4 the same region has no quorum.
    let o = quorum(&args(&p, &["--threshold", "4"]));
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
}

#[test]
fn a_short_last_region_is_voted_too() {
    let (_d, p) = replicas("lastregion", 3);
    corrupt(&p[0], SIZE - 1, b"~");
    let mut a = vec!["scrub", "--region-size", "100k", "--json"];
    a.extend(p.iter().map(|p| p.to_str().unwrap()));
    let o = quorum(&a);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["regions"], 6);
    let b = &v["children"][0]["bad_regions"][0];
    assert_eq!(b["region"], 5);
    assert_eq!(b["offset"], 5 * 102400);
    assert_eq!(b["length"], SIZE as u64 - 5 * 102400);
}
