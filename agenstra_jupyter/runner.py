"""`agenstra-jupyter`: run notebooks headlessly, record and replay their agent sessions.

    agenstra-jupyter run NOTEBOOK [-o OUT] [-p NAME VALUE]... [--timeout S]
                     [--url URL --token TOKEN | --keep-data] [--record SESSION |
                     --replay SESSION [--replay-mode strict|lenient]]
                     [--permissions allow|deny]
    agenstra-jupyter export AGENT -o NOTEBOOK --session SESSION [--url URL --token TOKEN]

Without --url, `run` is isolated, as nbclient's fresh kernel is: it starts a Jupyter server
of its own whose controller data, local manager and agents live in a temporary directory,
removed after the run (--keep-data keeps it). The user's running JupyterLab, its agents and
its manager are never touched. --url attaches to a running server and uses its agents.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import httpx

from . import sessions
from .protocol import AgenstraError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agenstra-jupyter", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="execute a notebook headlessly with nbclient",
        description="Execute a notebook headlessly with nbclient. Without --url the run is "
        "isolated: a Jupyter server of its own, its data in a temporary directory removed "
        "afterwards; the user's running JupyterLab and its agents are not touched.")
    run.add_argument("notebook", type=Path)
    run.add_argument("-o", "--output", type=Path, help="write the executed notebook here")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                     metavar=("NAME", "VALUE"), help="set a variable of the 'parameters' cell")
    run.add_argument("--timeout", type=float, default=600, help="seconds per cell (600)")
    run.add_argument("--url", help="attach to this running Jupyter server and use its agents "
                     "(default: an isolated server of the run's own)")
    run.add_argument("--token", default=os.environ.get("AGENSTRA_TOKEN"),
                     help="its token (or AGENSTRA_TOKEN)")
    run.add_argument("--keep-data", action="store_true",
                     help="keep the run's own server data (agents, history, log) afterwards")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--record", type=Path, help="record every agent turn to this session")
    mode.add_argument("--replay", type=Path, help="answer every agent turn from this session")
    run.add_argument("--replay-mode", choices=["strict", "lenient"], default="strict",
                     help="lenient: turns not in the recording are answered live (echo/shell)")
    run.add_argument("--permissions", choices=sessions.HEADLESS_POLICIES, default="deny",
                     help="how the run answers its agents' requests to act (nobody is there "
                     "to ask): allow or deny (default: deny). A replay answers each request "
                     "with the recorded decision when it has one of the same kind and title")
    export = commands.add_parser("export", help="an agent's conversation as notebook + session")
    export.add_argument("agent")
    export.add_argument("-o", "--output", type=Path, required=True)
    export.add_argument("--session", type=Path, required=True)
    export.add_argument("--url")
    export.add_argument("--token", default=os.environ.get("AGENSTRA_TOKEN"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        if args.command == "run":
            result = sessions.run_notebook(
                args.notebook, args.output,
                {name: sessions.parse_value(value) for name, value in args.parameter},
                url=args.url, token=args.token, record=args.record, replay=args.replay,
                replay_mode=args.replay_mode, cell_timeout=args.timeout, progress=progress,
                keep_data=args.keep_data, permissions=args.permissions,
            )
            progress(f"ok: {args.notebook}" + (f" -> {result.output}" if result.output else ""))
        else:
            from .client import connect

            client = connect(args.url, args.token) if args.url else connect()
            sessions.export_conversation(client, args.agent, args.output, args.session)
            progress(f"ok: {args.output} and {args.session}")
    except sessions.CellFailed as failed:
        print(f"agenstra-jupyter: {failed}", file=sys.stderr)
        return 1
    except (AgenstraError, httpx.HTTPError, OSError, ValueError, RuntimeError) as exc:
        # A known failure (no such agent, no server, bad file): its message, not a traceback.
        print(f"agenstra-jupyter: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
