#!/usr/bin/env python3
"""Records the events a monitor receives through QEMU's client library
(qemu.qmp), for quorum-cli/tests/qmp_cli.rs (r_qmp_3_events_...).

argv: QMP socket path, seconds to listen after negotiation.
Prints {"ready": true} once negotiated, then one line per event:
  {"event": NAME, "data": {...}, "ts": timestamp as float seconds,
   "arrival": time.time() when the library handed it over}
and {"done": N} at the end.
"""

import asyncio
import json
import sys
import time

from qemu.qmp import QMPClient


async def main(path, seconds):
    qmp = QMPClient("events")
    await asyncio.wait_for(qmp.connect(path), 10)
    print(json.dumps({"ready": True}), flush=True)
    end = time.time() + seconds
    n = 0
    while True:
        left = end - time.time()
        if left <= 0:
            break
        try:
            e = await asyncio.wait_for(qmp.events.get(), left)
        except asyncio.TimeoutError:
            break
        arrival = time.time()
        ts = e["timestamp"]
        print(json.dumps({
            "event": e["event"], "data": e.get("data"),
            "ts": ts["seconds"] + ts["microseconds"] / 1e6,
            "arrival": arrival,
        }), flush=True)
        n += 1
    await qmp.disconnect()
    print(json.dumps({"done": n}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
