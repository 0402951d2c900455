#!/usr/bin/env python3
"""A management session through QEMU's own client library (qemu.qmp),
driven by quorum-cli/tests/qmp_cli.rs (r_qmp_1_2_real_client_...) while an
NBD client keeps reading and writing (SPEC R-QMP-1, R-QMP-2, R-MEMBER-1/2).

argv[1] is a JSON object:
  {"phase": "changes" | "quit",
   "qmp": QMP socket path,
   "children": [c0, c1, c2 image paths] (node names c0..c2),
   "new0": image path for a file child,
   "nbd_child": unix socket of a qemu-nbd serving a zeroed image (export ""),
   "size": device size, "threshold": 2,
   "passes": file where the NBD load writes how many full passes it made,
   "export_id": the export id BLOCK_EXPORT_DELETED must carry}

Phase "changes": queries and membership changes; after each attach, waits
until the NBD load has rewritten its whole region twice (so the new child
holds current data before the next change: with threshold 2 the good
children always outvote the stale ones).
Phase "quit": quit; BLOCK_EXPORT_DELETED must be in before the reply.

Prints one JSON line per step ({"step": ..., ...}); on a failed check
prints {"fail": ...} and exits 1.
"""

import asyncio
import json
import sys
import time

from qemu.qmp import ExecuteError, QMPClient

CFG = json.loads(sys.argv[1])


def out(**kw):
    print(json.dumps(kw, sort_keys=True), flush=True)


class Fail(Exception):
    pass


def check(cond, what, **ctx):
    if not cond:
        raise Fail(json.dumps({"check": what, **ctx}, default=str))


def passes():
    try:
        with open(CFG["passes"]) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


async def wait_passes(n=2, timeout=30.0):
    """Waits until the NBD load has made `n` more full passes."""
    start = passes()
    end = time.time() + timeout
    while passes() < start + n:
        check(time.time() < end, "the NBD load makes progress", passes=passes(), start=start)
        await asyncio.sleep(0.02)


async def nodes(qmp):
    r = await qmp.execute("query-named-block-nodes")
    return {n["node-name"]: n for n in r}, [n["node-name"] for n in r]


async def refused(qmp, cmd, args, desc):
    try:
        await qmp.execute(cmd, args)
    except ExecuteError as e:
        check(e.error_class == "GenericError" and str(e) == desc,
              "%s %s refused with QEMU's text" % (cmd, args), want=desc, got=str(e))
        out(step="%s refused" % cmd, args=args, desc=str(e))
        return
    raise Fail("%s %s should have been refused with %r" % (cmd, args, desc))


async def change(qmp, **a):
    r = await qmp.execute("x-blockdev-change", a)
    check(r == {}, "x-blockdev-change returns {}", got=r)
    out(step="x-blockdev-change", args=a)


def attached(by_name, name, child, slot):
    n = by_name.get(name)
    check(n is not None, "node %s listed" % name, nodes=sorted(by_name))
    check(n.get("x-child") == child and n.get("x-slot") == slot,
          "node %s is %s in slot %s" % (name, child, slot),
          got=[n.get("x-child"), n.get("x-slot")])


