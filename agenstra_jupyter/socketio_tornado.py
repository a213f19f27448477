"""python-socketio on tornado, tuned for chat traffic."""

from __future__ import annotations

from typing import Any

import socketio

from .protocol import MAX_FRAME_BYTES


def socketio_handler(sio: socketio.AsyncServer) -> type:
    """The engine.io tornado handler with TCP_NODELAY on its websockets, taking frames up
    to MAX_FRAME_BYTES (tornado's default is 10 MiB; `sio` checks its own limit after).

    A turn sends several small frames in a row (the user's message, events, the answer);
    with Nagle's algorithm the second one waits for the peer's delayed ACK, ~40 ms.
    """
    base: Any = socketio.get_tornado_handler(sio)

    class NoDelayHandler(base):  # type: ignore[misc, valid-type]
        @property
        def max_message_size(self) -> int:
            return MAX_FRAME_BYTES

        async def open(self, *args: Any, **kwargs: Any) -> None:
            self.set_nodelay(True)
            await super().open(*args, **kwargs)

    return NoDelayHandler
