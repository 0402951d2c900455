//! `--stats`: per-request latency percentiles and the peak resident set.

/// `--stats`: latency percentiles (nearest rank) and the peak RSS.
pub(super) fn print_stats(mut lat: Vec<u64>) {
    lat.sort_unstable();
    let us = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let rank = (p / 100.0 * lat.len() as f64).ceil() as usize;
        lat[rank.clamp(1, lat.len()) - 1] as f64 / 1000.0
    };
    println!(
        "Latency: p50 {:.1}us, p90 {:.1}us, p99 {:.1}us, max {:.1}us",
        us(50.0),
        us(90.0),
        us(99.0),
        us(100.0)
    );
    match peak_rss_kib() {
        Some(k) => println!("Peak RSS: {k} KiB"),
        None => println!("Peak RSS: unknown"),
    }
}

/// VmHWM from /proc/self/status, in KiB.
pub(super) fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
