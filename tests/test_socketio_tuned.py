"""python-socketio on tornado as both servers run it (socketio_tuned.py): frames sent in
one pass of the loop go out in one write, whole and in order, whatever their size, and
before the close that follows them; compression, when configured, still works; the
websocket loop that reads without a task per frame still closes silent, oversized and
garbled clients."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio
from tornado import httpserver, iostream, netutil, web, websocket

from agenstra_jupyter.socketio_tuned import TunedServer, socketio_handler

from .helpers import SlowReader

# Around every length boundary of a websocket frame header (7-bit, 16-bit, 64-bit).
SIZES = [0, 1, 120, 125, 126, 127, 1000, 65_535 - 40, 65_535, 65_536, 300_000]


@contextlib.asynccontextmanager
async def serving(settings: dict[str, Any] | None = None,
                  **options: Any) -> AsyncIterator[tuple[Any, str]]:
    sio = TunedServer(logger=False, engineio_logger=False, **options)
    app = web.Application([("/socket.io/", socketio_handler(sio))], **(settings or {}))
    server = httpserver.HTTPServer(app)
    sockets = netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    try:
        yield sio, f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    finally:
        await sio.shutdown()  # ends a long-poll the server holds open
        server.stop()
        await server.close_all_connections()


async def connect(sio: Any, url: str, client: socketio.AsyncClient) -> str:
    """`client` connected to `sio` over a websocket: its sid on the server."""
    connected: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    sio.on("connect", lambda sid, environ: connected.set_result(sid))
    await client.connect(url, transports=["websocket"])
    return await connected


async def burst_then_disconnect(settings: dict[str, Any] | None = None) -> list[str]:
    """Every SIZES event emitted in one pass of the server's loop, then the client
    disconnected by the server: what the client received, in order."""
    async with serving(settings) as (sio, url):
        client = socketio.AsyncClient(reconnection=False)
        received: list[str] = []
        closed = asyncio.Event()
        client.on("blob", received.append)
        client.on("disconnect", lambda *reason: closed.set())
        sid = await connect(sio, url, client)
        for size in SIZES:
            await sio.emit("blob", f"{size}:" + "é" * size, to=sid)
        await sio.disconnect(sid)
        await asyncio.wait_for(closed.wait(), 10)
        return received


async def test_a_burst_of_frames_of_every_size_arrives_whole_in_order_before_the_close():
    received = await burst_then_disconnect()
    assert received == [f"{size}:" + "é" * size for size in SIZES]


async def test_a_server_configured_for_compression_writes_through_tornado():
    received = await burst_then_disconnect({"websocket_compression_options": {}})
    assert received == [f"{size}:" + "é" * size for size in SIZES]


async def test_one_pass_of_the_loop_is_one_write(monkeypatch):
    writes: list[int] = []
    stock_write = iostream.BaseIOStream.write

    def counted(stream: Any, data: Any) -> Any:
        writes.append(len(data))
        return stock_write(stream, data)

    async with serving() as (sio, url):
        client = socketio.AsyncClient(reconnection=False)
        received: list[int] = []
        all_in = asyncio.Event()

        def on_tick(n: int) -> None:
            received.append(n)
            if len(received) == 50:
                all_in.set()

        client.on("tick", on_tick)
        sid = await connect(sio, url, client)
        await asyncio.sleep(0.2)  # the handshake's own writes are done
        monkeypatch.setattr(iostream.BaseIOStream, "write", counted)
        for n in range(50):
            await sio.emit("tick", n, to=sid)
        await asyncio.wait_for(all_in.wait(), 10)
        monkeypatch.undo()
        await client.disconnect()
    assert received == list(range(50))
    # Stock engine.io on tornado writes each frame on its own: 50 writes.
    assert len(writes) <= 2, writes


@pytest.mark.parametrize("size", SIZES)
def test_frame_headers_follow_rfc_6455(size):
    from agenstra_jupyter.socketio_tuned import websocket_frame

    frame = websocket_frame(b"x" * size)
    assert frame[0] == 0x82  # FIN, binary
    if size < 126:
        assert (frame[1], len(frame)) == (size, 2 + size)
    elif size <= 0xFFFF:
        assert (frame[1], int.from_bytes(frame[2:4], "big")) == (126, size)
    else:
        assert (frame[1], int.from_bytes(frame[2:10], "big")) == (127, size)
    assert frame.endswith(b"x" * size)


async def receive_ticks(queued_first: bool, passes: int = 0) -> list[int]:
    """Ticks 0..19 emitted in one pass, `passes` passes of the loop after a tick -1 sent
    through the socket's engine.io queue (as an ack or a ping is) if `queued_first`: what
    the client received, in order."""
    from engineio import packet as eio_packet

    async with serving() as (sio, url):
        client = socketio.AsyncClient(reconnection=False)
        received: list[int] = []
        done = asyncio.Event()

        def on_tick(n: int) -> None:
            received.append(n)
            if n == 19:
                done.set()

        client.on("tick", on_tick)
        sid = await connect(sio, url, client)
        await asyncio.sleep(0.3)  # settled: upgraded, handshake written
        if queued_first:
            socket = sio.eio.sockets[sio.manager.eio_sid_from_sid(sid, "/")]
            await socket.send(eio_packet.Packet(eio_packet.MESSAGE, '2["tick",-1]'))
        for _ in range(passes):
            await asyncio.sleep(0)
        for n in range(20):
            await sio.emit("tick", n, to=sid)
        await asyncio.wait_for(done.wait(), 10)
        await client.disconnect()
    return received


@pytest.mark.parametrize("passes", [0, 1, 2, 3])
async def test_frames_written_past_the_queue_never_overtake_what_waits_in_it(passes):
    """Also while engine.io's writer holds the packet it took off the queue, not yet sent."""
    assert await receive_ticks(True, passes) == list(range(-1, 20))


