"""The order a socket's events are handled in: per agent, not per socket.

A controller multiplexes all its frontends' agents over one socket. Handled strictly one
after another, a chat for one agent would wait for every other agent's chats to be
stored: the socket, not the manager, would set the pace. So events run concurrently,
each in a lane: an event naming an agent runs after the earlier events of that agent's
lane, and an event naming none (the seed flow's one-agent socket) after every earlier
event of the socket, with every later one waiting for it. Which events an event waits
for is fixed when it arrives, so arrival order is kept exactly where it matters: a chat
never overtakes its agent's login.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ..protocol import AgenstraError, ErrorCode

# Beyond these, events are refused (RATE_LIMITED), not queued: the socket is read on
# while its events wait, so what they hold must be bounded.
MAX_EVENTS_IN_FLIGHT = 1000  # per socket
MAX_BYTES_IN_FLIGHT = 8 * 1024 * 1024  # chat text waiting, per socket
MAX_TOTAL_BYTES_IN_FLIGHT = 64 * 1024 * 1024  # chat text waiting, all sockets together
BUSY_MESSAGE = "Too many requests in flight on this socket; wait for answers"


class InFlight:
    """The bytes waiting events hold, across every socket of a manager."""

    def __init__(self, limit: int = MAX_TOTAL_BYTES_IN_FLIGHT) -> None:
        self.limit = limit
        self.bytes = 0


class SocketOrder:
    """One socket's lanes: the last event of each agent, and the last socket-wide one."""

    def __init__(self, total: InFlight | None = None) -> None:
        self._lanes: dict[str, asyncio.Future[None]] = {}
        self._barrier: asyncio.Future[None] | None = None
        self._total = total if total is not None else InFlight()
        self.in_flight = 0
        self.bytes = 0

    @contextlib.asynccontextmanager
    async def turn(self, lane: str | None, size: int = 0) -> AsyncIterator[None]:
        """Run the body in `lane` (an agent id; None: the whole socket), holding `size`
        bytes meanwhile. The lane is taken on entry, before anything is awaited: call it
        as the event arrives."""
        if self.in_flight >= MAX_EVENTS_IN_FLIGHT or self.bytes + size > MAX_BYTES_IN_FLIGHT:
            raise AgenstraError(ErrorCode.RATE_LIMITED, BUSY_MESSAGE)
        if self._total.bytes + size > self._total.limit:
            raise AgenstraError(ErrorCode.RATE_LIMITED,
                                "The manager has too many requests waiting; try again")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if lane is None:
            before = [*self._lanes.values(), self._barrier]
            self._lanes, self._barrier = {}, done
        else:
            before = [self._lanes.get(lane), self._barrier]
            self._lanes[lane] = done
        self.in_flight += 1
        self.bytes += size
        self._total.bytes += size
        try:
            for earlier in before:
                if earlier is not None and not earlier.done():
                    await asyncio.shield(earlier)  # cancelled here, it still ends for others
            yield
        finally:
            self.in_flight -= 1
            self.bytes -= size
            self._total.bytes -= size
            done.set_result(None)
            if lane is not None and self._lanes.get(lane) is done:
                del self._lanes[lane]
            if self._barrier is done:
                self._barrier = None
