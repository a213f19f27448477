#!/usr/bin/env bash
# The whole test suite, on a fresh machine: install what the tests need (Debian packages,
# the package with its test extras), start a private dockerd, import the test image, lint,
# run pytest. Extra arguments go to pytest (e.g. `bash scripts/test.sh -k docker`).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v dockerd >/dev/null || packages+=(docker.io)
command -v bwrap >/dev/null || packages+=(bubblewrap)
dpkg -s busybox-static >/dev/null 2>&1 || packages+=(busybox-static)
if ((${#packages[@]})); then
  echo "Installing ${packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi

python -m pip install -q --disable-pip-version-check -e ".[test]"

DOCKER_HOST=$(scripts/start-dockerd.sh)
export DOCKER_HOST
scripts/make-test-image.sh >/dev/null
export AGENSTRA_REQUIRE_DOCKER=1  # here Docker tests must run, not skip

ruff check agenstra_jupyter tests
python -m pytest "$@"
