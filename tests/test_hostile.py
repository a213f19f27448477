"""Hostile input: fuzzed events and REST bodies, floods, caps, secrets, metrics.

Every bad request must get an error (an `error`/`loginError` event, a failed ack, a 4xx)
and change nothing: the servers stay up, no agent, message or client appears or goes.
"""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
import pytest
import socketio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agenstra_jupyter.protocol import MAX_FRAME_BYTES, ErrorCode

from .conftest import start_jupyter, stop_jupyter
from .helpers import database_bytes, leaked, secret_config, stored_secrets

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=20,
)
shaped_payloads = (
    json_values
    | st.binary(max_size=64)
    | st.dictionaries(st.sampled_from(["agentId", "agentName", "password", "afterSeq",
                                       "message", "correlationId", "stream", "clientId",
                                       "event", "payload"]), json_values, max_size=6)
)
# The manager refuses oversize messages itself; the controller's transport drops oversize
# frames (test_an_oversize_frame_drops_only_that_socket).
hostile_payloads = shaped_payloads | st.just({"message": "x" * 300_000})
manager_events = st.sampled_from(["login", "chat", "cancel", "logout"]) | st.text(max_size=20)
controller_events = st.sampled_from(["setClient", "forward"]) | st.text(max_size=20)


def manager_state(manager) -> tuple:
    with sqlite3.connect(manager.data_dir / "manager.sqlite") as db:
        return (db.execute("select count(*) from agents").fetchone(),
                db.execute("select count(*) from messages").fetchone())


@pytest.fixture(scope="module")
def fuzz_manager(tmp_path_factory):
    from .helpers import ManagerProcess

    manager = ManagerProcess(tmp_path_factory.mktemp("fuzz") / "m", api_key="k" * 32).start()
    httpx.post(f"{manager.url}/api/agents", json={"name": "target", "provider": "echo"},
               headers={"Authorization": f"Bearer {manager.api_key}"})
    yield manager
    manager.stop()


@pytest.fixture(scope="module")
def manager_socket(fuzz_manager):
    client = socketio.SimpleClient()
    client.connect(fuzz_manager.url, namespace="/agents", transports=["websocket"],
                   auth={"apiKey": fuzz_manager.api_key})
    yield client
    client.disconnect()


@FUZZ
@given(event=manager_events, payload=hostile_payloads)
def test_fuzzed_manager_events_are_refused(fuzz_manager, manager_socket, event, payload):
    before = manager_state(fuzz_manager)
    manager_socket.emit(event, payload)
    name, reply = manager_socket.receive(timeout=10)
    assert name in ("error", "loginError")
    assert reply["code"] and reply["message"]
    assert manager_state(fuzz_manager) == before


@FUZZ
@given(body=json_values, path=st.sampled_from(["/api/agents", "/api/agents/x/start",
                                                "/api/agents/x/messages"]))
def test_fuzzed_manager_rest_is_refused(fuzz_manager, body, path):
    before = manager_state(fuzz_manager)
    headers = {"Authorization": f"Bearer {fuzz_manager.api_key}"}
    response = httpx.post(f"{fuzz_manager.url}{path}", json=body, headers=headers, timeout=30)
    if path == "/api/agents" and response.status_code == 201:
        pytest.fail(f"a fuzzed body created an agent: {body!r}")
    assert 400 <= response.status_code < 500
    assert response.json()["message"]
    assert manager_state(fuzz_manager) == before


def test_deep_nesting_and_garbage_frames_do_not_take_the_manager_down(fuzz_manager):
    # Built by hand: the client's own json.dumps would refuse this depth and send nothing.
    deep = "[" * 5000 + '"x"' + "]" * 5000
    frames = [f'2/agents,["chat",{{"message":{deep}}}]', '2/agents,["chat",{"message":',
              "2/agents,", "9 not a packet", '2/agents,["' + "\\u" + 'zz"]']
    for frame in frames:
        attacker = socketio.SimpleClient(reconnection=False)
        attacker.connect(fuzz_manager.url, namespace="/agents", transports=["websocket"],
                         auth={"apiKey": fuzz_manager.api_key})
        try:
            attacker.client.eio.send(frame)  # one raw Socket.IO packet
            # The sentinel: a request answered only after the garbage before it was handled
            # (or the socket is gone). Silence would mean the manager choked on it.
            attacker.emit("cancel", {})
            name, reply = attacker.receive(timeout=10)
            assert name == "error" and reply["code"], (frame[:40], name, reply)
        except socketio.exceptions.DisconnectedError:
            pass  # dropped: only this socket is affected
        finally:
            attacker.disconnect()
    health = httpx.get(f"{fuzz_manager.url}/api/health",
                       headers={"Authorization": f"Bearer {fuzz_manager.api_key}"})
    assert health.json()["status"] == "ok"


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory):
    server = start_jupyter(tmp_path_factory.mktemp("guarded"), {
        "AGENSTRA_CHAT_RATE": "5", "AGENSTRA_MAX_SOCKETS_PER_USER": "3",
        "AGENSTRA_MAX_MESSAGE_BYTES": "2000", "AGENSTRA_LOGIN_RATE": "4",
    })
    yield server
    stop_jupyter(server)