async def changes(qmp):
    size, threshold = CFG["size"], CFG["threshold"]
    by, order = await nodes(qmp)
    # The device node, then the children newest first (QEMU's order).
    check(order == ["quorum0", "c2", "c1", "c0"], "initial nodes", got=order)
    q = by["quorum0"]
    check(q["drv"] == "quorum" and q["image"]["virtual-size"] == size
          and q["file"].startswith('json:{"children": [{"driver": "file", "filename": ')
          and q["file"].endswith('], "driver": "quorum", "vote-threshold": %d}' % threshold),
          "quorum0 as QEMU shows a quorum node", got=q)
    for i, path in enumerate(CFG["children"]):
        n = by["c%d" % i]
        check(n["drv"] == "file" and n["file"] == path and n["image"]["filename"] == path
              and n["image"]["virtual-size"] == size and n["ro"] is False,
              "c%d is a file node" % i, got=n)
        check(n["x-child"] == "children.%d" % i and n["x-slot"] == i and n["x-reachable"] is True,
              "c%d x- members" % i, got=n)
    out(step="query-named-block-nodes", nodes=order)

    # A file child: blockdev-add (raw over file, QEMU's shape), then attach.
    r = await qmp.execute("blockdev-add", {
        "driver": "raw", "node-name": "new0",
        "file": {"driver": "file", "filename": CFG["new0"]}})
    check(r == {}, "blockdev-add new0", got=r)
    by, order = await nodes(qmp)
    check(order[0] == "new0" and order[1].startswith("#block"),
          "new0 and its generated file node listed first", got=order)
    check(by["new0"]["drv"] == "raw" and by["new0"]["x-child"] is None
          and by[order[1]]["drv"] == "file", "new0 not attached yet", got=by["new0"])
    await change(qmp, parent="quorum0", node="new0")
    by, _ = await nodes(qmp)
    attached(by, "new0", "children.3", 3)          # R-MEMBER-1: add -> 3
    await wait_passes()
    await refused(qmp, "blockdev-del", {"node-name": "new0"}, "Block device new0 is in use")
    await change(qmp, parent="quorum0", child="children.3")       # del 3
    by, _ = await nodes(qmp)
    attached(by, "new0", None, None)
    await change(qmp, parent="quorum0", node="new0")              # add -> 3
    by, _ = await nodes(qmp)
    attached(by, "new0", "children.3", 3)
    await wait_passes()

    # An NBD child served by qemu-nbd (export "").
    r = await qmp.execute("blockdev-add", {
        "driver": "nbd", "node-name": "n0",
        "server": {"type": "unix", "path": CFG["nbd_child"]}, "export": ""})
    check(r == {}, "blockdev-add n0", got=r)
    await change(qmp, parent="quorum0", node="n0")
    by, _ = await nodes(qmp)
    attached(by, "n0", "children.4", 4)
    n0 = by["n0"]
    check(n0["drv"] == "nbd" and n0["file"] == "nbd+unix:///?socket=" + CFG["nbd_child"]
          and n0["x-reachable"] is True and n0["image"]["virtual-size"] == size,
          "n0 is an NBD node", got=n0)
    await wait_passes()

    # Remove one (the NBD child), then R-MEMBER-1's "del 1; add -> 4".
    await change(qmp, parent="quorum0", child="children.4")
    await change(qmp, parent="quorum0", child="children.1")
    by, order = await nodes(qmp)
    attached(by, "c1", None, None)
    attached(by, "c0", "children.0", 0)
    attached(by, "c2", "children.2", 1)
    attached(by, "new0", "children.3", 2)
    await refused(qmp, "x-blockdev-change", {"parent": "quorum0", "child": "children.1"},
                  "Node 'quorum0' does not have child 'children.1'")
    await change(qmp, parent="quorum0", node="n0")                # add -> 4
    by, _ = await nodes(qmp)
    attached(by, "n0", "children.4", 3)
    await wait_passes()

    # Down to the threshold, then R-MEMBER-2's refusal.
    await change(qmp, parent="quorum0", child="children.4")
    await change(qmp, parent="quorum0", child="children.3")
    await refused(qmp, "x-blockdev-change", {"parent": "quorum0", "child": "children.0"},
                  "The number of children cannot be lower than the vote threshold %d" % threshold)
    by, order = await nodes(qmp)
    attached(by, "c0", "children.0", 0)
    attached(by, "c2", "children.2", 1)
    # Detached nodes can be deleted; attached ones and the device cannot.
    await refused(qmp, "blockdev-del", {"node-name": "c0"}, "Block device c0 is in use")
    await refused(qmp, "blockdev-del", {"node-name": "quorum0"}, "Node quorum0 is in use")
    for name in ("n0", "new0", "c1"):
        r = await qmp.execute("blockdev-del", {"node-name": name})
        check(r == {}, "blockdev-del %s" % name, got=r)
        out(step="blockdev-del", node=name)
    await refused(qmp, "blockdev-del", {"node-name": "n0"},
                  "Failed to find node with node-name='n0'")
    by, order = await nodes(qmp)
    check(order == ["quorum0", "c2", "c0"], "nodes at the end", got=order)
    out(step="query-named-block-nodes", nodes=order)


async def quit(qmp):
    qmp.events.clear()
    r = await qmp.execute("quit")
    check(r == {}, "quit returns {}", got=r)
    # qemu.qmp reads messages in order: an event sent before the reply is
    # in the listener by the time execute() returns.
    seen = qmp.events.clear()
    names = [e["event"] for e in seen]
    check("BLOCK_EXPORT_DELETED" in names, "BLOCK_EXPORT_DELETED before quit's reply", got=names)
    e = [e for e in seen if e["event"] == "BLOCK_EXPORT_DELETED"][0]
    check(e["data"] == {"id": CFG["export_id"]}, "BLOCK_EXPORT_DELETED data", got=e["data"])
    out(step="quit", events_before_reply=names)


async def main():
    qmp = QMPClient("session")
    await asyncio.wait_for(qmp.connect(CFG["qmp"]), 10)
    caps = list(qmp.greeting.QMP.capabilities)
    out(step="connected", capabilities=caps)
    try:
        if CFG["phase"] == "changes":
            await changes(qmp)
        else:
            await quit(qmp)
    finally:
        try:
            await asyncio.wait_for(qmp.disconnect(), 10)
        except Exception as e:  # EOF after quit is expected
            if CFG["phase"] != "quit":
                raise
            out(step="disconnect", note=repr(e))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Fail as e:
        print(json.dumps({"fail": str(e)}), flush=True)
        sys.exit(1)
