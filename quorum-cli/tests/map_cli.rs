//! `quorum scrub --map` and the map file's checks, as a user meets them
//! on the command line (SPEC R-SYNC-6, R-SYNC-8; DESIGN.md "Sync tracking
//! and resync").
//!
//! - A child that was away while `quorum serve --map` wrote is resynced
//!   offline by `quorum scrub --map --repair` on the chunks it missed and
//!   nothing else; `quorum scrub` without a map stays the whole-device
//!   check.
//! - A map made for other children, another size or another chunk size,
//!   a foreign file and a damaged one are each refused with a message that
//!   says why, before anything is written; `--map-reset` takes the device
//!   over with every chunk unsettled and settles it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const CHUNK: u64 = 64 << 10;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn quorum(args: &[&str]) -> Output {
    run(Command::new(BIN).args(args))
}

/// `quorum scrub --json` output: one object.
fn summary(o: &Output) -> serde_json::Value {
    serde_json::from_str(stdout(o).trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {o:?}"))
}

/// Images of `size` bytes in `tmp`, named `{prefix}{i}.img`, each holding
/// the same pattern, so they start in sync.
fn patterned(tmp: &Tmp, prefix: &str, n: usize, size: usize) -> Vec<PathBuf> {
    let data: Vec<u8> = (0..size).map(|i| (i / 512 * 13 + i) as u8).collect();
    (0..n)
        .map(|i| {
            let p = tmp.path(&format!("{prefix}{i}.img"));
            std::fs::write(&p, &data).expect("image");
            p
        })
        .collect()
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).expect("read image")
}

/// The 64 KiB chunks in which `a` and `b` differ.
fn differing(a: &Path, b: &Path) -> Vec<usize> {
    let (a, b) = (bytes(a), bytes(b));
    a.chunks(CHUNK as usize)
        .zip(b.chunks(CHUNK as usize))
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| i)
        .collect()
}

