//! A monitor session over the manager with a fake device: QEMU's
//! negotiation, replies, refusals and naming (R-QMP-1, R-QMP-2, R-MEMBER).

use quorum_qmp::manager::{Device, Manager};
use quorum_qmp::node::{Proto, Spec, Stat};
use quorum_qmp::session::{Session, Version, greeting};
use serde_json::Value;

/// Children by id; ids as the core hands them out (R-MEMBER-1: the next
/// index, one back when the highest is deleted).
#[derive(Debug, Default)]
struct Fake {
    children: Vec<u32>,
    next: u32,
    threshold: usize,
    quit: bool,
}

impl Device for Fake {
    type Child = String;
    fn open(&mut self, spec: &Spec) -> Result<String, String> {
        match &spec.proto {
            Proto::File { filename } if filename.contains("missing") => Err(format!(
                "Could not open '{filename}': No such file or directory"
            )),
            p => Ok(p.filename()),
        }
    }
    fn stat(&self, _: &String) -> Stat {
        Stat {
            size: 1 << 20,
            allocated: Some(4096),
            reachable: true,
        }
    }
    fn attach(&mut self, _: &str, _: String, _: bool) -> Result<u32, String> {
        let id = self.next;
        self.next += 1;
        self.children.push(id);
        Ok(id)
    }
    fn detach(&mut self, id: u32) -> Result<(), String> {
        if self.children.len() <= self.threshold {
            return Err(format!(
                "The number of children cannot be lower than the vote threshold {}",
                self.threshold
            ));
        }
        self.children.retain(|c| *c != id);
        if id + 1 == self.next {
            self.next -= 1;
        }
        Ok(())
    }
    fn children(&self) -> Vec<u32> {
        self.children.clone()
    }
    fn shape(&self) -> (u64, usize) {
        (1 << 20, self.threshold)
    }
    fn quit(&mut self) {
        self.quit = true;
    }
}

fn version() -> Version {
    Version {
        qemu: (10, 0, 0),
        package: "test".into(),
    }
}

fn setup() -> (Session, Manager<Fake>) {
    let fake = Fake {
        children: vec![0, 1, 2],
        next: 3,
        threshold: 2,
        quit: false,
    };
    let kids = (0..3)
        .map(|i| {
            let spec = Spec {
                name: format!("c{i}"),
                raw: false,
                proto: Proto::File {
                    filename: format!("/r{i}.img"),
                },
                read_only: false,
            };
            (spec, format!("/r{i}.img"), i)
        })
        .collect();
    let m = Manager::new(fake, "quorum0", false, version(), kids);
    (Session::new(), m)
}

fn send(s: &mut Session, m: &mut Manager<Fake>, line: &str) -> String {
    let r = s.handle(line, m);
    assert!(r.line.ends_with("\r\n"));
    r.line.trim_end().to_string()
}

