//! SPEC.md R-CFG-1..7: configuration validation, QEMU 10's error texts, the
//! effective configuration, and the device length.

mod spec_util;
mod support;

use quorum_proto::{Config, ConfigError, Errno, Outcome, Quorum, ReadPattern, device_length};
use spec_util::{pattern, read_ok};
use support::Mem;

fn open(cfg: Config) -> Result<Quorum, ConfigError> {
    Quorum::new(cfg)
}

/// Defaults of `Config::new` are QEMU's: quorum pattern, everything off.
#[test]
fn config_new_has_qemu_defaults() {
    let c = Config::new(3, 2);
    assert_eq!(c.children, 3);
    assert_eq!(c.threshold, 2);
    assert_eq!(c.read_pattern, ReadPattern::Quorum);
    assert_eq!(ReadPattern::default(), ReadPattern::Quorum);
    assert!(!c.rewrite_corrupted);
    assert!(!c.blkverify);
    assert!(!c.fifo_rewrite_failed);
    // Each setter sets exactly its own field, both ways.
    let on = c
        .with_read_pattern(ReadPattern::Fifo)
        .with_rewrite_corrupted(true)
        .with_blkverify(true)
        .with_fifo_rewrite_failed(true);
    assert_eq!(on.read_pattern, ReadPattern::Fifo);
    assert!(on.rewrite_corrupted && on.blkverify && on.fifo_rewrite_failed);
    assert_eq!((on.children, on.threshold), (3, 2));
    let off = on
        .with_read_pattern(ReadPattern::Quorum)
        .with_rewrite_corrupted(false)
        .with_blkverify(false)
        .with_fifo_rewrite_failed(false);
    assert_eq!(off, c);
    assert!(
        Config::new(2, 2)
            .with_rewrite_corrupted(true)
            .rewrite_corrupted
    );
    assert!(!Config::new(2, 2).with_rewrite_corrupted(true).blkverify);
    assert!(Config::new(2, 2).with_blkverify(true).blkverify);
    assert!(!Config::new(2, 2).with_blkverify(true).rewrite_corrupted);
    assert!(
        Config::new(2, 2)
            .with_fifo_rewrite_failed(true)
            .fifo_rewrite_failed
    );
}

/// R-CFG-1: zero children is an error, with QEMU 10's text.
#[test]
fn r_cfg_1_zero_children() {
    let e = open(Config::new(0, 1)).unwrap_err();
    assert_eq!(e, ConfigError::NoChildren);
    assert_eq!(
        e.to_string(),
        "Number of provided children must be 1 or more"
    );
    // Checked before the threshold, as QEMU does.
    assert_eq!(
        open(Config::new(0, 0)).unwrap_err(),
        ConfigError::NoChildren
    );
    assert_eq!(
        Config::new(0, 0).validate(16).unwrap_err(),
        ConfigError::NoChildren
    );
    // One child is enough.
    let q = open(Config::new(1, 1)).unwrap();
    assert_eq!(q.children().len(), 1);
}

/// R-CFG-1: more children than the build holds is refused (ours, not QEMU's).
#[test]
fn r_cfg_1_capacity() {
    let q = Quorum::<4, 1, 14>::new(Config::new(4, 1)).unwrap();
    assert_eq!(q.children().len(), 4);
    let e = Quorum::<4, 1, 14>::new(Config::new(5, 1)).unwrap_err();
    assert_eq!(e, ConfigError::TooManyChildren { capacity: 4 });
    assert_eq!(
        e.to_string(),
        "Too many children (this build holds at most 4)"
    );
    assert_eq!(Config::new(16, 1).validate(16).unwrap(), Config::new(16, 1));
    assert_eq!(
        Config::new(17, 1).validate(16).unwrap_err(),
        ConfigError::TooManyChildren { capacity: 16 }
    );
    // Capacity is checked before the threshold.
    assert_eq!(
        Config::new(17, 0).validate(16).unwrap_err(),
        ConfigError::TooManyChildren { capacity: 16 }
    );
}

/// R-CFG-2: the threshold must be in 1..=children; QEMU 10's texts.
#[test]
fn r_cfg_2_threshold_bounds() {
    let low = open(Config::new(3, 0)).unwrap_err();
    assert_eq!(low, ConfigError::ThresholdTooLow);
    assert_eq!(
        low.to_string(),
        "Parameter 'vote-threshold' expects a value >= 1"
    );
    let high = open(Config::new(3, 4)).unwrap_err();
    assert_eq!(high, ConfigError::ThresholdTooHigh);
    assert_eq!(high.to_string(), "threshold may not exceed children count");
    for t in 1..=3 {
        let q = open(Config::new(3, t)).unwrap();
        assert_eq!(q.config().threshold, t);
        assert_eq!(q.config().children, 3);
    }
    assert_eq!(
        open(Config::new(1, 2)).unwrap_err(),
        ConfigError::ThresholdTooHigh
    );
    assert_eq!(
        open(Config::new(1, 0)).unwrap_err(),
        ConfigError::ThresholdTooLow
    );
}

