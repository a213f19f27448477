"""The `kubernetes` runtime with the real kubernetes_asyncio client against a fake API server.

No Kubernetes API server can run on these machines, so tests/fakes/kubernetes_api.py
speaks the REST and exec-websocket protocol the client uses; commands it is sent run in a
bubblewrap "container". What this cannot show (a kubelet, a scheduler, a CNI enforcing the
NetworkPolicy, Pod Security admission) is listed in docs/deploy/kubernetes.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from urllib.parse import unquote_plus

import pytest

from agenstra_jupyter.manager.models import AgentRecord
from agenstra_jupyter.manager.runtimes.base import RuntimeFailure
from agenstra_jupyter.manager.runtimes.kubeexec import environment_header
from agenstra_jupyter.manager.runtimes.kubernetes import (
    AGENT_LABEL,
    MANAGER_LABEL,
    NAME_ANNOTATION,
    KubernetesRuntime,
)

from .fakes.kubernetes_api import FakeKubernetes

HOSTILE_NAME = "x\"; rm -rf / #\n{{ .Values }}: |\n  - $(id)`id`'"


@pytest.fixture(scope="module")
def fake_k8s():
    if shutil.which("bwrap") is None:  # the fake's "containers"
        if os.environ.get("AGENSTRA_REQUIRE_SANDBOX") == "1":
            pytest.fail("bubblewrap is required here (the fake Kubernetes containers)")
        pytest.skip("bubblewrap not installed (scripts/test.sh installs it)")
    fake = FakeKubernetes().start()
    yield fake
    fake.stop()


@pytest.fixture
def make_runtime(fake_k8s, tmp_path):
    def make(**traits) -> KubernetesRuntime:  # each test shuts its runtimes down
        traits = {"namespace": "agents", "manager_id": "m1", **traits}
        return KubernetesRuntime(kubeconfig=str(fake_k8s.kubeconfig(tmp_path)), **traits)

    return make


def record(name: str = "worker", **fields) -> AgentRecord:
    import uuid

    return AgentRecord(id=fields.pop("id", str(uuid.uuid4())), name=name, provider="shell",
                       runtime="kubernetes", password_hash="", created_at="", updated_at="",
                       **fields)


async def test_agent_pod_is_a_locked_down_typed_object_with_a_deny_all_policy(
        make_runtime, fake_k8s):
    runtime, agent = make_runtime(), record(HOSTILE_NAME)
    try:
        await runtime.start(agent)
        order = [(m, p.rsplit("/", 1)[-1]) for m, p, _ in fake_k8s.requests if m == "POST"]
        assert order[-2:] == [("POST", "networkpolicies"), ("POST", "pods")]  # policy first
        pod = fake_k8s.sent("POST", "pods")[-1]
        meta, spec = pod["metadata"], pod["spec"]
        assert meta["name"] == f"agenstra-{agent.id}"
        assert meta["labels"] == {"app.kubernetes.io/managed-by": "agenstra",
                                  MANAGER_LABEL: "m1", AGENT_LABEL: agent.id}
        # The hostile name is data in one annotation, byte for byte, and nowhere else.
        assert meta["annotations"] == {NAME_ANNOTATION: HOSTILE_NAME}
        assert json.dumps(pod).count(json.dumps(HOSTILE_NAME)[1:-1]) == 1
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = spec["containers"]
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "privileged": False, "readOnlyRootFilesystem": True, "runAsGroup": 1000,
            "runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
        assert set(container["resources"]["limits"]) == {"cpu", "memory", "ephemeral-storage"}
        assert container["command"] == ["sleep", "2147483647"]
        assert {v["name"]: sorted(v) for v in spec["volumes"]} == {
            "own": ["emptyDir", "name"], "tmp": ["emptyDir", "name"]}  # no hostPath, ever
        policy = fake_k8s.sent("POST", "networkpolicies")[-1]["spec"]
        assert policy == {"podSelector": {"matchLabels": meta["labels"]},
                          "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}
    finally:
        await runtime.remove(agent)
        await runtime.shutdown()
    assert f"agenstra-{agent.id}" not in fake_k8s.objects["pods"]
    assert f"agenstra-{agent.id}" not in fake_k8s.objects["networkpolicies"]


async def test_ids_that_are_no_label_values_are_refused_before_any_request(
        make_runtime, fake_k8s):
    runtime = make_runtime()
    before = len(fake_k8s.requests)
    for bad in ("a b", "x\ny", "../../etc", "-x", "a" * 64):
        with pytest.raises(RuntimeFailure):
            await runtime.start(record(id=bad))
    assert len(fake_k8s.requests) == before
    evil = make_runtime(manager_id="m1,evil=1")
    with pytest.raises(RuntimeFailure):
        await evil.start(record())
    assert len(fake_k8s.requests) == before
    await runtime.shutdown()
    await evil.shutdown()


async def test_commands_run_through_exec_with_stdin_exit_codes_and_env_as_data(
        make_runtime, fake_k8s):
    runtime, agent = make_runtime(), record()
    try:
        result = await runtime.exec(agent, ["sh", "-c", "pwd; echo oops >&2; exit 3"])
        assert (result.exit_code, result.stdout, result.stderr) == (3, "/workspace\n", "oops\n")
        echoed = await runtime.exec(agent, ["cat"], stdin=b"line one\nline two")
        assert (echoed.exit_code, echoed.stdout) == (0, "line one\nline two")  # stdin closed
        hostile = "$(touch /tmp/pwned)`touch /tmp/pwned2`'\"; touch /tmp/pwned3 \\"
        env = await runtime.exec(agent, ["sh", "-c", 'printf %s "$SECRET"; ls /tmp'],
                                 env={"SECRET": hostile})
        assert env.stdout == hostile  # exported as data, never evaluated (/tmp is empty)
        await runtime.write_file(agent, "notes/a.txt", "hello\n")
        home = await runtime.write_private_file(agent, ".config/key", "s3cret")
        assert home == "/workspace/.config/key"
        check = await runtime.exec(agent, ["sh", "-c", "cat notes/a.txt; stat -c %a "
                                           ".config/key; cat .config/key"])
        assert check.stdout == "hello\n600\ns3cret"
        # The environment never travels in the command line (it lands in audit logs).
        execs = [p for _, p, _ in fake_k8s.requests if "/exec?" in p]
        assert execs and not any("pwned" in unquote_plus(p) for p in execs)
        for bad in ({"A B": "1"}, {"OK": "two\nlines"}, {"X=Y": "1"}):
            with pytest.raises(RuntimeFailure):
                environment_header(bad)
    finally:
        await runtime.remove(agent)
        await runtime.shutdown()


async def test_a_timed_out_command_is_killed_in_the_container(make_runtime, fake_k8s):
    runtime, agent = make_runtime(), record()
    try:
        await runtime.start(agent)
        running = fake_k8s.running_commands()
        result = await runtime.exec(agent, ["sh", "-c", "sleep 60 & sleep 60"], timeout=0.5)
        assert result.timed_out
        # Closing the websocket alone would leave both sleeps running (as on a cluster):
        # the second exec killed the session; the fake's command then ends by itself.
        for _ in range(100):
            if fake_k8s.running_commands() == running:
                break
            await asyncio.sleep(0.05)
        assert fake_k8s.running_commands() == running
    finally:
        await runtime.remove(agent)
        await runtime.shutdown()


async def test_a_restarted_manager_finds_the_pod_by_its_labels(make_runtime, fake_k8s):
    first, agent = make_runtime(), record()
    await first.exec(agent, ["true"])
    created = len(fake_k8s.sent("POST", "pods"))
    await first.shutdown()
    second = make_runtime()
    try:
        assert (await second.exec(agent, ["echo", "again"])).stdout == "again\n"
        assert len(fake_k8s.sent("POST", "pods")) == created  # not made again
        await second.stop(agent)
        assert await second.find(agent) is None
        assert f"agenstra-{agent.id}" in fake_k8s.objects["networkpolicies"]  # kept
    finally:
        await second.remove(agent)
        await second.shutdown()


async def test_egress_policy_and_config_validation(make_runtime, fake_k8s):
    runtime = make_runtime()
    agent = record(config={"network": "egress", "egressCidrs": ["10.20.0.7"]})
    try:
        await runtime.start(agent)
        egress = fake_k8s.sent("POST", "networkpolicies")[-1]["spec"]["egress"]
        public, dns, extra = egress
        assert public["to"][0]["ipBlock"]["cidr"] == "0.0.0.0/0"
        assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(
            public["to"][0]["ipBlock"]["except"])
        assert dns["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
        assert extra == {"to": [{"ipBlock": {"cidr": "10.20.0.7/32"}}]}
        # Changed config: the policy there from before is replaced, not kept.
        await runtime.stop(agent)
        agent.config = {"network": "none"}
        await runtime.start(agent)
        assert fake_k8s.sent("PUT", f"networkpolicies/agenstra-{agent.id}")[-1]["spec"][
            "egress"] == []
    finally:
        await runtime.remove(agent)
        await runtime.shutdown()
    for bad in ({"network": "host"}, {"loopbackPorts": [11434]}, {"egressCidrs": ["nope"]},
                {"egressCidrs": "10.0.0.0/8"}, {"egressCidrs": ["1.2.3.4"] * 17}):
        with pytest.raises(ValueError):
            KubernetesRuntime.validate_config(bad)


async def test_a_project_is_the_users_claim_with_a_checked_subpath(
        make_runtime, fake_k8s, tmp_path):
    home = tmp_path / "home"
    project = home / "analysis"
    (project / ".git").mkdir(parents=True)
    os.chown(project, 1000, 100)
    runtime = make_runtime(project_claims={str(home): "claim-alice"})
    fake_k8s.add("persistentvolumeclaims", {
        "metadata": {"name": "claim-alice"}, "spec": {"accessModes": ["ReadWriteOnce"]},
        "status": {"phase": "Bound"}})
    fake_k8s.add("pods", {  # the user's server, which mounts the claim now
        "metadata": {"name": "jupyter-alice", "labels": {}},
        "spec": {"nodeName": "node-7", "containers": [{"name": "notebook", "image": "x"}],
                 "volumes": [{"name": "home", "persistentVolumeClaim": {
                     "claimName": "claim-alice"}}]},
        "status": {"phase": "Running"}})
    agent = record(project=str(project))
    try:
        await runtime.start(agent)
        spec = fake_k8s.sent("POST", "pods")[-1]["spec"]
        (container,) = spec["containers"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/workspace"] == {"mountPath": "/workspace", "name": "project",
                                        "subPath": "analysis"}
        assert mounts["/workspace/.git"]["readOnly"] is True
        assert mounts["/home/agenstra"]["name"] == "own"
        assert container["securityContext"]["runAsUser"] == 1000
        assert container["securityContext"]["runAsGroup"] == 100
        assert "fsGroup" not in spec["securityContext"]  # the user's files keep their group
        term = spec["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
        assert term["matchFields"] == [{"key": "metadata.name", "operator": "In",
                                        "values": ["node-7"]}]
    finally:
        await runtime.remove(agent)
        await runtime.shutdown()
    with pytest.raises(ValueError, match="no volume"):
        runtime.validate_project(tmp_path / "elsewhere")
    for escaping in (home, home / ".." / "home2", home / "analysis" / ".." / ".."):
        with pytest.raises(ValueError, match="not a folder inside"):
            runtime.validate_project(escaping)
    os.chown(project, 0, 0)
    with pytest.raises(ValueError, match="root"):
        runtime.validate_project(project)


async def test_available_is_cheap_and_false_without_a_cluster(make_runtime, tmp_path,
                                                              monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    runtime = make_runtime()
    assert await runtime.available() is True
    await runtime.shutdown()
    missing = KubernetesRuntime(kubeconfig=str(tmp_path / "none"))
    assert await asyncio.wait_for(missing.available(), 0.5) is False
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    assert await asyncio.wait_for(KubernetesRuntime().available(), 0.5) is False


async def test_a_cluster_without_the_v5_exec_protocol_is_named(make_runtime, fake_k8s):
    runtime, agent = make_runtime(), record()
    fake_k8s.exec_protocols = ["v4.channel.k8s.io"]
    try:
        with pytest.raises(RuntimeFailure, match=r"1\.30"):
            await runtime.exec(agent, ["true"])
    finally:
        fake_k8s.exec_protocols = ["v5.channel.k8s.io"]
        await runtime.remove(agent)
        await runtime.shutdown()


def test_traits_name_their_environment_variables():
    for name, trait in KubernetesRuntime.class_own_traits(config=True).items():
        variable = trait.metadata.get("env")
        assert variable and variable.startswith("AGENSTRA_K8S_"), name
        assert variable in trait.help, name
    assert Path(__file__).parents[1].joinpath("docs/deploy/kubernetes.md").is_file()
