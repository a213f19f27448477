"""Write BENCHMARKS.md from benchmarks/results.json (`python benchmarks/report.py`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from run import table  # noqa: E402 (the same target table run.py prints)

LABELS = {"bare": "bare python-socketio echo server (the floor)", "direct": "client → manager",
          "controller": "client → controller → manager", "relay": "client → Node relay → manager"}


# Where the time goes: sampled with py-spy (`py-spy record -f raw -r 200 -g`) on the manager
# and the controller while the loadgen ran, 2026-12-02; kept here as text, not measured per run.
COSTS = """
## Where a turn's time goes

What issue #17 changed, each measured before and after on the same machine:

- **Group commit** (`manager/message_log.py`): every message waiting while one write runs
  goes into the next transaction, on one thread with one connection it holds: one thread
  hop per batch instead of about a dozen per turn through the async engine. The
  idempotency check of a chat is in the same write. A message is still committed before
  it is announced, and a chat acknowledged only after its commit. Direct turns: 135 → 650
  per second at 10 frontends; p50 6.3 → 2.4 ms.
- **Statements built once, each agent's last `seq` cached** (same module): SQLAlchemy
  compiled every statement built per call anew, about 100 µs each, in the writer thread
  but holding the GIL the event loop needs, a third of it. The cached `seq` is read again
  after a failed write and forgotten when its agent is deleted. With the held connection
  (no pool checkout and reset rollback per batch), direct turns at 10 frontends: 550 →
  1150 per second; an append on an idle log 290 → 210 µs.
- **Events ordered per agent, not per socket** (`manager/ordering.py`): the controller
  multiplexes every agent over one socket, and a manager handling that socket's events one
  at a time let one agent's store wait hold all the others. Controller turns at 100
  frontends: 250 → 790-900 per second.
- **Frames of one pass of the loop in one write** (`CorkedWebSocket` in
  `socketio_tuned.py`): engine.io has tornado write every frame with a syscall of its own,
  the costliest step of a small event. Frames are gathered until the loop's next pass and
  written together, in order, before any close. `InlineManager` hands an event straight
  to the recipient's websocket when nothing waits in its engine.io queue (so order holds),
  encoded once for all recipients, skipping the queue, the writer task's wake-up and its
  `wait_for`. Long-polling sockets and servers configured for permessage-deflate go the
  stock way.
- **The controller's link reads without a task per message** (`InlineClient`): the
  controller's handling of a manager's event only queues it for its frontends, so it runs
  in the read loop. With the direct writes, streamed events through one controller with
  100 frontends: 4300 → 5200 per second.
- **No permessage-deflate** unless the server's `websocket_compression_options` ask for
  it, as for Jupyter's own websockets: a deflate context per socket was most of the
  controller's memory per frontend (132 → 30 KB) and CPU on every small frame.