/// R-SYNC-8 offline: three qemu-nbd replicas behind `quorum serve --map
/// --chunk-size 64K`; host2's server dies, the device writes three chunks
/// without it, and the server stops. host2 comes back and `quorum scrub
/// --map --repair` copies exactly those three chunks to it: not a chunk
/// that a fourth, unwritten one holds differently on host1 (corrupted
/// behind the device's back), which only the whole-device `quorum scrub`
/// finds and repairs.
#[test]
fn r_sync_8_scrub_map_resyncs_offline_only_the_chunks_a_child_missed() {
    if !qemu_present() {
        return;
    }
    let tmp = Tmp::new("map-offline");
    let imgs = patterned(&tmp, "", 3, 2 << 20);
    let (mut hosts, socks, kids) = qemu_nbd_hosts(&tmp, &imgs);
    let map = tmp.path("sync.map").display().to_string();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--map",
        &map,
        "--chunk-size",
        "64K",
    ];
    args.extend(kids.iter().map(String::as_str));
    let (mut server, url) = serve(&tmp, &args);
    ok(&qemu_io(&url, &["write -P 0x11 0 128k", "flush"]));
    hosts[2].0.kill().expect("kill qemu-nbd");
    let _ = hosts[2].0.wait();
    // Chunks 16 and 17, and 25 (a 4 KiB write inside it), without host2.
    ok(&qemu_io(
        &url,
        &[
            "write -P 0x33 1M 128k",
            "write -P 0x44 1600k 4k",
            "read -P 0x33 1M 128k",
            "flush",
        ],
    ));
    signal(server.0.id(), "TERM");
    assert!(
        wait_exit(&mut server).success(),
        "serve did not stop cleanly"
    );
    let missed = differing(&imgs[0], &imgs[2]);
    assert_eq!(missed, vec![16, 17, 25], "host2 missed other chunks");
    assert!(differing(&imgs[0], &imgs[1]).is_empty());
    // Chunk 30, never written, differs on host1 only.
    write_at(&imgs[1], 30 * CHUNK + 100, b"behind the device's back");
    hosts[2] = qemu_nbd(&imgs[2], &socks[2]);

    let scrub = |extra: &[&str]| {
        let mut a = vec!["scrub"];
        a.extend_from_slice(extra);
        a.extend(kids.iter().map(String::as_str));
        quorum(&a)
    };
    // Settling writes: without --repair nothing is opened for it.
    let o = scrub(&["--map", &map]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(stderr(&o).contains("add --repair"), "{o:?}");
    assert_eq!(differing(&imgs[0], &imgs[2]), missed);

    let o = scrub(&["--map", &map, "--repair", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let s = summary(&o);
    assert_eq!(s["resynced_bytes"], 3 * CHUNK, "{s}");
    assert_eq!(s["no_quorum_chunks"], 0, "{s}");
    assert!(
        differing(&imgs[0], &imgs[2]).is_empty(),
        "host2 not resynced"
    );
    assert_eq!(
        differing(&imgs[0], &imgs[1]),
        vec![30],
        "the map's resync touched a chunk it does not mark"
    );
    // The map is clean now: a second pass has nothing to do (human output).
    let o = scrub(&["--map", &map, "--repair"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(
        stdout(&o).contains("resync: 0 bytes brought back in sync")
            && stdout(&o).contains("0 chunk(s) left without quorum"),
        "{o:?}"
    );
    // Without a map, scrub votes over every region, and finds host1's.
    let o = scrub(&["--region-size", "64k", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let s = summary(&o);
    let host1 = s["children"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "host1"))
        .unwrap_or_else(|| panic!("no host1 in {s}"));
    assert_eq!(
        host1["bad_regions"].as_array().map(Vec::len),
        Some(1),
        "{s}"
    );
    let o = scrub(&["--region-size", "64k", "--repair"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    drop(hosts);
    let a = bytes(&imgs[0]);
    assert!(bytes(&imgs[1]) == a && bytes(&imgs[2]) == a);
    assert_eq!(read_at(&imgs[0], 1 << 20, 4), vec![0x33; 4]);
}

/// R-SYNC-6 on the command line: a map records its device (children,
/// size, chunk size); `quorum scrub --map` refuses a map for another one,
/// and a foreign or damaged file, saying why and writing nothing, until
/// `--map-reset` starts it over with every chunk unsettled, which settles
/// the device whole.
#[test]
fn r_sync_6_scrub_refuses_a_map_for_another_device_unless_reset() {
    let tmp = Tmp::new("map-mismatch");
    let size = 512 << 10;
    let imgs = patterned(&tmp, "a", 3, size);
    let map = tmp.path("sync.map").display().to_string();
    let paths = strs(&imgs);
    let p: Vec<&str> = paths.iter().map(String::as_str).collect();
    // `quorum io --map` makes the map: chunks of 64 KiB over a0..a2.
    let o = quorum(&[
        "io",
        "--threshold",
        "2",
        "--map",
        &map,
        "--chunk-size",
        "64K",
        p[0],
        p[1],
        p[2],
        "-c",
        "write -P 5 0 4k",
    ]);
    assert!(o.status.success(), "{o:?}");
    let made = bytes(Path::new(&map));

    // Another third child (same size, differing data).
    let other = patterned(&tmp, "b", 1, size);
    write_at(&other[0], 0, &[0xee; 4096]);
    write_at(&other[0], 300 << 10, &[0xee; 10]);
    let other = other[0].display().to_string();
    // Another size.
    let small = patterned(&tmp, "c", 3, size / 2);
    let small = strs(&small);
    let refused = |args: &[&str], why: &str| {
        let touched: Vec<&str> = args
            .iter()
            .copied()
            .filter(|a| a.ends_with(".img"))
            .collect();
        let before: Vec<Vec<u8>> = touched.iter().map(|i| bytes(Path::new(i))).collect();
        let mut a = vec!["scrub", "--repair", "--map", &map];
        a.extend_from_slice(args);
        let o = quorum(&a);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        let e = stderr(&o);
        assert!(e.contains(why) && e.contains(&map), "{args:?}: {e}");
        assert!(e.contains("--map-reset"), "no way out offered: {e}");
        for (i, b) in touched.iter().zip(&before) {
            assert!(&bytes(Path::new(i)) == b, "{args:?} wrote {i}");
        }
    };
    refused(
        &[p[0], p[1], &other],
        &format!("it is for the children children.0={}", p[0]),
    );
    refused(
        &[&small[0], &small[1], &small[2]],
        &format!(
            "it is for a device of {size} bytes, this one has {}",
            size / 2
        ),
    );
    refused(
        &["--chunk-size", "128K", p[0], p[1], p[2]],
        "its chunks are 65536 bytes, --chunk-size says 131072",
    );
    assert!(
        bytes(Path::new(&map)) == made,
        "a refused map was rewritten"
    );
    // The right device: accepted, nothing to do.
    let o = quorum(&["scrub", "--repair", "--map", &map, p[0], p[1], p[2]]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");

    // --map-reset: the map is taken over for a0, a1 and the other child,
    // every chunk unsettled; settling brings the other child's two odd
    // chunks to the majority.
    let o = quorum(&[
        "scrub",
        "--repair",
        "--json",
        "--map",
        &map,
        "--map-reset",
        p[0],
        p[1],
        &other,
    ]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let s = summary(&o);
    // Every chunk was settled; the other child lost the vote at least
    // once (a settle read may span both of its odd chunks).
    assert_eq!(s["resynced_bytes"], size, "{s}");
    assert!(
        s["settled_differences"]
            .as_u64()
            .is_some_and(|d| (1..=2).contains(&d)),
        "{s}"
    );
    assert_eq!(s["behind_chunks"], 0, "{s}");
    assert_eq!(s["no_quorum_chunks"], 0, "{s}");
    assert!(bytes(Path::new(&other)) == bytes(&imgs[0]));
    // The map now belongs to the new set: it opens without a reset.
    let o = quorum(&["scrub", "--repair", "--map", &map, p[0], p[1], &other]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");

    // A file that is not a map; one whose both copies are cut short.
    std::fs::write(&map, vec![0x5a; 8192]).expect("write");
    refused(&[p[0], p[1], p[2]], "not a quorum sync map");
    let o = quorum(&[
        "scrub",
        "--repair",
        "--map",
        &map,
        "--map-reset",
        p[0],
        p[1],
        p[2],
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let whole = bytes(Path::new(&map));
    std::fs::write(&map, &whole[..whole.len() / 3]).expect("truncate");
    refused(&[p[0], p[1], p[2]], "damaged");
}