@pytest.mark.parametrize("through_a_task", [False, True])
async def test_an_inline_clients_handler_may_close_its_own_client(through_a_task):
    """Handlers run in the read loop, which the stock disconnect waits for: closing from
    one (directly, or through gather as the controller's link closes) must still end."""
    from agenstra_jupyter.socketio_tuned import InlineClient

    async with serving() as (sio, url):
        client = InlineClient(reconnection=False, handle_sigint=False)
        inside: list[bool] = []

        async def close() -> None:
            inside.append(client.handling())
            await client.disconnect()

        async def on_bye(_: Any) -> None:
            await (asyncio.gather(close()) if through_a_task else close())

        client.on("bye", on_bye)
        await sio.emit("bye", 1, to=await connect(sio, url, client))
        await asyncio.wait_for(client.wait(), 10)
        assert (inside, client.eio.state) == ([True], "disconnected")
        assert not client.handling()


async def test_long_polling_clients_are_sent_through_the_queue():
    import httpx

    async with serving() as (sio, url), httpx.AsyncClient(base_url=url, timeout=10) as http:
        base = "/socket.io/?EIO=4&transport=polling"
        opened = (await http.get(base)).text  # 0{"sid": ...}
        eio_sid = opened[opened.index('"sid":"') + 7:].split('"')[0]
        base += f"&sid={eio_sid}"
        await http.post(base, content="40")
        assert (await http.get(base)).text.startswith("40")
        sid = sio.manager.sid_from_eio_sid(eio_sid, "/")
        for n in range(20):
            await sio.emit("tick", n, to=sid)
        payload = (await http.get(base)).text
        assert payload.split("\x1e") == [f'42["tick",{n}]' for n in range(20)]


