//! Smoke test: a write then a read through the in-memory driver.
mod support;
use quorum_proto::*;
use support::*;

#[test]
fn smoke_read_write() {
    let mut m = Mem::uniform(Config::new(3, 2), 4096, 0);
    assert_eq!(m.write(0, &[7u8; 512]), Outcome::Done);
    let (o, d) = m.read(0, 512);
    assert!(matches!(o, Outcome::Read { .. }));
    assert_eq!(d.unwrap(), vec![7u8; 512]);
}
