from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import ManagerProcess

pytest_plugins = ["pytest_jupyter.jupyter_server"]

TEST_IMAGE = "agenstra-test-busybox:latest"


@pytest.fixture
def start_manager(tmp_path: Path) -> Iterator:
    """Start real `agenstra-manager` processes; all are stopped after the test."""
    started: list[ManagerProcess] = []

    def start(name: str = "m", **kwargs) -> ManagerProcess:
        kwargs.setdefault("api_key", secrets.token_urlsafe(24))
        manager = ManagerProcess(data_dir=tmp_path / name, **kwargs).start()
        started.append(manager)
        return manager

    yield start
    for manager in started:
        if manager.process and manager.process.poll() is None:
            manager.kill()


@pytest.fixture
def manager(start_manager) -> ManagerProcess:
    return start_manager()


def _docker_reason() -> str | None:
    if not shutil.which("docker"):
        return "the docker CLI is not installed (scripts/test.sh installs docker.io)"
    probe = subprocess.run(["docker", "version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"no Docker daemon answers at DOCKER_HOST={os.environ.get('DOCKER_HOST', '')!r}"
    image = subprocess.run(["docker", "image", "inspect", TEST_IMAGE], capture_output=True)
    if image.returncode != 0:
        return f"the test image {TEST_IMAGE} is missing (scripts/make-test-image.sh builds it)"
    return None


@pytest.fixture(scope="session")
def docker_available() -> None:
    reason = _docker_reason()
    if reason is None:
        return
    if os.environ.get("AGENSTRA_REQUIRE_DOCKER") == "1":
        pytest.fail(f"Docker is required here but unusable: {reason}")
    pytest.skip(f"Docker tests need a daemon: {reason}")