def frontend(server, reconnection: bool = True) -> socketio.SimpleClient:
    client = socketio.SimpleClient(reconnection=reconnection)
    client.connect(f"{server.url}?token={server.token}", namespace="/clients",
                   socketio_path="jp/agenstra/socket.io", transports=["websocket"])
    return client


def rest(server, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{server.full_url}agenstra/api{path}",
                         headers={"Authorization": f"token {server.token}"}, timeout=30,
                         **kwargs)


# -- the controller's socket, fuzzed past setClient -----------------------------------------

ERROR_CODES = {value for name, value in vars(ErrorCode).items() if name.isupper()}
TARGET = "<the fuzz target>"  # stands for the id of an echo agent with stored credentials
after_seqs = (st.integers() | st.integers(min_value=2**63 - 2, max_value=2**64)
              | st.integers(min_value=10**22, max_value=10**23)
              | st.sampled_from(["12", "\uff11\uff12"]) | json_values)  # 12 in fullwidth digits
login_payloads = st.fixed_dictionaries({}, optional={
    "afterSeq": after_seqs, "password": json_values, "agentId": json_values,
    "agentName": json_values})


def mostly(good, bad, odds: int = 4):
    """`good`, `odds` times as often as `bad`: enough well-formed requests to get through."""
    return st.integers(0, odds).flatmap(lambda pick: bad if pick == 0 else good)


chat_payloads = st.fixed_dictionaries(
    {"message": mostly(st.text(min_size=1, max_size=200), json_values)},
    optional={"correlationId": mostly(st.text(min_size=1, max_size=64),
                                      st.text(max_size=140) | json_values),
              "stream": mostly(st.booleans(), json_values)})
# Mostly the agent whose credentials are stored (the link opens, the login is real).
agent_ids = mostly(st.just(TARGET), st.text(max_size=70) | json_values)
FORWARDED = ["login", "chat", "cancel", "logout", "permissionResponse"]
login_forwards = st.fixed_dictionaries({"event": st.just("login"), "agentId": agent_ids},
                                       optional={"payload": login_payloads})
chat_forwards = st.fixed_dictionaries({"event": st.just("chat"), "agentId": agent_ids,
                                       "payload": chat_payloads})
other_forwards = st.fixed_dictionaries(
    {"event": st.sampled_from(FORWARDED) | st.text(max_size=70)},
    optional={"agentId": agent_ids, "payload": shaped_payloads})
