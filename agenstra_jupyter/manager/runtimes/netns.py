"""The network of a sandboxed command: egress only, plus the loopback ports it was given.

The sandbox always has a network namespace of its own (nothing of the host's loopback).
With network on, slirp4netns gives it a `tap0` with user-mode NAT to the outside and
`--disable-host-loopback`, so neither 127.0.0.1 nor the gateway 10.0.2.2 leads back to the
host; "prohibit" routes inside the namespace (which the agent, without capabilities, cannot
change) refuse private and link-local ranges and this host's own addresses. Ports listed
in the agent's config (`loopbackPorts`: a local model server, a test's fake API) are
relayed one by one: a short-lived helper enters the sandbox's namespaces,
listens on 127.0.0.1:PORT there and hands the socket back over SCM_RIGHTS; the manager
accepts on it and connects to the host's 127.0.0.1:PORT. A relay may lead to a UNIX socket
instead (the notebook tools' endpoint, notebook_tools.py): the port inside is then the
manager's choice, and nothing on the host's loopback is reached through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..notebook_tools import MCP_SANDBOX_PORT
from .base import RuntimeFailure

SLIRP_TIMEOUT = 10.0
RELAY_CHUNK = 64 * 1024
# Never reached through slirp: private, shared, link-local (cloud metadata) and "this
# network" ranges; slirp's own 10.0.2.0/24 (its DNS) stays, being the more specific route.
BLOCKED_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                  "169.254.0.0/16", "0.0.0.0/8", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4")
# Run by the helper inside the sandbox's namespaces. argv: fd of the channel, then JSON
# {"routes": [cidr, ...], "ports": [port, ...]}; sends back one listening socket per port.
_HELPER = (
    "import json,socket,subprocess,sys\n"
    "channel=socket.socket(fileno=int(sys.argv[1])); job=json.loads(sys.argv[2])\n"
    "for cidr in job['routes']:\n"
    "    subprocess.run(['ip','route','replace','prohibit',cidr],check=True)\n"
    "listeners=[]\n"  # the socket objects: one dropped would close its descriptor
    "for port in job['ports']:\n"
    "    s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "    s.bind(('127.0.0.1',port)); s.listen(64); listeners.append(s)\n"
    "socket.send_fds(channel,[b'1'],[s.fileno() for s in listeners])\n"
)

log = logging.getLogger(__name__)


def validate_network(config: dict[str, Any]) -> None:
    """config.network ('none' or 'egress') and config.loopbackPorts (host ports it may use)."""
    network = config.get("network", "none")
    if network == "host":
        raise ValueError("config.network 'host' is not offered: agents get 'egress' (the "
                         "outside world, never this host); list local ports in "
                         "config.loopbackPorts")
    if network not in ("none", "egress"):
        raise ValueError("config.network must be 'none' or 'egress'")
    ports = config.get("loopbackPorts", [])
    if not isinstance(ports, list) or len(ports) > 16 or not all(
        isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports
    ):
        raise ValueError("config.loopbackPorts must be a list of at most 16 port numbers")
    if MCP_SANDBOX_PORT in ports:
        raise ValueError(f"config.loopbackPorts may not name {MCP_SANDBOX_PORT}: inside the "
                         "sandbox it leads to the notebook tools")


def can_relay() -> bool:
    """Whether ports can be relayed into a sandbox (nsenter enters its namespaces)."""
    return shutil.which("nsenter") is not None


def missing_tool(network: bool, ports: list[int]) -> str | None:
    """What must be installed for this network, or None."""
    if network and not shutil.which("slirp4netns"):
        return "slirp4netns"
    if (network or ports) and not can_relay():
        return "nsenter (util-linux)"
    if network and not shutil.which("ip"):
        return "ip (iproute2)"
    return None


class SandboxNetwork:
    """Egress and relayed ports of one sandboxed process; `close()` ends both."""

    def __init__(self) -> None:
        self._slirp: asyncio.subprocess.Process | None = None
        self._slirp_exit: int | None = None  # closing it (or dying) ends slirp4netns
        self._servers: list[asyncio.Server] = []
        self._relays: set[asyncio.Task[None]] = set()

    async def attach(self, pid: int, egress: bool, ports: list[int],
                     slirp: bool = True, sockets: Mapping[int, str] | None = None) -> None:
        """Give the namespace of `pid` its egress (slirp4netns, or the container's own
        bridge when `slirp` is False) with host and private ranges refused, `ports` (each
        relayed to the same host port) and `sockets` (inside port -> host UNIX socket)."""
        targets: list[int | str] = [*ports, *(sockets or {}).values()]
        inside = [*ports, *(sockets or {})]
        try:
            routes: list[str] = []
            if egress:
                routes = [*BLOCKED_RANGES, *await _host_addresses()]
                if slirp:  # slirp refuses its gateway 10.0.2.2 itself
                    await self._start_slirp(pid)
                else:
                    routes += await _gateways(pid)
            listeners = await _enter(pid, routes, inside)
            for target, listener in zip(targets, listeners, strict=True):
                server = await asyncio.start_server(
                    lambda r, w, target=target: self._relay(r, w, target), sock=listener
                )
                self._servers.append(server)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        self._servers = []
        for task in list(self._relays):
            task.cancel()
        if self._slirp_exit is not None:
            os.close(self._slirp_exit)
            self._slirp_exit = None
        slirp, self._slirp = self._slirp, None
        if slirp is not None and slirp.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                slirp.kill()
            await slirp.wait()

    async def _start_slirp(self, pid: int) -> None:
        ready_r, ready_w = os.pipe()
        exit_r, self._slirp_exit = os.pipe()
        try:
            self._slirp = await asyncio.create_subprocess_exec(
                "slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
                "--enable-sandbox", "--enable-seccomp", "--ready-fd", str(ready_w),
                "--exit-fd", str(exit_r), str(pid), "tap0",
                pass_fds=(ready_w, exit_r), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )
            os.close(ready_w)
            ready_w = -1
            ready = await asyncio.wait_for(asyncio.to_thread(os.read, ready_r, 1), SLIRP_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            ready = b""
        finally:
            os.close(ready_r)
            os.close(exit_r)
            if ready_w >= 0:
                os.close(ready_w)
        if ready != b"1":
            raise RuntimeFailure("The agent's network could not be set up (slirp4netns failed)")

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     target: int | str) -> None:
        """One connection from inside, piped to the host's 127.0.0.1:`target` (a port) or
        to the UNIX socket at `target` (a path)."""
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        try:
            if isinstance(target, str):
                up_reader, up_writer = await asyncio.open_unix_connection(target)
            else:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            self._relays.discard(task)
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                end.close()
            self._relays.discard(task)


async def _enter(pid: int, routes: list[str], ports: list[int]) -> list[socket.socket]:
    """Block `routes` and listen on 127.0.0.1:`ports` inside the namespaces of `pid`."""
    if not routes and not ports:
        return []
    await _user_namespace_ready(pid)
    ours, theirs = socket.socketpair()
    try:
        namespaces = ["-n"]
        if os.readlink("/proc/self/ns/user") != os.readlink(f"/proc/{pid}/ns/user"):
            namespaces = ["-U", "--preserve-credentials", "-n"]
        job = json.dumps({"routes": routes, "ports": ports})
        helper = await asyncio.create_subprocess_exec(
            "nsenter", "-t", str(pid), *namespaces, sys.executable, "-I", "-c", _HELPER,
            str(theirs.fileno()), job, pass_fds=(theirs.fileno(),),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        theirs.close()
        _, stderr = await helper.communicate()
        if helper.returncode != 0:
            detail = (stderr.decode(errors="replace").strip().splitlines() or ["failed"])[-1]
            raise RuntimeFailure(f"The agent's network could not be set up: {detail[:200]}")
        _, fds, _, _ = await asyncio.to_thread(socket.recv_fds, ours, 1, max(len(ports), 1))
        listeners = [socket.socket(fileno=fd) for fd in fds]
        for listener in listeners:
            listener.setblocking(False)
        return listeners
    finally:
        ours.close()
        theirs.close()


async def _user_namespace_ready(pid: int, timeout: float = 5.0) -> None:
    """bwrap reports its child before the child's uid map is written: wait for the map."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        try:
            if await asyncio.to_thread(Path(f"/proc/{pid}/uid_map").read_text):
                return
        except OSError:
            return  # gone: nsenter will say so
        await asyncio.sleep(0.005)


