//! The simulator's own guarantees: determinism, exact record → replay, and
//! refusal of tampered or foreign traces; plus a sweep of swarm seeds.

use quorum_sim::trace::{Trace, TraceError};
use quorum_sim::{Faults, Mode, Sim, SimConfig, SimError};

fn cfg(seed: u64, ops: u64) -> SimConfig {
    SimConfig {
        seed,
        ops,
        ..SimConfig::default()
    }
}

fn run(c: SimConfig) -> quorum_sim::Report {
    match Sim::new(c, false).expect("valid config").run() {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn same_seed_same_trace_hash_different_seed_different_hash() {
    for seed in 0..20 {
        let a = run(cfg(seed, 300));
        let b = run(cfg(seed, 300));
        assert_eq!(a.hash, b.hash, "seed {seed} is not deterministic");
        assert_eq!(a.stats, b.stats);
        let c = run(cfg(seed + 1000, 300));
        assert_ne!(a.hash, c.hash, "seeds {seed} and {} collide", seed + 1000);
    }
}

#[test]
fn recording_does_not_change_the_run() {
    let plain = run(cfg(5, 400));
    let rec = Sim::new(cfg(5, 400), true).unwrap().run().unwrap();
    assert_eq!(plain.hash, rec.hash);
    assert!(plain.trace.is_none());
    let text = rec.trace.expect("recorded");
    assert!(text.starts_with("quorum-sim trace v1\nconfig seed=5 "));
}

fn recorded(seed: u64, ops: u64) -> (quorum_sim::Report, String) {
    let r = Sim::new(cfg(seed, ops), true).unwrap().run().unwrap();
    let t = r.trace.clone().unwrap();
    (r, t)
}

#[test]
fn replay_reproduces_the_recording_exactly() {
    for seed in [1, 2, 3, 77] {
        let (rec, text) = recorded(seed, 300);
        let rep = Sim::replay(&text).unwrap().run().unwrap();
        assert_eq!(rep.hash, rec.hash);
        assert_eq!(rep.stats, rec.stats);
        assert_eq!(rep.steps, rec.steps);
    }
}

#[test]
fn tampered_trace_is_refused_by_its_hash() {
    let (_, text) = recorded(9, 100);
    let tampered = text.replacen("\nd 1\n", "\nd 2\n", 1);
    assert_ne!(tampered, text, "the trace has a `d 1` line to tamper with");
    match Sim::replay(&tampered) {
        Err(SimError::Trace(TraceError::Hash { .. })) => {}
        other => panic!("tampered trace accepted: {:?}", other.map(|_| ())),
    }
}

#[test]
fn truncated_trace_is_refused() {
    let (_, text) = recorded(9, 100);
    let cut = &text[..text.len() / 2];
    match Sim::replay(cut) {
        Err(SimError::Trace(TraceError::Malformed { why, .. })) => {
            assert!(why.contains("missing `end`"), "{why}")
        }
        other => panic!("truncated trace accepted: {:?}", other.map(|_| ())),
    }
}

#[test]
fn foreign_and_future_files_are_refused_with_a_clear_error() {
    let e = Sim::replay("hello\nworld\n").err().unwrap();
    assert_eq!(
        e.to_string(),
        "not a quorum-sim trace (first line is not `quorum-sim trace v1`)"
    );
    let e = Sim::replay("quorum-sim trace v9\n").err().unwrap();
    assert!(matches!(e, SimError::Trace(TraceError::Version(_))), "{e}");
    let e = Sim::replay("quorum-sim trace v1\nconfig seed=x\nend lines=0 hash=cbf29ce484222325\n")
        .err()
        .unwrap();
    assert!(e.to_string().contains("bad config"), "{e}");
}

#[test]
fn a_diverging_replay_names_the_step_and_both_lines() {
    let (_, text) = recorded(4, 200);
    let mut t = Trace::parse(&text).unwrap();
    // Change an output the core will not reproduce, and re-seal the file.
    let k = t
        .steps
        .iter()
        .position(|l| l.starts_with("o complete"))
        .unwrap();
    t.steps[k] = "o complete #999 Done".into();
    let err = Sim::replay(&t.to_text()).unwrap().run().unwrap_err();
    match err {
        SimError::Trace(TraceError::Diverged {
            step,
            expected,
            actual,
        }) => {
            assert_eq!(step, k);
            assert_eq!(expected, "o complete #999 Done");
            assert!(actual.starts_with("o complete #"), "{actual}");
        }
        e => panic!("expected a divergence, got {e}"),
    }
}

#[test]
fn a_replay_of_a_different_decision_diverges() {
    let (_, text) = recorded(4, 200);
    let mut t = Trace::parse(&text).unwrap();
    // The first decision picks the fault mix; flipping a late one changes the run.
    let k = t.steps.iter().rposition(|l| l.starts_with("d ")).unwrap() - 40;
    let k = (k..t.steps.len())
        .find(|&i| t.steps[i].starts_with("d "))
        .unwrap();
    let v: u64 = t.steps[k][2..].parse().unwrap();
    t.steps[k] = format!("d {}", v ^ 1);
    match Sim::replay(&t.to_text()).unwrap().run() {
        Err(SimError::Trace(TraceError::Diverged { step, .. })) => {
            assert!(step > k, "{step} <= {k}")
        }
        Err(e) => panic!("expected a divergence, got {e}"),
        Ok(_) => {} // a flipped coin can land the same way; no divergence is then correct
    }
}

/// Swarm testing: each seed draws its own fault mix; safety runs must keep
/// every invariant, over-threshold runs must fail correctly. Odd seeds run
/// with early quorum.
#[test]
fn swarm_seeds_hold_every_invariant() {
    let seeds: u64 = std::env::var("QUORUM_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    for seed in 0..seeds {
        for mode in [Mode::Safety, Mode::OverThreshold] {
            let children = 1 + (seed % 5) as usize;
            let threshold = 1 + (seed / 5 % children as u64) as usize;
            let base = SimConfig {
                ops: 200,
                children,
                threshold,
                ..SimConfig::default()
            };
            // Swarm faults, early quorum on odd seeds, as `quorum sim --sweep`.
            let c = base.sweep(seed, mode);
            assert_eq!((c.faults, c.early), (Faults::Swarm, seed % 2 == 1));
            run(c);
        }
    }
}

#[test]
fn over_threshold_runs_do_fail_requests() {
    let mut failures = 0;
    for seed in 0..20 {
        let c = SimConfig {
            seed,
            ops: 300,
            mode: Mode::OverThreshold,
            ..SimConfig::default()
        };
        failures += run(c).stats.failures;
    }
    assert!(
        failures > 0,
        "over-threshold runs never failed a request: the faults are not biting"
    );
}

#[test]
fn default_scenario_injects_every_fault_kind() {
    let r = run(cfg(0, 10_000));
    let i = r.stats.injected;
    for (name, n) in [
        ("read", i.read_error),
        ("write", i.write_error),
        ("flush", i.flush_error),
        ("latent", i.latent),
        ("corrupt", i.corrupt),
        ("lost", i.lost_write),
        ("misdirected", i.misdirected),
    ] {
        assert!(n > 0, "no {name} fault injected");
    }
    assert!(r.stats.reports > 0 && r.stats.repaired > 0);
    assert!(r.stats.children_added + r.stats.children_removed > 0);
}

#[test]
fn bad_configs_are_refused_with_a_reason() {
    for (c, msg) in [
        (
            SimConfig {
                children: 0,
                ..cfg(0, 1)
            },
            "children must be 1..=16",
        ),
        (
            SimConfig {
                children: 17,
                ..cfg(0, 1)
            },
            "children must be 1..=16",
        ),
        (
            SimConfig {
                threshold: 4,
                ..cfg(0, 1)
            },
            "threshold must be 1..=3",
        ),
        (
            SimConfig {
                size: 1000,
                ..cfg(0, 1)
            },
            "size must be",
        ),
        (
            SimConfig {
                depth: 0,
                ..cfg(0, 1)
            },
            "depth must be",
        ),
    ] {
        let e = Sim::new(c, false).err().expect("refused");
        assert!(e.contains(msg), "{e}");
    }
}

#[test]
fn config_lines_parse_in_any_order_and_refuse_repeats_and_gaps() {
    let line = "len=512 seed=7 children=3 threshold=2 ops=10 size=65536 depth=4 pattern=quorum rewrite=1 mode=safety faults=all";
    let c: SimConfig = line.parse().unwrap();
    assert_eq!((c.seed, c.len), (7, 512));
    let twice = format!("{line} seed=8");
    assert_eq!(
        twice.parse::<SimConfig>().unwrap_err(),
        "key `seed` given twice"
    );
    let gap = line.replace(" ops=10", "");
    assert_eq!(
        gap.parse::<SimConfig>().unwrap_err(),
        "key `ops` is missing"
    );
    let odd = SimConfig {
        size: 65536 + 512,
        ..cfg(0, 1)
    };
    assert!(
        Sim::new(odd, false)
            .err()
            .unwrap()
            .contains("multiple of 64 KiB")
    );
}

#[test]
fn scripted_requests_outside_the_device_are_refused() {
    use quorum_proto::{Config, Request};
    let mut sim = Sim::scripted(Config::new(3, 2), 4096).unwrap();
    assert!(
        sim.request(
            Request::Read {
                offset: 4096,
                len: 512
            },
            None
        )
        .is_err()
    );
    assert!(
        sim.request(
            Request::Write {
                offset: 0,
                len: 512
            },
            Some(&[1; 3])
        )
        .is_err()
    );
    let (o, d) = sim
        .request(
            Request::Read {
                offset: 0,
                len: 512,
            },
            None,
        )
        .unwrap();
    assert!(matches!(o, quorum_proto::Outcome::Read { .. }));
    assert_eq!(d, Some(vec![0; 512]));
    let fifo_repair = Config::new(2, 1)
        .with_read_pattern(quorum_proto::ReadPattern::Fifo)
        .with_fifo_rewrite_failed(true);
    assert!(Sim::scripted(fifo_repair, 4096).is_err());
}

// ---------------------------------------------------------------------------
// Early quorum.

fn early(seed: u64, ops: u64) -> SimConfig {
    SimConfig {
        early: true,
        ..cfg(seed, ops)
    }
}

/// Seeded early runs answer reads while slow children are still out, keep
/// every invariant (the answered data is checked when it is answered), and
/// exercise a write following an answered read before its stragglers settle.
#[test]
fn early_runs_answer_before_stragglers_and_keep_every_invariant() {
    let (mut answers, mut overwritten) = (0, 0);
    for seed in 0..6 {
        let r = run(early(seed, 2000));
        assert!(
            r.stats.early_answers > 0,
            "seed {seed}: no read was answered before its stragglers"
        );
        answers += r.stats.early_answers;
        overwritten += r.stats.early_overwritten;
        assert!(r.stats.reports > 0 && r.stats.repaired > 0, "seed {seed}");
    }
    assert!(answers > 1000, "only {answers} early answers");
    assert!(
        overwritten > 0,
        "no write ever followed an answered read before its stragglers"
    );
    // The same seeds without early quorum never answer early.
    assert_eq!(run(cfg(0, 2000)).stats.early_answers, 0);
}

/// Other shapes, where the early cap (threshold − 1 faulty) is stricter than
/// the plain one, and over-threshold runs.
#[test]
fn early_runs_of_other_shapes_keep_every_invariant() {
    for (children, threshold) in [(5, 2), (5, 3), (4, 2), (7, 3), (2, 1)] {
        for seed in 0..12 {
            for mode in [Mode::Safety, Mode::OverThreshold] {
                let base = SimConfig {
                    children,
                    threshold,
                    ops: 300,
                    early: true,
                    ..SimConfig::default()
                };
                run(base.sweep(seed, mode));
            }
        }
    }
}

/// An answered read no longer occupies its caller: with depth 1, a write can
/// still be submitted while an answered read's stragglers are out.
#[test]
fn an_answered_read_frees_its_caller() {
    let mut overwritten = 0;
    for seed in 0..10 {
        let r = run(SimConfig {
            depth: 1,
            ..early(seed, 1000)
        });
        overwritten += r.stats.early_overwritten;
    }
    assert!(overwritten > 0, "depth 1 never overlapped an answered read");
}

#[test]
fn early_runs_record_and_replay_exactly() {
    let rec = Sim::new(early(3, 500), true).unwrap().run().unwrap();
    assert!(rec.stats.early_answers > 0);
    let text = rec.trace.clone().unwrap();
    assert!(text.contains("\nconfig seed=3 ") && text.contains(" early=1"));
    assert!(text.contains("\no answer #"));
    let rep = Sim::replay(&text).unwrap().run().unwrap();
    assert_eq!((rep.hash, rep.stats), (rec.hash, rec.stats));
}

#[test]
fn the_early_key_is_optional_and_written_only_when_set() {
    let old = "seed=7 children=3 threshold=2 ops=10 size=65536 depth=4 pattern=quorum rewrite=1 mode=safety faults=all";
    let c: SimConfig = old.parse().unwrap();
    assert!(!c.early);
    assert_eq!(c.to_string(), old);
    let on: SimConfig = format!("{old} early=1").parse().unwrap();
    assert!(on.early);
    assert_eq!(on.to_string(), format!("{old} early=1"));
    assert_eq!(
        format!("{old} early=x").parse::<SimConfig>().unwrap_err(),
        "early: `x` is not a number"
    );
    // The safety cap: at most threshold − 1 faulty with early quorum.
    let five = |t, early| {
        SimConfig {
            children: 5,
            threshold: t,
            early,
            ..cfg(0, 1)
        }
        .safe_faulty(5)
    };
    assert_eq!((five(2, false), five(2, true)), (2, 1));
    assert_eq!((five(3, false), five(3, true)), (2, 2));
    assert_eq!(five(1, true), 0);
}

mod scripted_early {
    use quorum_proto::{ChildId, Config, Event, OpType, Outcome, Request};
    use quorum_sim::{Sim, SimError};

    const READ: Request = Request::Read {
        offset: 0,
        len: 512,
    };

    /// 5 children, threshold 2, the last child slow; `bad` hold the same
    /// wrong bytes, and the checker knows them as faulty (safety mode).
    fn five(early: bool, bad: &[u32]) -> Sim {
        let config = Config::new(5, 2)
            .with_rewrite_corrupted(true)
            .with_early_quorum(early);
        let mut sim = Sim::scripted(config, 4096).unwrap();
        let faulty: Vec<ChildId> = bad.iter().map(|&c| ChildId(c)).collect();
        for &c in &faulty {
            sim.poke(c, 0, &[0xee; 512]);
        }
        sim.slow(ChildId(4));
        sim.check_safety(&faulty);
        sim
    }

    /// Two faulty children agreeing on wrong bytes is within the plain cap
    /// for 5 children, threshold 2 (the full vote outvotes them 3 to 2) but
    /// beyond the early one: they answer first, with wrong data, and the
    /// checker must say so at the answer.
    #[test]
    fn an_early_answer_beyond_the_cap_is_caught() {
        let mut plain = five(false, &[0, 1]);
        let (o, d) = plain.request(READ, None).unwrap();
        assert_eq!(
            o,
            Outcome::Read {
                slot: 2,
                child: ChildId(2)
            }
        );
        assert_eq!(d, Some(vec![0; 512]));

        let mut early = five(true, &[0, 1]);
        match early.request(READ, None) {
            Err(SimError::Invariant { message, .. }) => {
                assert!(message.contains("answered"), "{message}");
                assert!(message.contains("no serial order"), "{message}");
            }
            other => panic!("a wrong early answer was not caught: {other:?}"),
        }
    }

    /// Within the early cap: the answer is right and given before the slow
    /// child; the outvoted child is reported and rewritten from the answer.
    #[test]
    fn an_early_answer_within_the_cap_is_right_and_repairs() {
        let mut sim = five(true, &[0]);
        let (o, d) = sim.request(READ, None).unwrap();
        // Slots complete in order: 0 (wrong), 1, then 2 makes two agree.
        assert_eq!(
            o,
            Outcome::Read {
                slot: 1,
                child: ChildId(1)
            }
        );
        assert_eq!(d, Some(vec![0; 512]));
        let events: Vec<Event> = sim.take_events().into_iter().map(|(_, e)| e).collect();
        assert_eq!(
            events,
            vec![Event::ReportBad {
                op: OpType::Read,
                error: None,
                child: ChildId(0),
                sector_num: 0,
                sectors_count: 1,
            }]
        );
        assert_eq!(&sim.disk(ChildId(0)).unwrap()[..512], &[0; 512][..]);
    }
}

/// R-CANCEL-1, R-CANCEL-2: requests are cancelled at random in every run
/// (a fault kind of its own, swarm included); each cancellation is checked
/// — `ECANCELED` at once, no event after it, the issued operations still
/// accepted, no rewrite landing after a later overlapping write, the drain
/// waiting for them — and the run records and replays exactly.
#[test]
fn r_cancel_1_and_2_cancellations_are_drawn_checked_and_replayed() {
    let (mut cancelled, mut after) = (0, 0);
    for seed in 0..20 {
        for mode in [Mode::Safety, Mode::OverThreshold] {
            let r = run(SimConfig::default().sweep(seed, mode));
            cancelled += r.stats.cancelled;
            after += r.stats.cancelled_ops;
        }
    }
    assert!(cancelled > 0, "no request was ever cancelled");
    assert!(
        after > 0,
        "no cancelled request ever had an operation still to carry out"
    );
    let rec = Sim::new(cfg(11, 2000), true).unwrap().run().unwrap();
    assert!(rec.stats.cancelled > 0);
    let text = rec.trace.clone().unwrap();
    assert!(text.contains(" cancel=1") && text.contains("\no cancel #"));
    let rep = Sim::replay(&text).unwrap().run().unwrap();
    assert_eq!((rep.hash, rep.stats), (rec.hash, rec.stats));
    // Without it, nothing is cancelled and the trace says nothing of it.
    let off = Sim::new(
        SimConfig {
            cancel: false,
            ..cfg(11, 2000)
        },
        true,
    )
    .unwrap()
    .run()
    .unwrap();
    assert_eq!(off.stats.cancelled, 0);
    assert!(!off.trace.unwrap().contains("cancel"));
}

/// Issue 14: the crash checks can fail. The same crash seeds that run clean
/// are caught as soon as the restarted device forgets its map file's
/// write-intent marks (R-SYNC-2: a chunk the map calls settled differs
/// between the children), with the seed to replay.
#[test]
fn r_sync_2_a_map_that_forgets_its_marks_at_a_crash_is_caught() {
    let (mut restarts, mut caught) = (0, Vec::new());
    for seed in 0..40 {
        let c = SimConfig {
            sync: quorum_sim::SWEEP_CHUNK,
            crash: true,
            size: quorum_sim::SWEEP_SYNC_SIZE,
            ..cfg(seed, 300)
        }
        .sweep(seed, Mode::Safety);
        restarts += run(c).stats.sync.restarts;
        let mut broken = Sim::new(c, false).unwrap();
        broken.forget_map_at_crash();
        if let Err(SimError::Invariant {
            seed: s, message, ..
        }) = broken.run()
        {
            assert_eq!(s, seed);
            caught.push(message);
        }
    }
    assert!(restarts > 0, "no crash in 40 crash seeds");
    assert!(
        caught.iter().any(|m| m.contains("R-SYNC-2")),
        "a map without its marks went unnoticed: {caught:?}"
    );
}