/// R-CFG-3: `quorum` (default) or `fifo`; anything else is an error naming both.
#[test]
fn r_cfg_3_read_pattern() {
    assert_eq!("quorum".parse::<ReadPattern>(), Ok(ReadPattern::Quorum));
    assert_eq!("fifo".parse::<ReadPattern>(), Ok(ReadPattern::Fifo));
    for bad in ["", "Fifo", "QUORUM", "fifo ", "round-robin", "quorumx"] {
        let e = bad.parse::<ReadPattern>().unwrap_err();
        assert_eq!(e, ConfigError::ReadPattern, "{bad:?}");
        let text = e.to_string();
        assert_eq!(text, "Please set read-pattern as fifo or quorum");
        assert!(text.contains("fifo") && text.contains("quorum"));
    }
    assert_eq!(ReadPattern::Quorum.as_str(), "quorum");
    assert_eq!(ReadPattern::Fifo.as_str(), "fifo");
    assert_eq!(ReadPattern::Quorum.to_string(), "quorum");
    assert_eq!(ReadPattern::Fifo.to_string(), "fifo");
    let q = open(Config::new(2, 1).with_read_pattern(ReadPattern::Fifo)).unwrap();
    assert_eq!(q.config().read_pattern, ReadPattern::Fifo);
}

/// R-CFG-4: blkverify needs `quorum`, exactly 2 children and threshold 2.
#[test]
fn r_cfg_4_blkverify_shape() {
    let ok = open(Config::new(2, 2).with_blkverify(true)).unwrap();
    assert!(ok.config().blkverify);
    for (n, t) in [(1, 1), (2, 1), (3, 2), (3, 3), (4, 2)] {
        let e = open(Config::new(n, t).with_blkverify(true)).unwrap_err();
        assert_eq!(e, ConfigError::Blkverify, "n={n} t={t}");
        assert_eq!(
            e.to_string(),
            "blkverify=on can only be set if there are exactly two files and vote-threshold is 2"
        );
    }
    // Checked before R-CFG-5, as QEMU does.
    assert_eq!(
        open(
            Config::new(3, 2)
                .with_blkverify(true)
                .with_rewrite_corrupted(true)
        )
        .unwrap_err(),
        ConfigError::Blkverify
    );
}

/// R-CFG-5: rewrite-corrupted with blkverify is an error.
#[test]
fn r_cfg_5_rewrite_with_blkverify() {
    let e = open(
        Config::new(2, 2)
            .with_blkverify(true)
            .with_rewrite_corrupted(true),
    )
    .unwrap_err();
    assert_eq!(e, ConfigError::RewriteWithBlkverify);
    assert_eq!(
        e.to_string(),
        "rewrite-corrupted=on cannot be used with blkverify=on"
    );
    let q = open(Config::new(2, 2).with_rewrite_corrupted(true)).unwrap();
    assert!(q.config().rewrite_corrupted);
    assert!(!q.config().blkverify);
}

/// R-CFG-6: with fifo, blkverify and rewrite-corrupted are ignored (even in
/// shapes R-CFG-4/5 would refuse); with quorum the fifo repair option is.
#[test]
fn r_cfg_6_fifo_ignores_blkverify_and_rewrite() {
    let cfg = Config::new(3, 1)
        .with_read_pattern(ReadPattern::Fifo)
        .with_blkverify(true)
        .with_rewrite_corrupted(true)
        .with_fifo_rewrite_failed(true);
    let eff = cfg.validate(16).unwrap();
    assert_eq!(
        eff,
        Config::new(3, 1)
            .with_read_pattern(ReadPattern::Fifo)
            .with_fifo_rewrite_failed(true)
    );
    let q = open(cfg).unwrap();
    assert_eq!(*q.config(), eff);

    // Quorum keeps rewrite-corrupted but drops the fifo-only option.
    let eff = Config::new(3, 2)
        .with_rewrite_corrupted(true)
        .with_fifo_rewrite_failed(true)
        .validate(16)
        .unwrap();
    assert_eq!(eff, Config::new(3, 2).with_rewrite_corrupted(true));

    // Behaviour: a fifo "blkverify" device with differing children returns
    // child 0's data, no mismatch, no event, no rewrite.
    let cfg = Config::new(2, 2)
        .with_read_pattern(ReadPattern::Fifo)
        .with_blkverify(true);
    let mut m = Mem::new(cfg, pattern("A B", 512));
    let (o, d) = m.read(0, 512);
    assert_eq!(o, read_ok(0, 0));
    assert_eq!(d.unwrap(), vec![0xaa; 512]);
    assert!(m.events().is_empty());

    // Behaviour: fifo with rewrite-corrupted does not rewrite anything.
    let cfg = Config::new(2, 1)
        .with_read_pattern(ReadPattern::Fifo)
        .with_rewrite_corrupted(true);
    let mut m = Mem::new(cfg, pattern("A B", 512));
    let (o, _) = m.read(0, 512);
    assert_eq!(o, read_ok(0, 0));
    assert_eq!(m.disk(1), &[0xbb; 512][..]);
    assert_eq!(m.log().len(), 2, "{:?}", m.log()); // one read, one completion
}

