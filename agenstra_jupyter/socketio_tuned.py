"""python-socketio tuned for chat traffic: the servers on tornado, the controller's client.

Each class removes a per-event cost the stock one pays (a task, a walk, a syscall)
without changing what goes on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import aiohttp
import engineio
import socketio
from engineio import base_client as eio_base_client
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_drivers import tornado as eio_tornado
from socketio import packet
from tornado.iostream import StreamClosedError

from .protocol import MAX_FRAME_BYTES

# Closes a watchdog started: referenced until done, as the loop keeps only weak ones.
_closing: set[asyncio.Future[Any]] = set()


class JSONPacket(packet.Packet):
    """Socket.IO packets that are JSON only, as every event of ours is.

    The stock packet walks every outgoing payload for bytes to send as attachments; a
    forwarded event is a nest of dicts, walked once per tier. Bytes would now fail loudly
    in json.dumps rather than go out as an attachment. Incoming binary packets are read
    as before.
    """

    uses_binary_events = False


@dataclass(frozen=True)
class Coalescing:
    """Which events a socket that reads slowly may get merged: `key` names the stream an
    event continues (None: not mergeable), `merge` makes one event of two in a row."""

    key: Callable[[str, Any], Hashable | None]
    merge: Callable[[Any, Any], Any]


class InlineManager(socketio.AsyncManager):
    """python-socketio's client manager, emitting without a task per recipient.

    The stock one encodes an event once and then sends it to each recipient in a task of
    its own, awaited together: every event a turn streams cost a task and a wait, though
    a send only queues the frame on its socket. Here the frame goes to each recipient in
    turn: straight to its CorkedWebSocket when engine.io's writer has nothing left to send
    (order holds), else through the queue. Events with a callback (an ack id per recipient) go
    the stock way. With `coalescing`, an event a recipient's websocket still holds unwritten
    (its peer reads slower than events come) takes the next one of its stream into it.
    """

    def __init__(self, coalescing: Coalescing | None = None) -> None:
        super().__init__()
        self.coalescing = coalescing

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
        wire: list[str | bytes] = []  # encoded once for every recipient
        eio = self.server.eio
        key = self._stream_of(event, args, encoded)
        for sid, eio_sid in list(self.get_participants(namespace, to or room)):
            if sid in skip:
                continue
            socket = eio.sockets.get(eio_sid)
            websocket = getattr(socket, "corked_websocket", None)
            if websocket is not None:
                if key is not None and websocket.behind and websocket.hold(
                        socket, key, args[0], self._encoder(event, namespace),
                        self.coalescing.merge):  # type: ignore[union-attr]
                    continue
                wire = wire or [frame.encode() for frame in frames]
                if websocket.write_now(socket, wire):
                    continue
            for frame in frames:
                await eio.send_packet(eio_sid, frame)


    def _stream_of(self, event: str, args: list[Any], encoded: Any) -> Hashable | None:
        """The coalescing key of an event of one JSON argument, if it has one."""
        if self.coalescing is None or len(args) != 1 or not isinstance(encoded, str):
            return None
        return self.coalescing.key(event, args[0])

    def _encoder(self, event: str, namespace: str) -> _Held.Encoder:
        packet_class = self.server.packet_class

        def encode(data: Any) -> str:
            sio_packet = packet_class(packet.EVENT, namespace=namespace, data=[event, data])
            return eio_packet.Packet(eio_packet.MESSAGE, sio_packet.encode()).encode()
        return encode


class _Held:
    """An event a websocket holds while its peer reads slowly, encoded when written: the
    next one of its stream is merged into it meanwhile."""

    Encoder = Callable[[Any], str]
    __slots__ = ("data", "encode", "key")

    def __init__(self, key: Hashable, data: Any, encode: Encoder) -> None:
        self.key, self.data, self.encode = key, data, encode

    def frame(self) -> bytes:
        return websocket_frame(self.encode(self.data))


def websocket_frame(message: str | bytes) -> bytes:
    """One unmasked, unfragmented websocket frame (RFC 6455 5.2), as a server sends it."""
    if isinstance(message, str):
        opcode, data = 0x81, message.encode()  # FIN | text
    else:
        opcode, data = 0x82, message  # FIN | binary
    size = len(data)
    if size < 126:
        header = struct.pack("!BB", opcode, size)
    elif size <= 0xFFFF:
        header = struct.pack("!BBH", opcode, 126, size)
    else:
        header = struct.pack("!BBQ", opcode, 127, size)
    return header + data


def _queue_busy(socket: Any) -> bool:
    """Whether engine.io's writer has packets still to send: queued, or taken off the queue
    but not yet sent (on Python 3.11 `wait_for` gets them in a task of its own, a loop pass
    or two before the writer resumes; the writer marks them done only then)."""
    return getattr(socket.queue, "_unfinished_tasks", 1) > 0


def _ping_overdue(socket: Any) -> bool:
    """engine.io closes such a socket on its next queued send (check_ping_timeout)."""
    last_ping = socket.last_ping
    return bool(last_ping) and time.time() - last_ping > socket.server.ping_timeout


class CorkedWebSocket(eio_tornado.WebSocket):
    """engine.io's tornado websocket, writing the frames of one pass of the loop at once.

    engine.io sends each packet as a frame and tornado writes each frame with a syscall
    of its own, the costliest step of a small event (and, with TCP_NODELAY, a segment
    each). A turn sends several frames in a row (the acknowledgement, the user's message,
    events), and a multiplexed socket many: here they are gathered until the loop's next
    pass and written together, in order. Frames go out uncompressed; a server configured
    for permessage-deflate is written to through tornado, frame by frame.
    """

    def __init__(self, handler: Any, server: Any) -> None:
        super().__init__(handler, server)
        self._pending: list[bytes | _Held] = []
        self._writing: asyncio.Future[None] | None = None  # tornado's last write

    async def __call__(self, environ: dict[str, Any]) -> None:
        self.tornado_handler = environ["tornado.handler"]
        self.environ = environ
        # `handler` is the engine.io socket's own method: the socket learns its websocket,
        # for InlineManager and TunedEngineIOServer to write to it past the socket's queue
        # and writer task.
        owner = getattr(self.handler, "__self__", None)
        if owner is None:
            await self.handler(self)
            return
        owner.corked_websocket = self
        try:
            if owner.connected:  # an upgrade from long-polling: engine.io's own handshake
                await self.handler(self)
            else:
                await self._serve(owner)
        finally:
            if getattr(owner, "corked_websocket", None) is self:
                owner.corked_websocket = None

    async def _serve(self, socket: Any) -> None:
        """engine.io's websocket loop, reading without a task and a timeout per frame.

        The stock loop wraps every read in a task and a `wait_for` (the ping interval and
        timeout): a client that stops answering pings is closed by engine.io's service
        task all the same (check_ping_timeout). Messages are handled in order, each awaited
        before the next is read, as in the stock loop.
        """
        server = socket.server
        inbox = self.tornado_handler.receive_queue  # filled by the handler's on_message
        socket.connected = socket.upgraded = True
        writer = asyncio.ensure_future(self._write(socket))
        try:
            while (message := await inbox.get()) is not None:
                if len(message) > server.max_http_buffer_size:
                    break  # as the stock loop does: the socket is closed
                try:
                    pkt = eio_packet.Packet(encoded_packet=message)
                except Exception:
                    break  # not engine.io: a broken or hostile client
                if not await self._receive(socket, pkt):
                    break
        finally:
            await socket.queue.put(None)  # the writer sends what is queued, then ends
            await writer
            await socket.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)

    @staticmethod
    async def _receive(socket: Any, pkt: eio_packet.Packet) -> bool:
        """Handle one packet; False once the socket is closed (nothing more is read: a
        namespace joined on a closed socket would never hear of its disconnect)."""
        server = socket.server
        handler = server.handlers.get("message")
        try:
            if pkt.packet_type == eio_packet.MESSAGE and handler is not None \
                    and not server.async_handlers:  # python-socketio's: it runs inline
                await handler(socket.sid, pkt.data)
            else:
                await socket.receive(pkt)
        except eio_exceptions.UnknownPacketError:
            pass
        except eio_exceptions.SocketIsClosedError:
            return False
        except Exception:
            server.logger.exception("message handler error")
        return not socket.closed

    async def _write(self, socket: Any) -> None:
        """Send what engine.io queues for the socket (what InlineManager could not write
        at once, pings, the close), until its queue says the socket is done."""
        while True:
            try:
                packets = await socket.poll()
            except eio_exceptions.QueueEmpty:
                break
            if not packets:
                break
            try:
                for pkt in packets:
                    await self.send(pkt.encode())
            except Exception:
                break
        await self.close()

    async def send(self, message: str | bytes) -> None:
        handler = self.tornado_handler
        connection = handler.ws_connection
        if connection is None or connection.is_closing():
            raise eio_exceptions.EngineIOError()
        if handler.get_compression_options() is not None:
            await super().send(message)
            return
        self._gather(message)

    def write_now(self, socket: Any, messages: list[str | bytes]) -> bool:
        """Send encoded engine.io packets on `socket`'s websocket at once, unless the socket
        is not plainly open or something waits in its queue (that must go out first)."""
        if not self._direct(socket):
            return False
        for message in messages:
            self._gather(message)
        return True

    @property
    def behind(self) -> bool:
        """Whether tornado still holds the last write: the peer reads slower than it is
        sent to. What is sent meanwhile waits here, and is written once tornado is done."""
        return self._writing is not None and not self._writing.done()

    def hold(self, socket: Any, key: Hashable, data: Any, encode: _Held.Encoder,
             merge: Callable[[Any, Any], Any]) -> bool:
        """Send an event of stream `key` (see Coalescing) as write_now does; merged into
        the last event waiting unwritten when that one is of the same stream."""
        if not self._direct(socket):
            return False
        last = self._pending[-1] if self._pending else None
        if isinstance(last, _Held) and last.key == key:
            last.data = merge(last.data, data)
        else:
            self._append(_Held(key, data, encode))
        return True

    def _direct(self, socket: Any) -> bool:
        """Whether frames may go to this websocket past the socket's queue and writer."""
        handler = self.tornado_handler
        connection = handler.ws_connection if handler is not None else None
        return not (connection is None or connection.is_closing() or not socket.upgraded
                    or socket.upgrading or socket.closing or socket.closed
                    or handler.get_compression_options() is not None
                    or _queue_busy(socket) or _ping_overdue(socket))

    def _gather(self, message: str | bytes) -> None:
        self._append(websocket_frame(message))

    def _append(self, item: bytes | _Held) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(item)

    def _flush(self, force: bool = False) -> None:
        if self.behind and not force:
            return  # _written writes it, when tornado is done with the last write
        items, self._pending = self._pending, []
        connection = self.tornado_handler.ws_connection
        if not items or connection is None or connection.is_closing():
            return
        data = b"".join(item if isinstance(item, bytes) else item.frame() for item in items)
        try:
            self._writing = connection.stream.write(data)
        except StreamClosedError:
            return
        self._writing.add_done_callback(self._written)

    def _written(self, done: asyncio.Future[None]) -> None:
        done.exception()  # a peer gone mid-write fails it; engine.io notices the closed socket
        if self._pending and not self.behind:
            self._flush()

    async def close(self) -> None:
        # What was sent before the close goes out before the close frame, behind or not.
        self._flush(force=True)
        await super().close()


