//! Simulator speed: simulated child I/Os per second, 4 KiB requests, one core.
//!
//! The goal is at least 1 000 000 child I/Os per second; criterion prints the
//! rate as "elem/s" (one element = one child I/O). Faults on, every kind.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quorum_sim::{Faults, Sim, SimConfig};

fn cfg(faults: Faults) -> SimConfig {
    SimConfig {
        seed: 1,
        ops: 20_000,
        len: 4096,
        faults,
        ..SimConfig::default()
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sim_4k_child_ios");
    g.measurement_time(Duration::from_secs(5)).sample_size(20);
    // The simulator itself (bare core), and with the kit's contract checker
    // on every call as `quorum sim` runs by default.
    let runs = [
        ("all_faults", Faults::All, false),
        ("no_faults", Faults::None, false),
        ("all_faults_checked", Faults::All, true),
    ];
    for (name, faults, checked) in runs {
        let sim = || {
            let s = Sim::new(cfg(faults), false).unwrap();
            if checked { s } else { s.unchecked() }
        };
        let ios = sim().run().unwrap().stats.child_ios;
        g.throughput(Throughput::Elements(ios));
        g.bench_function(name, |b| {
            b.iter(|| black_box(sim().run().unwrap().stats.child_ios))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