/// R-QMP-1: greeting, negotiation first, ids echoed, QEMU's texts.
#[test]
fn r_qmp_1_negotiation_and_ids_as_qemu() {
    let (mut s, mut m) = setup();
    assert_eq!(
        greeting(&version()),
        "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 0, \"major\": 10}, \"package\": \"test\"}, \"capabilities\": [\"oob\"]}}\r\n"
    );
    let before = r#"{"id": 7, "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}"#;
    assert_eq!(
        send(&mut s, &mut m, r#"{"execute":"query-version","id":7}"#),
        before
    );
    assert!(!s.negotiated());
    assert_eq!(
        send(
            &mut s,
            &mut m,
            r#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":{"k":[1,"x"]}}"#
        ),
        r#"{"return": {}, "id": {"k": [1, "x"]}}"#
    );
    assert!(s.negotiated());
    assert_eq!(
        send(&mut s, &mut m, r#"{"execute":"qmp_capabilities"}"#),
        r#"{"error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}}"#
    );
    assert_eq!(
        send(&mut s, &mut m, r#"{"execute":"nope","id":"a"}"#),
        r#"{"id": "a", "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}"#
    );
    assert_eq!(
        send(&mut s, &mut m, r#"{"execute":"query-version","id":-5}"#),
        r#"{"return": {"qemu": {"micro": 0, "minor": 0, "major": 10}, "package": "test"}, "id": -5}"#
    );
    assert_eq!(
        send(
            &mut s,
            &mut m,
            r#"{"execute":"query-version","arguments":{"x":1}}"#
        ),
        r#"{"error": {"class": "GenericError", "desc": "Parameter 'x' is unexpected"}}"#
    );
    assert_eq!(
        send(&mut s, &mut m, r#"{"exec-oob":"query-version","id":1}"#),
        r#"{"id": 1, "error": {"class": "GenericError", "desc": "The command query-version does not support OOB"}}"#
    );
}

fn ok(s: &mut Session, m: &mut Manager<Fake>, line: &str) {
    let r = send(s, m, line);
    assert_eq!(r, r#"{"return": {}}"#, "{line}");
}

fn err(s: &mut Session, m: &mut Manager<Fake>, line: &str) -> String {
    let r: Value = serde_json::from_str(&send(s, m, line)).unwrap();
    r["error"]["desc"]
        .as_str()
        .unwrap_or_else(|| panic!("{line}: {r}"))
        .to_string()
}

fn children(s: &mut Session, m: &mut Manager<Fake>) -> Vec<(String, Value)> {
    let r: Value =
        serde_json::from_str(&send(s, m, r#"{"execute":"query-named-block-nodes"}"#)).unwrap();
    r["return"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node-name"].as_str().unwrap().to_string(),
                n["x-child"].clone(),
            )
        })
        .collect()
}

/// R-QMP-2 with R-MEMBER-1..3: QEMU's names and refusals through
/// blockdev-add, x-blockdev-change and blockdev-del.
#[test]
fn r_qmp_2_membership_as_qemu() {
    let (mut s, mut m) = setup();
    ok(&mut s, &mut m, r#"{"execute":"qmp_capabilities"}"#);
    let nodes = children(&mut s, &mut m);
    let names: Vec<&str> = nodes.iter().map(|n| n.0.as_str()).collect();
    assert_eq!(
        names,
        ["quorum0", "c2", "c1", "c0"],
        "newest first, the device after its children"
    );
    let add = |n: &str, f: &str| {
        format!(
            r#"{{"execute":"blockdev-add","arguments":{{"driver":"raw","node-name":"{n}","file":{{"driver":"file","filename":"{f}"}}}}}}"#
        )
    };
    let attach = |n: &str| {
        format!(
            r#"{{"execute":"x-blockdev-change","arguments":{{"parent":"quorum0","node":"{n}"}}}}"#
        )
    };
    let detach = |c: &str| {
        format!(
            r#"{{"execute":"x-blockdev-change","arguments":{{"parent":"quorum0","child":"{c}"}}}}"#
        )
    };
    ok(&mut s, &mut m, &add("new0", "/n0.img"));
    ok(&mut s, &mut m, &attach("new0"));
    let nodes = children(&mut s, &mut m);
    assert_eq!(nodes[0], ("new0".into(), Value::from("children.3")));
    assert!(
        nodes[1].0.starts_with("#block"),
        "the raw node's protocol node: {nodes:?}"
    );
    // R-MEMBER-1: del 3; add -> 3; del 1; add -> 4.
    ok(&mut s, &mut m, &detach("children.3"));
    ok(&mut s, &mut m, &attach("new0"));
    assert_eq!(children(&mut s, &mut m)[0].1, Value::from("children.3"));
    ok(&mut s, &mut m, &detach("children.1"));
    ok(&mut s, &mut m, &add("new1", "/n1.img"));
    ok(&mut s, &mut m, &attach("new1"));
    assert_eq!(
        children(&mut s, &mut m)[0],
        ("new1".into(), Value::from("children.4"))
    );
    // The refusals, in QEMU's words and order.
    let e = |s: &mut Session, m: &mut Manager<Fake>, l: &str| err(s, m, l);
    assert_eq!(
        e(&mut s, &mut m, &attach("new1")),
        "The node new1 already has a parent"
    );
    assert_eq!(
        e(&mut s, &mut m, &attach("ghost")),
        "Node 'ghost' not found"
    );
    assert_eq!(
        e(&mut s, &mut m, &attach("quorum0")),
        "The node quorum0 already has a parent"
    );
    assert_eq!(
        e(&mut s, &mut m, &detach("children.9")),
        "Node 'quorum0' does not have child 'children.9'"
    );
    assert_eq!(
        e(&mut s, &mut m, &detach("c0")),
        "Node 'quorum0' does not have child 'c0'"
    );
    assert_eq!(
        e(
            &mut s,
            &mut m,
            r#"{"execute":"x-blockdev-change","arguments":{"parent":"quorum0","child":"children.0","node":"c1"}}"#
        ),
        "The parameters child and node are in conflict"
    );
    assert_eq!(
        e(
            &mut s,
            &mut m,
            r#"{"execute":"x-blockdev-change","arguments":{"parent":"quorum0"}}"#
        ),
        "Either child or node must be specified"
    );
    assert_eq!(
        e(
            &mut s,
            &mut m,
            r#"{"execute":"x-blockdev-change","arguments":{"parent":"nosuch","child":"children.0"}}"#
        ),
        "Cannot find device='nosuch' nor node-name='nosuch'"
    );
    assert_eq!(
        e(
            &mut s,
            &mut m,
            r#"{"execute":"x-blockdev-change","arguments":{"parent":"c0","node":"c1"}}"#
        ),
        "The node c0 does not support adding a child"
    );
    assert_eq!(
        e(
            &mut s,
            &mut m,
            r#"{"execute":"x-blockdev-change","arguments":{"parent":5}}"#
        ),
        "Invalid parameter type for 'parent', expected: string"
    );
    assert_eq!(
        e(&mut s, &mut m, &add("c0", "/x.img")),
        "Duplicate nodes with node-name='c0'"
    );
    assert_eq!(
        e(&mut s, &mut m, &add("m0", "/missing.img")),
        "Could not open '/missing.img': No such file or directory"
    );
    assert_eq!(
        e(
            &mut s,
            &mut m,
            r#"{"execute":"blockdev-del","arguments":{"node-name":"new1"}}"#
        ),
        "Block device new1 is in use"
    );
    assert_eq!(
        e(
            &mut s,
            &mut m,
            r#"{"execute":"blockdev-del","arguments":{"node-name":"quorum0"}}"#
        ),
        "Node quorum0 is in use"
    );
    assert_eq!(
        e(
            &mut s,
            &mut m,
            r#"{"execute":"blockdev-del","arguments":{"node-name":"ghost"}}"#
        ),
        "Failed to find node with node-name='ghost'"
    );
    // Down to the threshold (children 0, 2, 3, 4 → 0, 2), then refused.
    ok(&mut s, &mut m, &detach("children.4"));
    ok(&mut s, &mut m, &detach("children.3"));
    assert_eq!(
        e(&mut s, &mut m, &detach("children.2")),
        "The number of children cannot be lower than the vote threshold 2"
    );
    // Detached nodes stay until deleted; c1 (a starting child) too.
    ok(
        &mut s,
        &mut m,
        r#"{"execute":"blockdev-del","arguments":{"node-name":"new1"}}"#,
    );
    ok(
        &mut s,
        &mut m,
        r#"{"execute":"blockdev-del","arguments":{"node-name":"c1"}}"#,
    );
    assert_eq!(
        e(
            &mut s,
            &mut m,
            r#"{"execute":"blockdev-del","arguments":{"node-name":"c1"}}"#
        ),
        "Failed to find node with node-name='c1'"
    );
    let r = s.handle(r#"{"execute":"quit"}"#, &mut m);
    assert!(r.quit);
    assert!(m.device().quit);
}