class TunedEngineIOServer(engineio.AsyncServer):
    """engine.io's server on CorkedWebSocket, sending a packet (an acknowledgement, an
    event to one socket) straight to the websocket when nothing waits in the socket's
    queue, as InlineManager does for events: no queue, no wake-up of the writer task."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._async = {**self._async, "websocket": CorkedWebSocket}

    async def send_packet(self, sid: str, pkt: eio_packet.Packet) -> None:
        socket = self.sockets.get(sid)
        websocket = getattr(socket, "corked_websocket", None)
        if websocket is not None and websocket.write_now(socket, [pkt.encode()]):
            return
        await super().send_packet(sid, pkt)


class TunedServer(socketio.AsyncServer):
    """python-socketio's server on tornado with the tunings here: InlineManager (merging
    what `coalescing` says for slow readers) and JSONPacket unless told otherwise,
    TunedEngineIOServer underneath. Serve it through `socketio_handler`."""

    def __init__(self, coalescing: Coalescing | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("client_manager", InlineManager(coalescing))
        kwargs.setdefault("serializer", JSONPacket)
        super().__init__(async_mode="tornado", **kwargs)

    def _engineio_server_class(self) -> type:
        return TunedEngineIOServer


def socketio_handler(sio: TunedServer, max_frame_bytes: int = MAX_FRAME_BYTES) -> type:
    """The engine.io tornado handler of `sio` (a TunedServer: its websockets are
    CorkedWebSockets) with TCP_NODELAY on its websockets, taking frames up
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

        def on_message(self, message: str | bytes) -> None:
            # Not a coroutine: tornado wraps a coroutine's result in a task, per frame.
            self.receive_queue.put_nowait(message)

    return NoDelayHandler


