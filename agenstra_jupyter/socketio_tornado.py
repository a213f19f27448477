"""python-socketio on tornado, tuned for chat traffic."""

from __future__ import annotations

from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet

from .protocol import MAX_FRAME_BYTES


class JSONPacket(packet.Packet):
    """Socket.IO packets that are JSON only, as every event of ours is.

    The stock packet walks every outgoing payload for bytes to send as attachments; a
    forwarded event is a nest of dicts, walked once per tier. Bytes would now fail loudly
    in json.dumps rather than go out as an attachment. Incoming binary packets are read
    as before.
    """

    uses_binary_events = False


class InlineManager(socketio.AsyncManager):
    """python-socketio's client manager, emitting without a task per recipient.

    The stock one encodes an event once and then sends it to each recipient in a task of
    its own, awaited together: every event a turn streams cost a task and a wait, though
    a send only queues the frame on its socket. Here the frame is queued for each
    recipient in turn. Events with a callback (an ack id per recipient) go the stock way.
    """

    async def emit(self, event: str, data: Any, namespace: str, room: Any = None,
                   skip_sid: Any = None, callback: Any = None, to: Any = None,
                   **kwargs: Any) -> None:
        if callback is not None:
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid,
                               callback=callback, to=to, **kwargs)
            return
        if namespace not in self.rooms:
            return
        if isinstance(data, tuple):
            args = list(data)  # a tuple is several arguments, as python-socketio has it
        else:
            args = [] if data is None else [data]
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        encoded = self.server.packet_class(packet.EVENT, namespace=namespace,
                                           data=[event, *args]).encode()
        frames = [eio_packet.Packet(eio_packet.MESSAGE, part)
                  for part in (encoded if isinstance(encoded, list) else [encoded])]
        for sid, eio_sid in list(self.get_participants(namespace, to or room)):
            if sid not in skip:
                for frame in frames:
                    await self.server.eio.send_packet(eio_sid, frame)


def socketio_handler(sio: socketio.AsyncServer, max_frame_bytes: int = MAX_FRAME_BYTES) -> type:
    """The engine.io tornado handler with TCP_NODELAY on its websockets, taking frames up
    to `max_frame_bytes` (tornado's default is 10 MiB; `sio` checks its own limit after),
    compressed only if the tornado settings' `websocket_compression_options` say so.

    A turn sends several small frames in a row (the user's message, events, the answer);
    with Nagle's algorithm the second one waits for the peer's delayed ACK, ~40 ms.
    """
    base: Any = socketio.get_tornado_handler(sio)

    class NoDelayHandler(base):  # type: ignore[misc, valid-type]
        @property
        def max_message_size(self) -> int:
            return max_frame_bytes

        def get_compression_options(self) -> dict[str, Any] | None:
            # engine.io turns permessage-deflate on for every socket; we follow the server's
            # setting instead, off by default as for Jupyter's own websockets: a deflate
            # context per socket costs ~100 KB and CPU on every small frame.
            return self.settings.get("websocket_compression_options")

        async def open(self, *args: Any, **kwargs: Any) -> None:
            self.set_nodelay(True)
            await super().open(*args, **kwargs)

    return NoDelayHandler