controller_requests = st.one_of(
    st.tuples(st.just("forward"), login_forwards),
    st.tuples(st.just("forward"), login_forwards),
    st.tuples(st.just("forward"), chat_forwards),
    st.tuples(st.just("forward"), chat_forwards),
    st.tuples(st.just("forward"), other_forwards),
    st.tuples(st.just("forward"), shaped_payloads),
    st.tuples(st.just("setClient"), shaped_payloads | st.just({"clientId": "local"})),
    st.tuples(controller_events, shaped_payloads),
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    """No rate limits here, so the fuzzed requests reach login, afterSeq and links."""
    server = start_jupyter(tmp_path_factory.mktemp("fuzzc"), {
        "AGENSTRA_CHAT_RATE": "0", "AGENSTRA_LOGIN_RATE": "0", "AGENSTRA_EVENT_RATE": "0",
        "AGENSTRA_DEFAULT_PROVIDER": "echo"})
    agents = {}
    for name in ("fuzz-target", "bystander"):
        created = rest(server, "POST", "/clients/local/agents",
                       json={"name": name, "provider": "echo"})
        assert created.status_code == 201, created.text
        agents[name] = created.json()["id"]
    server.agents = agents
    yield server
    stop_jupyter(server)


@pytest.fixture(scope="module")
def fuzzer(fuzz_server):
    client = frontend(fuzz_server, reconnection=False)  # so a drop shows
    assert client.call("setClient", {"clientId": "local"}) == {"ok": True}
    yield client
    client.disconnect()


class Bystander:
    """Another frontend socket on the same server, logged into its own agent."""

    def __init__(self, server) -> None:
        self.agent = server.agents["bystander"]
        self.socket = frontend(server, reconnection=False)
        assert self.socket.call("setClient", {"clientId": "local"}) == {"ok": True}
        ack = self.socket.call("forward", {"event": "login", "agentId": self.agent}, timeout=30)
        assert ack == {"ok": True}
        self.turns = 0

    def check(self) -> None:
        """One turn of its own: answered, and nothing but its own agent's traffic before it."""
        self.turns += 1
        correlation = f"bystander-{self.turns}"
        ack = self.socket.call("forward", {"event": "chat", "agentId": self.agent, "payload": {
            "message": f"still here {self.turns}", "correlationId": correlation}}, timeout=30)
        assert ack == {"ok": True}
        while True:
            name, payload = self.socket.receive(timeout=30)
            assert name in ("forwardedEvent", "clientSet"), (name, payload)
            if name == "clientSet":
                continue
            assert payload["agentId"] == self.agent and payload["clientId"] == "local"
            message = payload["payload"]
            if (payload["event"] == "chatMessage" and message["from"] == "agent"
                    and message["correlationId"] == correlation):
                assert message["response"]["result"] == f"Echo: still here {self.turns}"
                return


@pytest.fixture(scope="module")
def bystander(fuzz_server):
    watcher = Bystander(fuzz_server)
    yield watcher
    watcher.socket.disconnect()


def registered(server) -> list[dict]:
    """The clients as registered; their health (checked on its own schedule) left out."""
    return [{k: v for k, v in c.items() if k != "health"}
            for c in rest(server, "GET", "/clients").json()]


@settings(FUZZ, max_examples=120)
@given(request=controller_requests)
def test_fuzzed_controller_requests_after_set_client(fuzz_server, fuzzer, bystander, request):
    name, payload = request
    if isinstance(payload, dict) and payload.get("agentId") == TARGET:
        payload = {**payload, "agentId": fuzz_server.agents["fuzz-target"]}
    before = registered(fuzz_server)
    ack = fuzzer.call(name, payload, timeout=60)  # answered, not left hanging
    assert isinstance(ack, dict) and isinstance(ack.get("ok"), bool), ack
    forwarded = payload.get("event") if name == "forward" and isinstance(payload, dict) else ""
    event(f"{name if name in ('forward', 'setClient') else '*'} "
          f"{forwarded if forwarded in FORWARDED else '*'}: "
          f"{'ok' if ack['ok'] else ack['error']['code']}")  # --hypothesis-show-statistics
    if not ack["ok"]:
        assert ack["error"]["code"] in ERROR_CODES and ack["error"]["message"], ack
        assert ack["error"]["code"] != ErrorCode.INTERNAL, ack  # refused, not crashed
    if name == "setClient" and ack["ok"]:
        assert payload["clientId"] == "local"  # no other client exists
    assert registered(fuzz_server) == before
    assert fuzzer.connected
    bystander.check()  # another socket of the same server is unaffected


def test_fuzzed_controller_socket_still_works(fuzz_server, fuzzer):
    """After all that, the fuzzing socket itself still logs in and chats."""
    agent = fuzz_server.agents["fuzz-target"]
    assert fuzzer.call("setClient", {"clientId": "local"}) == {"ok": True}
    assert fuzzer.call("forward", {"event": "login", "agentId": agent}, timeout=30) == {
        "ok": True}
    assert fuzzer.call("forward", {"event": "chat", "agentId": agent, "payload": {
        "message": "after the fuzz", "correlationId": "after-fuzz"}}, timeout=30) == {"ok": True}
    while True:
        name, payload = fuzzer.receive(timeout=30)
        if (name == "forwardedEvent" and payload["event"] == "chatMessage"
                and payload["payload"]["correlationId"] == "after-fuzz"
                and payload["payload"]["from"] == "agent"):
            assert payload["payload"]["response"]["result"] == "Echo: after the fuzz"
            break


@FUZZ
@given(body=json_values)
def test_fuzzed_controller_rest_is_refused(guarded_server, body):
    before = rest(guarded_server, "GET", "/clients/local/agents").json()
    for path in ("/clients", "/clients/local/agents"):
        response = rest(guarded_server, "POST", path, json=body)
        assert 400 <= response.status_code < 500 or response.status_code == 502
        assert response.json()["message"]
    assert rest(guarded_server, "GET", "/clients/local/agents").json() == before


def test_an_oversize_frame_drops_only_that_socket(guarded_server):
    bystander = frontend(guarded_server)
    attacker = frontend(guarded_server, reconnection=False)  # a drop is final
    try:
        assert attacker.call("setClient", {"clientId": "local"}) == {"ok": True}
        # Over max_message_bytes but within the frame limit: refused, the socket stays.
        big = attacker.call("forward", {"event": "chat", "agentId": "x",
                                        "payload": {"message": "z" * 400_000}}, timeout=30)
        assert big["error"]["code"] == ErrorCode.PAYLOAD_TOO_LARGE and attacker.connected
        # Over the frame limit every tier shares: the transport drops that socket.
        attacker.emit("forward", {"event": "chat", "agentId": "x",
                                  "payload": {"message": "z" * (MAX_FRAME_BYTES + 1)}})
        deadline = time.monotonic() + 30
        while attacker.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not attacker.connected, "the oversize frame did not drop its socket"
    finally:
        attacker.disconnect()
    assert bystander.call("setClient", {"clientId": "local"}) == {"ok": True}
    bystander.disconnect()


def test_floods_and_caps(guarded_server):
    agent = next(a for a in rest(guarded_server, "GET", "/clients/local/agents").json())
    client = frontend(guarded_server)
    assert client.call("setClient", {"clientId": "local"}) == {"ok": True}
    codes = [client.call("forward", {"event": "chat", "agentId": agent["id"],
                                     "payload": {"message": "echo hi", "correlationId": f"f{n}"}},
                         timeout=30).get("error", {}).get("code") for n in range(10)]
    assert codes[:5] == [None] * 5 and set(codes[5:]) == {ErrorCode.RATE_LIMITED}
    big = client.call("forward", {"event": "chat", "agentId": agent["id"],
                                  "payload": {"message": "y" * 5000}}, timeout=30)
    assert big["error"]["code"] == ErrorCode.PAYLOAD_TOO_LARGE
    logins = [client.call("forward", {"event": "login", "agentId": agent["id"]}, timeout=30)
              for _ in range(6)]
    assert logins[-1]["error"]["code"] == ErrorCode.RATE_LIMITED
    # Three sockets are allowed; `client` is one (other tests may hold more, this one
    # alone none): the next ones are refused once three are open, whatever came first.
    others: list = []
    with pytest.raises(socketio.exceptions.ConnectionError):
        for _ in range(3):
            others.append(frontend(guarded_server))
    assert len(others) <= 2  # never more than 3 open with `client`
    for other in [client, *others]:
        other.disconnect()


def test_no_secret_in_logs_events_or_rest(guarded_server):
    # An agent with a secret in every config field: env, files, args, URLs, apiKey.
    created = rest(guarded_server, "POST", "/clients/local/agents",
                   json={"name": "secretive", "provider": "echo", "config": secret_config()})
    assert created.status_code == 201, created.text
    agent = created.json()
    client = frontend(guarded_server)
    client.call("setClient", {"clientId": "local"})
    client.call("forward", {"event": "login", "agentId": agent["id"]}, timeout=30)
    client.call("forward", {"event": "chat", "agentId": agent["id"],
                            "payload": {"message": "hi", "correlationId": "s1"}}, timeout=30)
    events = []
    while not any(e[0] == "forwardedEvent" and e[1]["event"] == "chatMessage"
                  and e[1]["payload"]["from"] == "agent" for e in events):
        events.append(client.receive(timeout=30))  # up to the turn's answer, all of it
    client.disconnect()
    data_dir = guarded_server.data_dir
    secrets = stored_secrets(data_dir)
    seen = json.dumps(events) + (data_dir.parent / "jupyter.log").read_text()
    for path in ("/clients", "/clients/local", "/clients/local/agents",
                 f"/clients/local/agents/{agent['id']}",
                 f"/clients/local/agents/{agent['id']}/messages"):
        seen += rest(guarded_server, "GET", path).text
    seen += created.text + rest(guarded_server, "POST",
                                f"/clients/local/agents/{agent['id']}/restart").text
    assert secrets and not [s for s in secrets if s in seen]
    assert leaked(seen) == []
    assert leaked(database_bytes(data_dir / "local-manager" / "manager.sqlite")) == []


def test_metrics_on_both_tiers(guarded_server):
    metrics = httpx.get(f"{guarded_server.full_url}metrics",
                        headers={"Authorization": f"token {guarded_server.token}"}).text
    for name in ("agenstra_controller_frontends", "agenstra_controller_errors_total",
                 "agenstra_controller_forwarded_events_total",
                 "agenstra_controller_turn_seconds_bucket"):
        assert name in metrics
    assert 'agenstra_controller_errors_total{code="RATE_LIMITED"}' in metrics


def test_manager_metrics_need_the_key(fuzz_manager):
    assert httpx.get(f"{fuzz_manager.url}/metrics").status_code == 401
    text = httpx.get(f"{fuzz_manager.url}/metrics",
                     headers={"Authorization": f"Bearer {fuzz_manager.api_key}"}).text
    for name in ("agenstra_manager_sockets", "agenstra_manager_turns_in_flight",
                 "agenstra_manager_turn_seconds_bucket", "agenstra_manager_errors_total"):
        assert name in text