@contextlib.asynccontextmanager
async def raw_socket(url: str, namespace: str = "/") -> AsyncIterator[Any]:
    """An engine.io websocket joined to `namespace`, frames in and out by hand."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        ws_url = url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
        async with session.ws_connect(ws_url, autoping=False) as ws:
            assert (await ws.receive_str()).startswith("0{")  # engine.io's open packet
            await ws.send_str("40" if namespace == "/" else f"40{namespace},")
            assert (await ws.receive_str()).startswith("40")
            yield ws


async def closed_by_server(ws: Any) -> bool:
    """Whether the server closes `ws` within 10 s (frames it sends meanwhile are read)."""
    import aiohttp

    with contextlib.suppress(asyncio.TimeoutError):
        async with asyncio.timeout(10):
            while (await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE,
                                                    aiohttp.WSMsgType.CLOSED,
                                                    aiohttp.WSMsgType.ERROR):
                pass
            return True
    return False


async def test_a_client_that_stops_answering_pings_is_closed():
    """No read waits with a timeout any more: engine.io's ping check closes the socket."""
    async with serving(ping_interval=0.2, ping_timeout=0.3) as (sio, url):
        gone = asyncio.Event()
        sio.on("disconnect", lambda sid, reason=None: gone.set())
        async with raw_socket(url) as ws:
            assert await closed_by_server(ws)  # the pings ("2") go unanswered
        await asyncio.wait_for(gone.wait(), 5)
        assert not sio.eio.sockets


async def test_a_client_that_answers_pings_stays():
    async with serving(ping_interval=0.1, ping_timeout=0.3) as (sio, url), \
            raw_socket(url) as ws:
        pings = 0
        while pings < 8:  # about three ping timeouts
            frame = await asyncio.wait_for(ws.receive_str(), 5)
            if frame == "2":
                pings += 1
                await ws.send_str("3")
        assert len(sio.eio.sockets) == 1


@pytest.mark.parametrize("frame", ["4" + "x" * 2000, "zz", "", "9"],
                         ids=["oversized", "garbled", "empty", "unknown type"])
async def test_an_oversized_or_garbled_frame_closes_only_its_socket(frame):
    async with serving(max_http_buffer_size=1000) as (sio, url):
        sio.on("echo", lambda sid, data: data)
        async with raw_socket(url) as bad, raw_socket(url) as good:
            await bad.send_str(frame)
            if frame == "9":  # not a known packet type: ignored, as engine.io does
                await bad.send_str('421["echo","still here"]')
                assert await asyncio.wait_for(bad.receive_str(), 5) == '431["still here"]'
            else:
                assert await closed_by_server(bad)
            await good.send_str('427["echo","hi"]')  # the other socket is still served
            assert await asyncio.wait_for(good.receive_str(), 5) == '437["hi"]'


async def test_acknowledgements_skip_the_queue_and_follow_the_handlers_events():
    async with serving() as (sio, url):
        queued: list[Any] = []
        watched: list[Any] = []

        @sio.on("ask")
        async def ask(sid: str, n: int) -> int:
            socket = sio.eio.sockets[sio.manager.eio_sid_from_sid(sid, "/")]
            if not watched:  # the first call watches what goes through engine.io's queue
                watched.append(socket)
                stock_put = socket.queue.put

                async def put(pkt: Any) -> None:
                    queued.append(pkt)
                    await stock_put(pkt)
                socket.queue.put = put
            for k in range(3):
                await sio.emit("step", [n, k], to=sid)
            return n * 10

        async with raw_socket(url) as ws:
            await asyncio.sleep(0.2)  # settled: the handshake written
            frames = []
            for n in range(5):
                await ws.send_str(f'42{n}["ask",{n}]')  # an event asking for ack id n
                frames += [await asyncio.wait_for(ws.receive_str(), 5) for _ in range(4)]
            assert queued == []  # (the close will queue its None)
        expected = []
        for n in range(5):
            expected += [f'42["step",[{n},{k}]]' for k in range(3)] + [f"43{n}[{n * 10}]"]
        assert frames == expected


