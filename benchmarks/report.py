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


# Where the time goes: sampled with py-spy (`py-spy record -f raw -r 200`) on the manager and
# the controller while the loadgen ran, 2026-12-02; kept here as text, not measured per run.
COSTS = """
## Where a turn's time goes

What issue #17 changed, each measured before and after on the same machine:

- **Group commit** (`manager/message_log.py`): every message waiting while one write runs
  goes into the next transaction, on one thread with one connection: one thread hop per
  batch instead of about a dozen per turn through the async engine. The idempotency check
  of a chat is in the same write. A message is still committed before it is announced,
  and a chat acknowledged only after its commit. Direct turns: 135 → 650 per second at
  10 frontends; p50 6.3 → 2.4 ms.
- **Events ordered per agent, not per socket** (`manager/ordering.py`): the controller
  multiplexes every agent over one socket, and a manager handling that socket's events one
  at a time let one agent's store wait hold all the others. Controller turns at 100
  frontends: 250 → 790-900 per second.
- **No permessage-deflate** unless the server's `websocket_compression_options` ask for
  it, as for Jupyter's own websockets: a deflate context per socket was most of the
  controller's memory per frontend (132 → 30 KB) and CPU on every small frame.
- **No task per event sent** (`InlineManager`), **no binary walk of every payload**
  (`JSONPacket`), **no two tasks and a wait per acknowledged request** in the controller's
  manager link, one urandom call per 256 message ids, no workspace scan around the turns
  of providers that cannot change files (echo, OpenAI-compatible), the per-turn and
  per-chat log lines at debug level.

What is left, from the profiles (share of the busy event loop, echo turns):

| where | manager | controller |
|---|---|---|
| writing frames to sockets (`write_to_fd`, one syscall per frame) | ~22% | ~12-25% |
| engine.io/Socket.IO framing, parsing, JSON | ~25% | ~35% |
| tasks the libraries create per received message | ~5% | ~8% |
| agenstra's own code (channels, links, store calls, checks) | ~20% | ~15% |

A turn costs the manager four frames (the chat in; the acknowledgement, the user's message
and the answer out) where the bare echo costs two, and python-socketio pays roughly the
same per frame whatever it carries. So `direct / bare` cannot fall much below 2-3, and the
manager's turns per second stay well under half the bare floor's echoes per second. The
Node relay does the controller's work with a cheaper runtime per frame. Streaming is
bounded the same way: each delta is a frame in on the controller and one out.
Deltas are not coalesced when a frontend reads slowly: that is not done.
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
    text = f"""# Benchmarks

`python benchmarks/run.py` (a few minutes; `--quick` for about one) starts everything it
needs on 127.0.0.1, prints the target table below and writes `benchmarks/results.json`;
`python benchmarks/report.py` turns that file into this page. It installs
`benchmarks/node` (socket.io and socket.io-client, pinned) on its first run.

Machine: {m['cpus']} CPUs, Python {m['python']}, Node {m.get('node', '?')}, {m['platform']}.
The figures below are from one run on a 2-core machine that other people were using at
the same time: they are noisy; the ratios (same run, same manager) are what to read.

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
{COSTS}"""
    (HERE.parent / "BENCHMARKS.md").write_text(text)


if __name__ == "__main__":
    main()