class InlineEngineIOClient(engineio.AsyncClient):
    """engine.io's client, handing each received message to Socket.IO without a task.

    The stock client starts a task per message; a manager link carries every event of
    every agent on its host. Socket.IO's handling of a message is short here (the
    controller only queues it for its frontends), so it runs in the read loop, which also
    keeps the messages in order. On websockets its loops read and write without a task
    and a timer per packet (the stock ones await each under `wait_for`): a watchdog looks
    once per ping period whether the server still talks. Everything else (long-polling,
    packets other than messages) goes the stock way.
    """

    _handling = 0  # handlers running now
    _last_read = 0.0  # loop time the websocket last brought a packet
    _watchdog: asyncio.TimerHandle

    def handling(self) -> bool:
        """Whether a handler is running: whoever waits for the read loop now (a close)
        waits for that handler too, and may be what it waits for."""
        return self._handling > 0

    async def _receive_packet(self, pkt: eio_packet.Packet) -> None:
        handler = self.handlers.get("message")
        if pkt.packet_type != eio_packet.MESSAGE or handler is None:
            await super()._receive_packet(pkt)
            return
        self._handling += 1
        try:
            await handler(pkt.data)
        except Exception:
            self.logger.exception("message handler error")
        finally:
            self._handling -= 1

    async def _read_loop_websocket(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_read = loop.time()
        self._watchdog = loop.call_later(self._silence_limit(), self._watch)
        try:
            while self.state == "connected" and self.write_loop_task:
                if not await self._read_one(loop):
                    await self.queue.put(None)  # ends the write loop
                    break
        finally:
            self._watchdog.cancel()
        if self.write_loop_task:
            await self.write_loop_task
        if self.state == "connected":  # the server went, not us: as the stock loop ends
            await self._trigger_event("disconnect", self.reason.TRANSPORT_ERROR,
                                      run_async=False)
            with contextlib.suppress(ValueError):
                eio_base_client.connected_clients.remove(self)
            await self._reset()

    async def _read_one(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Read and handle one packet; False once the websocket is closed or broken."""
        try:
            message = await self.ws.receive()  # no timeout: the watchdog's
        except Exception as exc:
            self.logger.info('Unexpected error receiving packet: "%s", aborting', exc)
            return False
        if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            self.logger.info("Read loop: WebSocket connection was closed, aborting")
            return False
        self._last_read = loop.time()
        try:
            pkt = eio_packet.Packet(encoded_packet=message.data)
        except Exception as exc:
            self.logger.info('Unexpected error decoding packet: "%s", aborting', exc)
            return False
        await self._receive_packet(pkt)
        return True

    def _silence_limit(self) -> float:
        """How long the server may say nothing: it pings every interval."""
        return float(self.ping_interval + self.ping_timeout)

    def _watch(self) -> None:
        """Close a websocket that brought nothing for the silence limit (its read loop
        then ends); else look again when it would be reached."""
        loop = asyncio.get_running_loop()
        left = self._last_read + self._silence_limit() - loop.time()
        if left > 0:
            self._watchdog = loop.call_later(left, self._watch)
        elif self.state == "connected" and self.ws is not None:
            self.logger.warning("Server has stopped communicating, aborting")
            _closing.add(closing := asyncio.ensure_future(self.ws.close()))
            closing.add_done_callback(_closing.discard)

    async def _write_loop(self) -> None:
        if self.current_transport != "websocket":
            await super()._write_loop()
            return
        while self.state == "connected":
            try:
                pkt = await self.queue.get()
            except asyncio.CancelledError:  # as the stock loop: it ends, nothing raised
                break
            try:
                if pkt is None:  # the read loop ended, or a disconnect
                    break
                if pkt.binary:
                    await self.ws.send_bytes(pkt.encode())
                else:
                    await self.ws.send_str(pkt.encode())
            except (aiohttp.ClientError, OSError):
                self.logger.info("Write loop: WebSocket connection was closed, aborting")
                break
            finally:
                self.queue.task_done()
        self.write_loop_task = None

    async def disconnect(self, abort: bool = False, reason: Any = None) -> None:
        # The stock disconnect waits for the read loop to end; while a handler runs (and
        # perhaps waits for this very call) it does not wait. The loop ends on its own.
        await super().disconnect(abort=abort or self.handling(), reason=reason)


class InlineClient(socketio.AsyncClient):
    """A Socket.IO client on InlineEngineIOClient: its event handlers must not wait long
    (they hold up the socket's reading), as the controller's link's do not, nor wait for
    anything that waits for the read loop to end (`handling` says when that would be so).
    """

    def _engineio_client_class(self) -> type:
        return InlineEngineIOClient

    def handling(self) -> bool:
        return bool(self.eio.handling())
