//! One monitor connection (R-QMP-1): the greeting, capabilities
//! negotiation, then commands; one reply per line in, events once
//! negotiated. The commands themselves are a [`Handler`]'s.

use serde_json::{Map, Value, json};

use crate::json::to_line;
use crate::message::{self, Command, QmpError};

/// Runs commands for sessions: shared by every monitor of a device.
pub trait Handler {
    /// The commands known, in `query-commands` order (`qmp_capabilities`
    /// and `query-commands` among them).
    fn commands(&self) -> Vec<&'static str>;
    /// Runs `command` (known, and allowed: the session checked): its
    /// `return` value.
    fn execute(&mut self, command: &Command) -> Result<Value, QmpError>;
}

/// What the driver does after a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The reply, a JSON line with its `\r\n` (QEMU ends lines so).
    pub line: String,
    /// The command was `quit` and succeeded: the device stops.
    pub quit: bool,
}

/// QEMU's version triple and package string, as the greeting and
/// `query-version` give them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// Major, minor, micro.
    pub qemu: (u32, u32, u32),
    /// The package: who built it.
    pub package: String,
}

impl Version {
    /// `{"qemu": {"micro", "minor", "major"}, "package"}` in QEMU's order.
    pub fn to_json(&self) -> Value {
        let (major, minor, micro) = self.qemu;
        json!({"qemu": {"major": major, "minor": minor, "micro": micro}, "package": self.package})
    }
}

/// A monitor's state: negotiating until `qmp_capabilities`, then in
/// command mode (and receiving events).
#[derive(Debug, Default)]
pub struct Session {
    negotiated: bool,
    /// `qmp_capabilities` enabled `oob`.
    oob: bool,
}

/// The line a monitor sends first.
pub fn greeting(version: &Version) -> String {
    let g = json!({"QMP": {"version": version.to_json(), "capabilities": ["oob"]}});
    line(&g)
}

fn line(v: &Value) -> String {
    let mut s = to_line(v);
    s.push_str("\r\n");
    s
}

impl Session {
    /// A monitor that has just sent its greeting.
    pub fn new() -> Session {
        Session::default()
    }

    /// Whether events go to this monitor (after negotiation, as QEMU).
    pub fn negotiated(&self) -> bool {
        self.negotiated
    }

    /// Handles one line from the client.
    pub fn handle(&mut self, input: &str, handler: &mut dyn Handler) -> Response {
        let (cmd, id) = match message::parse(input) {
            Ok(c) => {
                let id = c.id.clone();
                (c, id)
            }
            Err((e, id)) => return respond(Err(e), id, false),
        };
        let known = handler.commands().contains(&cmd.execute.as_str());
        if cmd.oob && !self.oob {
            let e = QmpError::generic("QMP input member 'exec-oob' is unexpected");
            return respond(Err(e), id, false);
        }
        if cmd.oob && known {
            // No command here runs out of band (QEMU's run only a few
            // migration commands so).
            let e = QmpError::generic(format!("The command {} does not support OOB", cmd.execute));
            return respond(Err(e), id, false);
        }
        if !self.negotiated {
            // QEMU looks every command up among the negotiation commands
            // and replaces "not found" with this (monitor/qmp.c).
            if cmd.execute != "qmp_capabilities" {
                let e = QmpError::not_found(
                    "Expecting capabilities negotiation with 'qmp_capabilities'",
                );
                return respond(Err(e), id, false);
            }
            let r = capabilities(&cmd.arguments);
            if let Ok(oob) = r {
                self.negotiated = true;
                self.oob = oob;
            }
            return respond(r.map(|_| json!({})), id, false);
        }
        if !known {
            let e = QmpError::not_found(format!("The command {} has not been found", cmd.execute));
            return respond(Err(e), id, false);
        }
        if cmd.execute == "qmp_capabilities" {
            let e = QmpError::not_found(
                "Capabilities negotiation is already complete, command ignored",
            );
            return respond(Err(e), id, false);
        }
        let r = handler.execute(&cmd);
        let quit = cmd.execute == "quit" && r.is_ok();
        respond(r, id, quit)
    }
}

/// `qmp_capabilities {"enable"?: ["oob"]}`: whether `oob` was enabled (the
/// greeting offers it, as qemu-storage-daemon's does, and QEMU's client
/// library asks for it).
fn capabilities(args: &Map<String, Value>) -> Result<bool, QmpError> {
    crate::schema::check("", args, &[("enable", crate::schema::Ty::List, false)])?;
    let mut oob = false;
    if let Some(Value::Array(caps)) = args.get("enable") {
        for (i, c) in caps.iter().enumerate() {
            match c.as_str() {
                Some("oob") => oob = true,
                Some(other) => {
                    return Err(QmpError::generic(format!(
                        "Parameter 'null' does not accept value '{other}'"
                    )));
                }
                None => {
                    return Err(QmpError::generic(format!(
                        "Invalid parameter type for 'enable[{i}]', expected: string"
                    )));
                }
            }
        }
    }
    Ok(oob)
}

fn respond(r: Result<Value, QmpError>, id: Option<Value>, quit: bool) -> Response {
    let v = match r {
        Ok(v) => message::reply(v, id),
        Err(e) => message::error(&e, id),
    };
    Response {
        line: line(&v),
        quit,
    }
}