async def _host_addresses() -> list[str]:
    """This host's own IPv4 addresses and networks (a service on 0.0.0.0 answers on each)
    and its gateways."""
    interfaces = await _ip_json("-4", "addr", "show")
    routes = await _ip_json("-4", "route", "show", "default")
    found = []
    for address in (a for i in interfaces for a in i.get("addr_info", [])):
        local = address.get("local", "")
        if local and not local.startswith("127."):
            network = ipaddress.ip_interface(f"{local}/{address.get('prefixlen', 32)}").network
            found += [f"{local}/32", str(network)]
    found += [f"{r['gateway']}/32" for r in routes if r.get("gateway")]
    return list(dict.fromkeys(found))


async def _ip_json(*args: str) -> list[dict[str, Any]]:
    probe = await asyncio.create_subprocess_exec(
        "ip", "-j", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await probe.communicate()
    try:
        found = json.loads(out or b"[]")
    except ValueError:
        return []
    return found if isinstance(found, list) else []


async def _gateways(pid: int) -> list[str]:
    """The default gateways seen from the namespace of `pid` (a bridge's gateway is the host)."""
    try:
        table = await asyncio.to_thread(Path(f"/proc/{pid}/net/route").read_text)
    except OSError:
        return []
    rows = [line.split() for line in table.splitlines()[1:]]
    found = {socket.inet_ntoa(int(row[2], 16).to_bytes(4, "little")) for row in rows
             if len(row) > 2 and row[2] != "00000000"}
    return [f"{address}/32" for address in sorted(found)]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(RELAY_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
