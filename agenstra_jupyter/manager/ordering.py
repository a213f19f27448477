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

MAX_EVENTS_IN_FLIGHT = 1000  # per socket: beyond, events are refused, not queued


class SocketOrder:
    """One socket's lanes: the last event of each agent, and the last socket-wide one."""

    def __init__(self) -> None:
        self._lanes: dict[str, asyncio.Future[None]] = {}
        self._barrier: asyncio.Future[None] | None = None
        self.in_flight = 0

    @contextlib.asynccontextmanager
    async def turn(self, lane: str | None) -> AsyncIterator[None]:
        """Run the body in `lane` (an agent id; None: the whole socket). The lane is taken
        on entry, before anything is awaited: call it as the event arrives."""
        if self.in_flight >= MAX_EVENTS_IN_FLIGHT:
            raise AgenstraError(ErrorCode.RATE_LIMITED,
                                "Too many requests in flight on this socket; wait for answers")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if lane is None:
            before = [*self._lanes.values(), self._barrier]
            self._lanes, self._barrier = {}, done
        else:
            before = [self._lanes.get(lane), self._barrier]
            self._lanes[lane] = done
        self.in_flight += 1
        try:
            for earlier in before:
                if earlier is not None and not earlier.done():
                    await asyncio.shield(earlier)  # cancelled here, it still ends for others
            yield
        finally:
            self.in_flight -= 1
            done.set_result(None)
            if lane is not None and self._lanes.get(lane) is done:
                del self._lanes[lane]
            if self._barrier is done:
                self._barrier = None