class _FallsSilent(websocket.WebSocketHandler):
    """An engine.io server that opens a session (pinging every 200 ms, it says), lets the
    client join, and then says nothing more."""

    closed: asyncio.Event

    def open(self, *args: Any) -> None:
        self.write_message('0{"sid":"s","upgrades":[],"pingInterval":200,'
                           '"pingTimeout":300,"maxPayload":1000000}')

    def on_message(self, message: Any) -> None:
        if message.startswith("40"):
            self.write_message('40{"sid":"n"}')

    def on_close(self) -> None:
        self.closed.set()


async def test_an_inline_client_leaves_a_server_that_falls_silent():
    """Reads wait without a timeout now: the watchdog closes the link once the server has
    said nothing for its ping interval and timeout, not before."""
    from agenstra_jupyter.socketio_tuned import InlineClient

    _FallsSilent.closed = asyncio.Event()
    server = httpserver.HTTPServer(web.Application([("/socket.io/", _FallsSilent)]))
    sockets = netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    client = InlineClient(reconnection=False, handle_sigint=False)
    gone = asyncio.Event()
    client.on("disconnect", lambda *reason: gone.set())
    try:
        await client.connect(f"http://127.0.0.1:{sockets[0].getsockname()[1]}",
                             transports=["websocket"])
        joined = time.monotonic()
        await asyncio.wait_for(gone.wait(), 10)
        silent_for = time.monotonic() - joined
        await asyncio.wait_for(_FallsSilent.closed.wait(), 10)  # its websocket, closed
    finally:
        await client.disconnect()
        server.stop()
    assert 0.4 <= silent_for < 5, silent_for
    assert client.eio.state == "disconnected"


async def test_an_inline_client_stays_with_a_server_that_keeps_pinging():
    """The watchdog looks again as long as packets come: pings over several of its limits
    keep the link, and what is emitted still goes both ways."""
    from agenstra_jupyter.socketio_tuned import InlineClient

    async with serving(ping_interval=0.1, ping_timeout=0.2) as (sio, url):
        sio.on("echo", lambda sid, data: data)
        client = InlineClient(reconnection=False, handle_sigint=False)
        dropped: list[Any] = []
        client.on("disconnect", lambda *reason: dropped.append(reason))
        await connect(sio, url, client)
        await asyncio.sleep(1.5)  # five times the silence limit (0.3 s)
        try:
            assert await client.call("echo", "still here", timeout=5) == "still here"
            assert dropped == [] and client.connected
        finally:
            await client.disconnect()


def _delta(n: int, text: str) -> dict[str, Any]:
    return {"agentId": "a", "correlationId": "c", "kind": "assistantDelta",
            "payload": {"delta": text}, "sequence": n}