/// Every config error has its text, and is a `std::error::Error`.
#[test]
fn config_error_texts() {
    let table: [(ConfigError, &str); 7] = [
        (
            ConfigError::NoChildren,
            "Number of provided children must be 1 or more",
        ),
        (
            ConfigError::TooManyChildren { capacity: 64 },
            "Too many children (this build holds at most 64)",
        ),
        (
            ConfigError::ThresholdTooLow,
            "Parameter 'vote-threshold' expects a value >= 1",
        ),
        (
            ConfigError::ThresholdTooHigh,
            "threshold may not exceed children count",
        ),
        (
            ConfigError::ReadPattern,
            "Please set read-pattern as fifo or quorum",
        ),
        (
            ConfigError::Blkverify,
            "blkverify=on can only be set if there are exactly two files and vote-threshold is 2",
        ),
        (
            ConfigError::RewriteWithBlkverify,
            "rewrite-corrupted=on cannot be used with blkverify=on",
        ),
    ];
    for (e, text) in table {
        assert_eq!(e.to_string(), text);
        let dyn_err: &dyn std::error::Error = &e;
        assert_eq!(dyn_err.to_string(), text);
    }
}

/// R-CFG-7: equal lengths give the length; a mismatch is EIO; a child's own
/// error is returned as is; the first problem in child order wins.
#[test]
fn r_cfg_7_device_length() {
    type Lengths = Vec<Result<u64, Errno>>;
    let cases: Vec<(Lengths, Result<u64, Errno>)> = vec![
        (vec![Ok(4096)], Ok(4096)),
        (vec![Ok(0)], Ok(0)),
        (vec![Ok(4096), Ok(4096), Ok(4096)], Ok(4096)),
        (vec![Ok(4096), Ok(4097)], Err(Errno::EIO)),
        (vec![Ok(4096), Ok(4096), Ok(512)], Err(Errno::EIO)),
        (vec![Ok(1 << 40), Ok((1 << 40) + 512)], Err(Errno::EIO)),
        (vec![Err(Errno::ENOSPC)], Err(Errno::ENOSPC)),
        (vec![Err(Errno::EPERM), Ok(1)], Err(Errno::EPERM)),
        (vec![Ok(10), Err(Errno::ENOMEDIUM)], Err(Errno::ENOMEDIUM)),
        // The first problem in child order wins.
        (vec![Ok(10), Err(Errno::ENOSPC), Ok(20)], Err(Errno::ENOSPC)),
        (vec![Ok(10), Ok(20), Err(Errno::ENOSPC)], Err(Errno::EIO)),
        (
            vec![Ok(10), Ok(10), Err(Errno::EPERM), Err(Errno::ENOSPC)],
            Err(Errno::EPERM),
        ),
        // No children at all (a configuration never has none).
        (vec![], Err(Errno::EINVAL)),
    ];
    for (lengths, want) in cases {
        assert_eq!(device_length(lengths.clone()), want, "{lengths:?}");
    }
}

/// R-CFG-7 against QEMU's message: a length mismatch surfaces as EIO's text.
#[test]
fn r_cfg_7_mismatch_is_eio_text() {
    let e = device_length([Ok(1 << 20), Ok(2 << 20), Ok(1 << 20)]).unwrap_err();
    assert_eq!(e.to_string(), "Input/output error");
}

/// The checks above hold for a core of any capacity, and a valid config
/// yields a working device.
#[test]
fn valid_config_works() {
    let mut m = Mem::uniform(Config::new(3, 3), 1024, 0x11);
    let (o, d) = m.read(512, 512);
    assert_eq!(o, read_ok(0, 0));
    assert_eq!(d.unwrap(), vec![0x11; 512]);
    assert_eq!(m.write(0, &[1; 4]), Outcome::Done);
}
