#!/usr/bin/env python3
"""The same QMP conversation against qemu-storage-daemon and `quorum serve`.

Driven by quorum-cli/tests/qmp_cli.rs (r_qmp_1_2_3_differential_...). SPEC
R-QMP-1..3 and R-MEMBER: "The same QMP conversation run against
qemu-storage-daemon and against quorum serve gives the same replies and
events, apart from fields QEMU has and we don't."

argv[1] is a JSON object:
  {"sides": {"qemu": SIDE, "quorum": SIDE}, "qemu_io": "qemu-io"}
  SIDE = {"qmp": QMP socket path, "nbd": NBD URL for qemu-io,
          "dir": the side's scratch directory (images r0..r2, new*.img)}
Both servers run a quorum node "quorum0" (vote-threshold 2) over three
`file` nodes c0, c1, c2 (DIR/r0.img...), exported with id "e0".

Two parts, each run on both servers:
  1. QEMU's own client library (qemu.qmp) connects, negotiates and runs a
     few commands; parsed results are compared.
  2. Raw sockets: every step sends bytes, then a sentinel command
     ({"execute": "x-sync", "id": "sync-N"}, unknown on both sides) whose
     reply marks the end of the step's output; the raw lines (with their
     "\\r\\n") are compared byte for byte.

Output: one JSON line per difference, {"diff": STEP, "allowed": [...] or
null, "qemu": [...], "quorum": [...]}, then {"summary": ...}. Exits 1 when a
difference is not covered by the allow-list (ALLOWED below), 2 on a harness
failure (timeout, a server that died).
"""

import asyncio
import json
import re
import socket
import subprocess
import sys
import threading
import time

CFG = json.loads(sys.argv[1])
SIDES = ("qemu", "quorum")

# The allow-list: differences QEMU has and we do not, or that cannot be the
# same. Each entry: (name, why, function normalising one raw line). A step
# whose lines differ is an allowed difference only if the lines become
# equal after applying these; otherwise it is a failure.
VERSION_RE = re.compile(
    r'\{"qemu": \{"micro": \d+, "minor": \d+, "major": \d+\}, '
    r'"package": "(?:[^"\\]|\\.)*"\}'
)
TIMESTAMP_RE = re.compile(r'"timestamp": \{"seconds": \d+, "microseconds": \d+\}')
GENERATED_RE = re.compile(r"#block\d+")
X_MEMBER_RE = re.compile(
    r', "x-[a-z-]+": (?:null|true|false|-?\d+|"(?:[^"\\]|\\.)*")'
)
ALLOWED = [
    # quorum serve is not QEMU: its greeting and query-version name its own
    # package (and QEMU's version it follows); the members are the same.
    ("version", "greeting and query-version: version/package are the server's own",
     lambda l: VERSION_RE.sub("<VERSION>", l)),
    # Events carry the time they were made; two servers never agree on it.
    ("timestamps", "event timestamps are wall-clock times",
     lambda l: TIMESTAMP_RE.sub('"timestamp": <TS>', l)),
    # QEMU names implicit nodes "#block" + a counter + 2 random digits.
    ("generated-node-names", "generated #blockNNN node names (random digits in QEMU)",
     lambda l: GENERATED_RE.sub("#block<N>", l)),
    # query-named-block-nodes: our x-child, x-slot, x-reachable members
    # (R-QMP-2: what QEMU lacks gets an x- name).
    ("x-members", "query-named-block-nodes: our own x-child/x-slot/x-reachable members",
     lambda l: X_MEMBER_RE.sub("", l)),
]

# query-commands: qemu-storage-daemon has ~76 commands, quorum serve the
# ones it implements. Checked apart: ours must be a subset of QEMU's and
# the reply's shape the same.
QUERY_COMMANDS_STEP = "query-commands"


def out(obj):
    print(json.dumps(obj, ensure_ascii=False), flush=True)