async def _stream_to(slow: bool) -> tuple[list[Any], str, int]:
    """3000 deltas of one turn with a toolCall after the 1000th, then the answer, to one
    socket that reads slowly (or at once): what it received, the text sent before the
    toolCall, and how many events were sent."""
    import json
    import socket as sockets

    from agenstra_jupyter import protocol
    from agenstra_jupyter.socketio_tuned import Coalescing

    coalescing = Coalescing(protocol.delta_stream, protocol.merge_deltas)
    async with serving(coalescing=coalescing) as (sio, url):
        joined: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        sio.on("connect", lambda sid, environ: joined.set_result(sid))
        client = await SlowReader.connect(url)
        sid = await joined
        websocket = sio.eio.sockets[sio.manager.eio_sid_from_sid(sid, "/")].corked_websocket
        stream = websocket.tornado_handler.ws_connection.stream
        stream.socket.setsockopt(sockets.SOL_SOCKET, sockets.SO_SNDBUF, 4096)
        received: list[Any] = []

        async def read_all() -> None:
            while not received or received[-1][0] != "chatMessage":
                frame = await client.read()
                if frame.startswith("42"):
                    received.append(json.loads(frame[2:]))

        reading = None if slow else asyncio.ensure_future(read_all())
        before_tool, sent, was_behind = "", 0, False
        for n in range(1, 3001):
            await sio.emit("chatEvent", _delta(n if n <= 1000 else n + 1, f"w{n} "), to=sid)
            sent += 1
            if n == 1000:
                before_tool = "".join(f"w{k} " for k in range(1, 1001))
                await sio.emit("chatEvent", {**_delta(n, ""), "kind": "toolCall",
                                             "payload": {"name": "t"}, "sequence": 1001}, to=sid)
            if n % 50 == 0:
                await asyncio.sleep(0.001)  # written meanwhile, as far as the reader lets
                was_behind = was_behind or websocket.behind
        await sio.emit("chatMessage", {"seq": 2, "from": "agent"}, to=sid)
        assert was_behind == slow
        await asyncio.wait_for(reading or read_all(), 30)
        gone = asyncio.Event()
        sio.on("disconnect", lambda sid, reason=None: gone.set())
        await client.close()
        await asyncio.wait_for(gone.wait(), 10)
        return received, before_tool, sent


def _check_stream(received: list[Any], before_tool: str) -> None:
    """Every delta's text once and in order, the toolCall where it was, sequences rising."""
    kinds = [(event, data.get("kind")) for event, data in received]
    assert kinds.count(("chatEvent", "toolCall")) == 1 and kinds[-1] == ("chatMessage", None)
    tool = kinds.index(("chatEvent", "toolCall"))
    text = [data["payload"]["delta"] for _, data in received[:tool]]
    assert "".join(text) == before_tool
    rest = [data["payload"]["delta"] for _, data in received[tool + 1:-1]]
    assert "".join(rest) == "".join(f"w{k} " for k in range(1001, 3001))
    sequences = [data["sequence"] for _, data in received[:-1]]
    assert sequences == sorted(set(sequences)) and sequences[-1] == 3001


async def test_a_slow_reader_gets_a_turns_deltas_merged_in_order():
    received, before_tool, sent = await _stream_to(slow=True)
    _check_stream(received, before_tool)
    assert len(received) < sent / 10  # merged while it did not read


async def test_a_reader_that_keeps_up_gets_every_delta_as_sent():
    received, before_tool, sent = await _stream_to(slow=False)
    _check_stream(received, before_tool)
    assert len(received) == sent + 2  # the toolCall and the answer


@pytest.mark.parametrize("shape", ["chatEvent", "forwardedEvent"])
def test_only_a_turns_plain_text_deltas_are_merged(shape):
    from agenstra_jupyter.protocol import delta_stream, merge_deltas

    def sent(event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if shape == "chatEvent":
            return "chatEvent", event
        return "forwardedEvent", {"event": "chatEvent", "payload": event, "clientId": "local",
                                  "agentId": event["agentId"]}

    first, second = sent(_delta(1, "Hel")), sent(_delta(2, "lo"))
    assert delta_stream(*first) == delta_stream(*second) == ("a", "c")
    merged = merge_deltas(first[1], second[1])
    inner = merged if shape == "chatEvent" else merged["payload"]
    assert inner["payload"] == {"delta": "Hello"} and inner["sequence"] == 2
    assert first[1] == sent(_delta(1, "Hel"))[1]  # neither argument changed
    assert second[1] == sent(_delta(2, "lo"))[1]
    others = [{**_delta(3, "x"), "kind": "toolCall"},
              {**_delta(3, "x"), "payload": {"delta": "x", "more": 1}},
              {**_delta(3, "x"), "payload": {"delta": 7}},
              {**_delta(3, "x"), "correlationId": None}]
    assert [delta_stream(*sent(other)) for other in others] == [None] * len(others)
    assert delta_stream("chatMessage", _delta(3, "x")) is None