- **engine.io's websocket loop without a task and a timeout per frame**
  (`TunedServer`, `CorkedWebSocket._serve`): the stock loop reads each frame in a task of
  its own under a `wait_for`, and tornado runs the handler's coroutine `on_message` in a
  task too; here `on_message` only queues the frame and one loop reads the queue
  (engine.io's service task still closes a client that stops answering pings). Packets
  to one socket, as acknowledgements are, go straight to its websocket when its queue is
  idle, as events already did. With the history's inserts on the DBAPI cursor (below),
  direct turns at 10 frontends measured side by side with the bare floor: 0.21 → 0.28 of
  its turns per second; in two full runs after it, 0.22 and 0.28 at 10 frontends and 0.42
  and 0.48 at 100 (0.31 before).
- **The controller's link loops without a task and a timer per packet**
  (`InlineEngineIOClient`): engine.io's client reads each frame under `wait_for` (a task
  and a timer) and takes each packet to send off its queue under another; here the read
  waits without a timeout (a watchdog looks once per ping period whether the manager
  still talks, and closes a silent link) and the write loop awaits the queue itself. With
  the per-chat debug line built only when a handler would show it (traitlets leaves the
  Jupyter server's logger at DEBUG and filters in the handler: a twentieth of the
  controller's time), the controller's CPU per turn at 10 frontends: ~510 → ~380 µs (the
  Node relay's: ~210 µs); controller / relay turns per second 0.82-0.98 → 1.09-1.14 at 10
  frontends and 0.87-0.90 → 1.02-1.07 at 100 (two full runs each).
- **Deltas merged for slow readers** (`Coalescing` in `socketio_tuned.py`, the rule in
  `protocol.delta_stream`): while tornado still holds a websocket's last write (its peer
  reads slower than events come), what is sent to it waits in order, and a turn's text
  delta merges into the delta of the same turn waiting last (texts joined, the later
  `sequence`): nothing dropped, order kept, and a frontend that reads nothing during a
  30,000-word answer is left ~700 events to read instead of 30,000. Readers that keep up
  get every event as before.
- **Smaller costs:** the history's insert and idempotency check run on sqlite3's cursor
  with statements compiled once (SQLAlchemy's execute was ~30 µs of Python each, in the
  writer thread: 212 → 152 µs of writing per turn), no task per event sent, no binary
  walk of every payload (`JSONPacket`), one future per acknowledged request in the
  controller's link, one urandom call per 256 message ids, timestamps formatted by hand
  (each second once), metric children looked up once, no workspace scan around the turns
  of providers that cannot change files, the per-turn log lines at debug level and a
  manager logger that drops them itself (traitlets leaves its logger at DEBUG and filters
  in the handler, so every debug line built a record).

What is left, from the profiles (samples holding the GIL, py-spy `-g`, echo turns, 10
frontends, after all of the above; "tuned" is `socketio_tuned.py`'s frame handling):

| where | manager | controller |
|---|---|---|
| asyncio: tasks, futures, the loop itself, the executor | ~31% | ~15% |
| tornado: reading frames, registering for reads, writing | ~16% | ~16% |
| python-socketio and engine.io: packets, queues | ~8% | ~16% |
| JSON encoding and decoding | ~8% | ~14% |
| agenstra's frame handling (`socketio_tuned.py`) | ~12% | ~17% |
| agenstra's own code (channels, links, store calls, checks) | ~21% | ~13% |
| aiohttp (the link's websocket), SQLite, other | ~5% | ~9% |

**The manager's turns per second (goal: half the bare floor's).** The samples above hold
the GIL; a turn also costs the manager thread hand-overs that no profile of Python shows.
Measured by hand on this machine (2026-12-02, 10 frontends, each variant side by side with
the bare floor in one run), a manager turn reaches of the floor's turns per second:

| manager variant | of the bare floor |
|---|---|
| everything but the history's writes (messages announced, not stored) | ~0.78 |
| the history writer's thread hand-over kept, SQLite taken out | ~0.41 |
| the manager as it is (SQLite in the writer thread) | ~0.25-0.29 |
| the same, its threads pinned to one CPU (`taskset`) | ~0.33 |
| SQLite run on the event loop, no thread (not an option: it blocks the loop) | ~0.32 |

So what keeps the manager under half the floor is the durable write: about half of its
cost is the hand-over to the writer thread and back, half SQLite's writing (with the GIL
passing between the threads around each SQLite call). On this virtual machine waking a
thread on the other CPU costs ~{free_us:.0f} µs a round trip ({pinned_us:.0f} µs with both
threads on one CPU; `thread_hop` in results.json, measured each run). Group commit already
puts about two turns in each batch at 10 frontends; a batch written as one statement
(`json_each`) instead of `executemany` measured the same. Writing on the loop would save
the hop but block the loop on disk, and would still not reach half the floor; pinning the
manager to one CPU is an operator's choice, not a default.

**The controller's hop (goal: at most 1.2 times a direct turn).** The Node relay's hop
costs about as much as the controller's (p50 1.4-1.5 times a direct turn in the runs
above): a turn through either wakes one more process for the chat and for each of the
manager's two writes (the acknowledgement with the user's message, then the answer),
which is most of the ~0.6-0.8 ms a hop adds here, whatever the relay is written in. The
goal asks for ~0.25 ms.
"""


def main() -> None:
    r = json.loads((HERE / "results.json").read_text())
    m = r["machine"]
    latency = "\n".join(f"| {LABELS[k]} | {d['p50_ms']:.2f} | {d['p95_ms']:.2f} | "
                        f"{d['p99_ms']:.2f} |" for k, d in r["latency"].items())
    throughput = "\n".join(f"| {t['path']} | {t['frontends']} | {'yes' if t['stream'] else 'no'} "
                           f"| {t['turns_per_s']:.0f} | {t['events_per_s']:.0f} |"
                           for t in r["throughput"])
    fan = r["fan_in"]
    hop = r.get("thread_hop") or {"free_us": float("nan"), "pinned_us": float("nan")}
    costs = COSTS.replace("{free_us:.0f}", f"{hop['free_us']:.0f}").replace(
        "{pinned_us:.0f}", f"{hop['pinned_us']:.0f}")
    text = f"""# Benchmarks