class Raw:
    """A raw QMP connection: every byte received kept, split into lines."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.sock.settimeout(None)
        self.lines = []
        self.eof = False
        self.buf = b""
        self.cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            try:
                d = self.sock.recv(1 << 20)
            except OSError:
                d = b""
            with self.cv:
                if not d:
                    if self.buf:
                        self.lines.append(self.buf.decode("utf-8", "replace"))
                    self.eof = True
                    self.cv.notify_all()
                    return
                self.buf += d
                while b"\n" in self.buf:
                    i = self.buf.index(b"\n")
                    line, self.buf = self.buf[: i + 1], self.buf[i + 1:]
                    self.lines.append(line.decode("utf-8", "replace"))
                self.cv.notify_all()

    def mark(self):
        with self.cv:
            return len(self.lines)

    def wait(self, pred, start, timeout):
        """Index of the first line from `start` on with pred(line), or None
        (EOF or timeout)."""
        end = time.time() + timeout
        with self.cv:
            while True:
                for i in range(start, len(self.lines)):
                    if pred(self.lines[i]):
                        return i
                rem = end - time.time()
                if self.eof or rem <= 0:
                    return None
                self.cv.wait(rem)

    def wait_eof(self, timeout):
        end = time.time() + timeout
        with self.cv:
            while not self.eof and time.time() < end:
                self.cv.wait(end - time.time())
            return self.eof

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def j(o):
    return json.dumps(o, separators=(",", ":"), ensure_ascii=False).encode()


def cmd(name, args=None, id=None):
    m = {"execute": name}
    if args is not None:
        m["arguments"] = args
    if id is not None:
        m["id"] = id
    return j(m) + b"\n"


def chg(**a):
    return cmd("x-blockdev-change", a)


def add(o, id=None):
    return cmd("blockdev-add", o, id)


def bdel(n, id=None):
    return cmd("blockdev-del", {"node-name": n}, id)


def rawfile(side_dir, name, img):
    return {"driver": "raw", "node-name": name,
            "file": {"driver": "file", "filename": "%s/%s.img" % (side_dir, img)}}


def corrupt(path, off, length, byte):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(bytes([byte]) * length)
        f.flush()


def qemu_io(url, cmds):
    a = [CFG.get("qemu_io", "qemu-io"), "-f", "raw"]
    for c in cmds:
        a += ["-c", c]
    a.append(url)
    r = subprocess.run(a, capture_output=True, text=True, timeout=30)
    return r.returncode, (r.stdout + r.stderr).strip()


# ---- the conversation ------------------------------------------------------
# A step: (name, action). An action is a list of byte strings to send (a
# 0.1 s pause between them: a command split over writes), or a callable
# (side, conn) that does something else and returns a note.

def steps():
    S = []

    def step(name, *sends):
        S.append((name, list(sends)))

    # R-QMP-1: negotiation.
    step("before-caps: query-version with id", cmd("query-version", id=7))
    step("before-caps: unknown command", cmd("nope", id="u"))
    step("before-caps: quit is not a command yet", cmd("quit"))
    step("before-caps: not an object", b"[1,2]\n")
    step("caps: bad enable value", cmd("qmp_capabilities", {"enable": ["bogus"]}))
    step("caps: unexpected argument", cmd("qmp_capabilities", {"bogus": 1}))
    step("caps", cmd("qmp_capabilities", id=1))
    step("caps again", cmd("qmp_capabilities"))
    # ids of every JSON type, echoed exactly.
    for name, idv in [
        ("int", b"5"), ("negative", b"-3"), ("string", b'"s"'), ("float", b"1.5"),
        ("float 1e3", b"1e3"), ("float 0.1", b"0.1"), ("uint64", b"12345678901234567890"), ("null", b"null"),
        ("true", b"true"), ("list", b'[1,{"a":null},[]]'), ("object", b'{"k":"v","n":{}}'),
        ("non-ascii", '"\u00e9\\n\u2603\U0001F600"'.encode()),
    ]:
        step("id " + name, b'{"execute":"nope","id":' + idv + b"}\n")
    step("id on a successful command", cmd("query-named-block-nodes", id={"a": [1, 2]}))
    step("two commands in one write",
         cmd("nope1", id="a")[:-1] + cmd("nope2", id="b")[:-1] + b"\n")
    step("one command over two writes", b'{"execute":"no', b'pe","id":"split"}\n')
    step("blank lines get nothing", b"\n\n\r\n  \n")
    step("unknown command", cmd("nope", id=2))
    step("unknown non-ascii command", cmd("\u00e9"))
    step("exec-oob without oob", b'{"exec-oob":"query-version"}\n')
    # R-QMP-1: malformed input.
    for name, data in [
        ("no value", b'{"execute":}'),
        ("missing colon", b'{"execute" "query-version"}'),
        ("trailing comma", b'{"execute":"query-version",}'),
        ("stray }", b"}"),
        ("stray ]", b"]"),
        ("stray @", b"@"),
        ("keyword", b"xyz"),
        ("unquoted key", b'{execute:"query-version"}'),
        ("bad escape", b'{"execute":"query-\\q"}'),
        ("duplicate key", b'{"execute":"nope","execute":"nope"}'),
        ("list", b"[1,2]"),
        ("string", b'"x"'),
        ("number", b"1"),
        ("null", b"null"),
        ("true", b"true"),
        ("empty object", b"{}"),
        ("no execute, with id", b'{"id":5}'),
        ("execute not a string", b'{"execute":5}'),
        ("extra member", b'{"execute":"query-version","foo":1}'),
        ("arguments not an object", b'{"execute":"query-version","arguments":[]}'),
        ("invalid utf-8 byte", b"\xff"),
        ("NUL byte", b"\x00"),
    ]:
        step("malformed: " + name, data + b"\n")
    # R-QMP-2: bad arguments (QAPI's checks and texts).
    step("args: missing (no arguments)", cmd("x-blockdev-change"))
    step("args: missing (empty)", cmd("x-blockdev-change", {}))
    step("args: wrong type", cmd("x-blockdev-change", {"parent": 5}))
    step("args: null is a wrong type", cmd("x-blockdev-change", {"parent": None}))
    step("args: type error wins over unexpected",
         cmd("x-blockdev-change", {"parent": 5, "extra": 1}))
    step("args: unexpected", cmd("x-blockdev-change", {"parent": "quorum0", "node": "x", "extra": 1}))
    step("args: two unexpected", cmd("x-blockdev-change", {"parent": "quorum0", "x": 1, "y": 2}))
    step("args: unexpected on a command without arguments", cmd("query-version", {"x": 1}))
    step("args: blockdev-del missing", cmd("blockdev-del", {}))
    step("args: flat wrong type", cmd("query-named-block-nodes", {"flat": "yes"}))
    # R-QMP-2: queries.
    step("query-version", cmd("query-version", id="v"))
    step(QUERY_COMMANDS_STEP, cmd("query-commands"))
    step("query-named-block-nodes", cmd("query-named-block-nodes"))
    step("query-named-block-nodes flat", cmd("query-named-block-nodes", {"flat": True}))
    # R-QMP-3: events from corrupted reads (before membership changes: the
    # same three children on both sides).
    S.append(("event: QUORUM_REPORT_BAD (c2 differs at 0..64k)", "report_bad"))
    S.append(("event: QUORUM_FAILURE (three versions at 128k..192k)", "failure"))
    # R-QMP-2: blockdev-add.
    d = "<DIR>"  # replaced per side by send()
    step("blockdev-add file node", add({"driver": "file", "node-name": "f9",
                                        "filename": d + "/new9.img"}, id="f9"))
    step("blockdev-add raw over file", add(rawfile(d, "new0", "new0"), id="new0"))
    step("blockdev-add raw over file (new1)", add(rawfile(d, "new1", "new1")))
    step("blockdev-add duplicate c0", add(rawfile(d, "c0", "new2")))
    step("blockdev-add duplicate quorum0", add(rawfile(d, "quorum0", "new2")))
    step("blockdev-add duplicate new0", add(rawfile(d, "new0", "new2")))
    step("blockdev-add missing file (raw)", add(rawfile(d, "m0", "missing")))
    step("blockdev-add missing file (file)", add({"driver": "file", "node-name": "m1",
                                                  "filename": d + "/missing.img"}))
    step("blockdev-add bad node-name", add(rawfile(d, "#x", "new2")))
    step("blockdev-add node-name with a bad char", add(rawfile(d, "a!b", "new2")))
    step("blockdev-add node-name of 32 bytes", add(rawfile(d, "n" * 32, "new2")))
    step("blockdev-add without node-name",
         add({"driver": "raw", "file": {"driver": "file", "filename": d + "/new2.img"}}))
    step("blockdev-add unknown driver", add({"driver": "nosuchdrv", "node-name": "m2"}))
    step("blockdev-add without driver", add({"node-name": "m2"}))
    step("blockdev-add filename wrong type",
         add({"driver": "file", "node-name": "m3", "filename": 5}))
    step("blockdev-add file.filename missing",
         add({"driver": "raw", "node-name": "m4", "file": {"driver": "file"}}))
    step("blockdev-add unexpected member",
         add({"driver": "file", "node-name": "m5", "filename": d + "/new2.img", "bogus": 1}))
    step("query-named-block-nodes after blockdev-add", cmd("query-named-block-nodes"))
    # R-QMP-2, R-MEMBER-2/3: x-blockdev-change refusals.
    step("change: conflict", chg(parent="quorum0", child="children.0", node="new0"))
    step("change: neither", chg(parent="quorum0"))
    step("change: unknown parent", chg(parent="ghost", node="new0"))
    step("change: non-quorum parent, add", chg(parent="c0", node="new0"))
    step("change: non-quorum parent, delete", chg(parent="new0", child="file"))
    step("change: non-quorum parent, unknown node", chg(parent="c0", node="ghost"))
    step("change: non-quorum parent, unknown child", chg(parent="c0", child="ghost"))
    step("change: unknown node", chg(parent="quorum0", node="ghost"))
    step("change: node already attached", chg(parent="quorum0", node="c0"))
    step("change: the quorum node itself", chg(parent="quorum0", node="quorum0"))
    step("change: unknown child", chg(parent="quorum0", child="children.9"))
    step("change: a node name is not a child name", chg(parent="quorum0", child="c0"))
    # R-MEMBER-1: start 0,1,2; add -> 3; del 3; add -> 3; del 1; add -> 4.
    step("member: add new0 (children.3)", chg(parent="quorum0", node="new0"))
    step("member: add new0 again", chg(parent="quorum0", node="new0"))
    step("blockdev-del attached raw node", bdel("new0"))
    step("member: del children.3", chg(parent="quorum0", child="children.3"))
    step("member: del children.3 again", chg(parent="quorum0", child="children.3"))
    step("member: add new0 (children.3 again)", chg(parent="quorum0", node="new0"))
    step("member: del children.1", chg(parent="quorum0", child="children.1"))
    step("member: add new1 (children.4, the hole at 1 is not reused)",
         chg(parent="quorum0", node="new1"))
    step("member: children.1 is gone", chg(parent="quorum0", child="children.1"))
    step("query-named-block-nodes after membership changes", cmd("query-named-block-nodes"))
    step("member: del children.4", chg(parent="quorum0", child="children.4"))
    step("member: del children.3", chg(parent="quorum0", child="children.3"))
    step("member: del at the threshold (R-MEMBER-2)", chg(parent="quorum0", child="children.2"))
    step("member: del children.0 at the threshold", chg(parent="quorum0", child="children.0"))
    step("member: add f9 (children.3: next went back)", chg(parent="quorum0", node="f9"))
    step("member: del children.3 (f9)", chg(parent="quorum0", child="children.3"))
    # blockdev-del.
    step("blockdev-del attached file node c0", bdel("c0"))
    step("blockdev-del the quorum node", bdel("quorum0"))
    step("blockdev-del unknown", bdel("ghost"))
    step("blockdev-del detached new0", bdel("new0", id="del-new0"))
    step("blockdev-del new0 again", bdel("new0"))
    step("blockdev-del detached f9", bdel("f9"))
    step("blockdev-del detached command-line node c1", bdel("c1"))
    step("query-named-block-nodes at the end", cmd("query-named-block-nodes"))
    S.append(("quit", "quit"))
    return S


def event_step(kind, side, conn, n):
    """Corrupts a child's image and reads the range through NBD; the lines
    until the event (or 3 s)."""
    sd = CFG["sides"][side]
    if kind == "report_bad":
        corrupt(sd["dir"] + "/r2.img", 0, 64 << 10, 0xAA)
        io = ["read 0 64k"]
        want = "QUORUM_REPORT_BAD"
    else:
        corrupt(sd["dir"] + "/r1.img", 128 << 10, 64 << 10, 0xBB)
        corrupt(sd["dir"] + "/r2.img", 128 << 10, 64 << 10, 0xCC)
        io = ["read 128k 64k"]
        want = "QUORUM_FAILURE"
    m = conn.mark()
    rc, text = qemu_io(sd["nbd"], io)
    conn.wait(lambda l: want in l, m, 3.0)
    # Anything else that comes within a little while belongs here too.
    time.sleep(0.2)
    return "qemu-io rc=%d: %s" % (rc, text.splitlines()[-1] if text else "")


def run_raw(side):
    sd = CFG["sides"][side]
    conn = Raw(sd["qmp"])
    result = []  # (step, lines, note)
    if conn.wait(lambda l: True, 0, 10) is None:
        raise RuntimeError("%s: no greeting" % side)
    result.append(("greeting", [conn.lines[0]], ""))
    for n, (name, action) in enumerate(steps()):
        m = conn.mark()
        note = ""
        if action == "quit":
            conn.send(cmd("quit", id="bye"))
            if not conn.wait_eof(10):
                raise RuntimeError("%s: the monitor stayed open after quit" % side)
            result.append((name, conn.lines[m:], "closed after quit"))
            break
        if isinstance(action, str):
            note = event_step(action, side, conn, n)
        else:
            for i, data in enumerate(action):
                if i:
                    time.sleep(0.1)
                conn.send(data.replace(b"<DIR>", sd["dir"].encode()))
        sync = "sync-%d" % n
        conn.send(cmd("x-sync", id=sync))
        i = conn.wait(lambda l: ('"%s"' % sync) in l, m, 15)
        if i is None:
            raise RuntimeError("%s: step %r: no reply to the sentinel; got %r"
                               % (side, name, conn.lines[m:]))
        result.append((name, conn.lines[m:i], note))
    conn.close()
    return result


def normalise_dir(side, line):
    return line.replace(CFG["sides"][side]["dir"], "<DIR>")


def compare(name, q, o):
    """None if equal; else (allowed reasons or None)."""
    if q == o:
        return None
    used = []
    for rule, why, f in ALLOWED:
        q2, o2 = [f(l) for l in q], [f(l) for l in o]
        if q2 != q or o2 != o:
            used.append(rule)
        q, o = q2, o2
    return used if q == o else False


def short(lines):
    """Lines as they are, or their start and length when long (an allowed
    difference in a 3 KiB reply need not be shown whole)."""
    return [l if len(l) <= 400 else "%s...<%d bytes>" % (l[:200], len(l)) for l in lines]


def first_difference(q, o):
    """Where two line lists first differ, with some context."""
    for i in range(max(len(q), len(o))):
        a = q[i] if i < len(q) else ""
        b = o[i] if i < len(o) else ""
        if a != b:
            k = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
            return {"line": i, "column": k, "qemu": a[max(0, k - 60):k + 60],
                    "quorum": b[max(0, k - 60):k + 60]}
    return None


def query_commands_ok(q, o):
    try:
        qn = {c["name"] for c in json.loads(q[0])["return"]}
        on = [c["name"] for c in json.loads(o[0])["return"]]
    except (ValueError, KeyError, IndexError, TypeError):
        return False, "unparsable"
    missing = [c for c in on if c not in qn]
    shape = len(q) == len(o) == 1 and o[0].startswith('{"return": [{"name": "')
    return (not missing and shape), "ours not in QEMU's: %s" % missing


# ---- part 1: qemu.qmp ------------------------------------------------------

def strip_x(v):
    if isinstance(v, dict):
        return {k: strip_x(x) for k, x in v.items() if not k.startswith("x-")}
    if isinstance(v, list):
        return [strip_x(x) for x in v]
    if isinstance(v, str):
        return GENERATED_RE.sub("#block<N>", v)
    return v


async def library(side):
    from qemu.qmp import ExecuteError, QMPClient

    sd = CFG["sides"][side]
    qmp = QMPClient("differential-" + side)
    await asyncio.wait_for(qmp.connect(sd["qmp"]), 10)
    r = {}
    g = qmp.greeting
    r["greeting capabilities"] = list(g.QMP.capabilities)
    r["greeting version keys"] = sorted(g.QMP.version.keys())
    v = await qmp.execute("query-version")
    r["query-version keys"] = sorted(v.keys())
    nodes = await qmp.execute("query-named-block-nodes")
    r["query-named-block-nodes"] = [
        strip_x(json.loads(json.dumps(n).replace(sd["dir"], "<DIR>"))) for n in nodes
    ]
    errs = []
    for c, a in [("x-blockdev-change", {"parent": "quorum0", "child": "children.7"}),
                 ("blockdev-del", {"node-name": "quorum0"}),
                 ("x-blockdev-change", {"parent": 1}),
                 ("no-such-command", None)]:
        try:
            await qmp.execute(c, a)
            errs.append(["no error", c])
        except ExecuteError as e:
            errs.append([e.error_class, str(e)])
    r["errors"] = errs
    await qmp.disconnect()
    return r


def main():
    diffs = []
    unallowed = 0
    # Part 1: QEMU's client library, unchanged, against both.
    lib = {s: asyncio.run(library(s)) for s in SIDES}
    for k in lib["qemu"]:
        if lib["qemu"][k] != lib["quorum"].get(k):
            unallowed += 1
            out({"diff": "qemu.qmp: " + k, "allowed": None,
                 "qemu": lib["qemu"][k], "quorum": lib["quorum"].get(k)})
    # Part 2: raw sockets, byte for byte.
    raw = {}
    for s in SIDES:
        try:
            raw[s] = run_raw(s)
        except Exception as e:  # a harness failure: say so and stop
            out({"harness-error": "%s: %s" % (s, e)})
            sys.exit(2)
    qsteps, osteps = raw["qemu"], raw["quorum"]
    if [x[0] for x in qsteps] != [x[0] for x in osteps]:
        out({"harness-error": "the two runs did not take the same steps"})
        sys.exit(2)
    allowed_used = {}
    for (name, ql, qnote), (_, ol, onote) in zip(qsteps, osteps):
        ql = [normalise_dir("qemu", l) for l in ql]
        ol = [normalise_dir("quorum", l) for l in ol]
        if name == QUERY_COMMANDS_STEP:
            good, why = query_commands_ok(ql, ol)
            if not good:
                unallowed += 1
                out({"diff": name, "allowed": None, "why": why, "qemu": ql, "quorum": ol})
            else:
                allowed_used.setdefault("query-commands", []).append(name)
            continue
        c = compare(name, ql, ol)
        if c is None:
            continue
        if c is False:
            unallowed += 1
            out({"diff": name, "allowed": None, "qemu": ql, "quorum": ol,
                 "first_difference": first_difference(ql, ol),
                 "notes": {"qemu": qnote, "quorum": onote}})
        else:
            for rule in c:
                allowed_used.setdefault(rule, []).append(name)
            out({"diff": name, "allowed": c, "qemu": short(ql), "quorum": short(ol)})
    # Events must have happened on both sides (not just equally absent).
    for name, ql, _ in qsteps:
        if name.startswith("event:") and not any('"event"' in l for l in ql):
            out({"harness-error": "qemu-storage-daemon sent no event in step %r" % name})
            sys.exit(2)
    out({"summary": {"steps": len(qsteps), "unallowed": unallowed,
                     "allowed": {k: len(v) for k, v in allowed_used.items()},
                     "allow_list": [[n, why] for n, why, _ in ALLOWED]
                     + [["query-commands", "the command list is the server's own; "
                                           "ours must be a subset of QEMU's"]]}})
    sys.exit(1 if unallowed else 0)


if __name__ == "__main__":
    main()
