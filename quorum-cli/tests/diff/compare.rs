//! Comparing `quorum io` with QEMU, allowing only for what QEMU's transport
//! changes: qemu-io's timing lines, NBD's few error codes and QMP's event
//! throttle.

use super::run::Outcome;
use super::scenario::Scenario;
use serde_json::Value;

/// qemu-io's timing line (`4 KiB, 1 ops; 00.00 sec (… ops/sec)`) differs
/// on every run; drop it on both sides.
pub(crate) fn filter(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| !(l.contains(" ops; ") && l.ends_with(" ops/sec)")))
        .cloned()
        .collect()
}

/// QMP throttles `QUORUM_REPORT_BAD` per node-name and `QUORUM_FAILURE`
/// per event name, one second each.
fn throttle_key(e: &Value) -> String {
    let name = e["event"].as_str().unwrap_or("?");
    if name == "QUORUM_REPORT_BAD" {
        format!("{name}/{}", e["data"]["node-name"].as_str().unwrap_or("?"))
    } else {
        name.to_string()
    }
}

fn by_key(evs: &[Value]) -> Vec<(String, Vec<Value>)> {
    let mut out: Vec<(String, Vec<Value>)> = Vec::new();
    for e in evs {
        let k = throttle_key(e);
        match out.iter_mut().find(|(kk, _)| *kk == k) {
            Some((_, v)) => v.push(e.clone()),
            None => out.push((k, vec![e.clone()])),
        }
    }
    out
}

/// What QMP lets through of our event stream when all of it happens inside
/// one throttle window: per key the first event at once, and the last one
/// (the held-back event is replaced by each newer one) a second later.
pub(crate) fn throttled(evs: &[Value]) -> (Vec<Value>, Vec<(String, Vec<Value>)>) {
    let groups = by_key(evs);
    let firsts = groups.iter().map(|(_, v)| v[0].clone()).collect();
    let kept = groups
        .into_iter()
        .map(|(k, v)| {
            let mut keep = vec![v[0].clone()];
            if v.len() > 1 {
                keep.push(v[v.len() - 1].clone());
            }
            (k, keep)
        })
        .collect();
    (firsts, kept)
}

fn is_subsequence(small: &[Value], big: &[Value]) -> bool {
    let mut it = big.iter();
    small.iter().all(|s| it.any(|b| b == s))
}

fn show(evs: &[Value]) -> String {
    if evs.is_empty() {
        return "    (none)\n".into();
    }
    evs.iter().map(|e| format!("    {e}\n")).collect()
}

fn lines_diff(what: &str, qemu: &[String], ours: &[String], out: &mut Vec<String>) {
    if qemu != ours {
        out.push(format!(
            "{what} differ\n  QEMU:\n{}  ours:\n{}",
            qemu.iter()
                .map(|l| format!("    {l}\n"))
                .collect::<String>(),
            ours.iter()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        ));
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(
            "first difference at byte {i}: QEMU 0x{:02x}, ours 0x{:02x}",
            a[i], b[i]
        ),
        None => format!("lengths {} vs {}", a.len(), b.len()),
    }
}

fn images_diff(what: &str, sc: &Scenario, qemu: &Outcome, ours: &Outcome, out: &mut Vec<String>) {
    for (i, (q, o)) in qemu.images.iter().zip(&ours.images).enumerate() {
        if q != o {
            out.push(format!(
                "{what}: final bytes of child {i} ({}) differ, {}",
                sc.child_name(i),
                first_difference(q, o)
            ));
        }
    }
}

/// Differences between qemu-io on the quorum node and `quorum io`:
/// messages, exit status and final bytes, exactly.
pub(crate) fn compare_direct(sc: &Scenario, ours: &Outcome, direct: &Outcome) -> Vec<String> {
    let mut out = Vec::new();
    lines_diff(
        "stdout (qemu-io on the quorum node)",
        &filter(&direct.stdout),
        &filter(&ours.stdout),
        &mut out,
    );
    lines_diff(
        "stderr (qemu-io on the quorum node)",
        &filter(&direct.stderr),
        &filter(&ours.stderr),
        &mut out,
    );
    if direct.code != ours.code {
        out.push(format!(
            "exit status differs: QEMU {:?}, ours {:?}",
            direct.code, ours.code
        ));
    }
    images_diff("qemu-io on the quorum node", sc, direct, ours, &mut out);
    out
}

/// Differences between the NBD run and `quorum io`: final bytes, and the
/// QMP events after QMP's throttle.
pub(crate) fn compare_nbd(
    sc: &Scenario,
    ours: &Outcome,
    nbd: &Outcome,
    events: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    images_diff("qemu-storage-daemon over NBD", sc, nbd, ours, &mut out);
    if !events {
        return out;
    }
    let ours_events = &ours.events[..];
    let (firsts, kept) = throttled(ours_events);
    let qemu_groups = by_key(&nbd.events);
    let ok = if nbd.slow {
        // The throttle window may have expired mid-run: QEMU saw a subset.
        let ours_groups = by_key(ours_events);
        qemu_groups.iter().all(|(k, q)| {
            ours_groups
                .iter()
                .find(|(kk, _)| kk == k)
                .is_some_and(|(_, o)| o.first() == q.first() && is_subsequence(q, o))
        }) && qemu_groups.len() == ours_groups.len()
    } else {
        let mut a = qemu_groups.clone();
        let mut b = kept.clone();
        a.sort_by(|x, y| x.0.cmp(&y.0));
        b.sort_by(|x, y| x.0.cmp(&y.0));
        a == b && nbd.events[..nbd.immediate] == firsts[..]
    };
    if !ok {
        out.push(format!(
            "events differ{}\n  QEMU (QMP, throttled):\n{}  ours, as QMP's throttle would pass them:\n{}  ours, all:\n{}",
            if nbd.slow { " (slow run: subset check)" } else { "" },
            show(&nbd.events),
            show(&kept.into_iter().flat_map(|(_, v)| v).collect::<Vec<_>>()),
            show(ours_events)
        ));
    }
    out
}