`python benchmarks/run.py` (a few minutes; `--quick` for about one) starts everything it
needs on 127.0.0.1, prints the target table below and writes `benchmarks/results.json`;
`python benchmarks/report.py` turns that file into this page. It installs
`benchmarks/node` (socket.io and socket.io-client, pinned) on its first run.

Machine: {m['cpus']} CPUs, Python {m['python']}, Node {m.get('node', '?')}, {m['platform']}.
The figures below are from one run on a shared 2-core virtual machine: they are noisy
(latency p50s and turns per second of one run to the next differ by 10-20%, so a ratio
near its goal may land on either side); the ratios (same run, same manager) are what to
read.

## Method

One standalone manager serves every path; the controller (a Jupyter server with the
extension) has it registered as a client, and the Node relay (`benchmarks/node/relay.js`,
Agenstra-shaped: a socket.io server speaking the controller's `/clients` contract and one
socket.io-client to the manager's `/agents` per frontend socket and agent) sits in front of
it too. The load generator is the official socket.io-client (`benchmarks/node/loadgen.js`)
for every path, so the client never biases a comparison. Echo agents; every run uses
fresh agents (a login replays an agent's history). Every frontend checks that each answer
arrived exactly once and in order (answers by correlation id, messages by `seq`, stream
events by `sequence`); a non-zero count fails the run.

- latency: one frontend, {r['latency']['bare']['n']} turns after 20 warm-up turns, p50/p95/p99;
- throughput: F frontends (one agent each) chat in a closed loop, unstreamed, or streamed
  (4-word answers: 2 messages and 4 deltas per turn);
- fan-in: {fan['frontends']} frontends through the controller, each logged into its own
  agent and held; the controller's established TCP connections to the manager's port
  (`/proc/<pid>/fd` matched against `/proc/<pid>/net/tcp`), its RSS growth per frontend and
  the manager's RSS growth per logged-in agent.

## Targets (issue #17)

{table(r)}

## Chat round trip (echo agent, no streaming)

| path | p50 ms | p95 ms | p99 ms |
|---|---|---|---|
{latency}

## Throughput

| path | frontends | streamed | turns / s | events / s |
|---|---|---|---|---|
{throughput}

## Fan-in

{fan['frontends']} frontends logged in in {fan['connect_s']:.1f} s: the controller held
**{fan['controller_connections']}** Socket.IO connection(s) to the manager for them (besides
{fan.get('controller_rest_connections', 0)} REST keep-alive connections left from creating
the agents), grew by
**{fan['controller_kb_per_frontend']:.0f} KB** per frontend; the manager by
**{fan['manager_kb_per_agent']:.1f} KB** per logged-in agent.
{costs}"""
    (HERE.parent / "BENCHMARKS.md").write_text(text)


if __name__ == "__main__":
    main()
