#!/usr/bin/env bash
# The whole test suite, on a fresh machine: install what the tests need (Debian packages,
# Node.js, the package with its test extras, which builds the JupyterLab extension), start a
# private dockerd, import the test images, lint, run the extension's unit tests, run pytest
# (browser tests in headless Chromium included). Extra arguments go to pytest
# (e.g. `bash scripts/test.sh -k docker`).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v dockerd >/dev/null || packages+=(docker.io)
command -v bwrap >/dev/null || packages+=(bubblewrap)
command -v slirp4netns >/dev/null || packages+=(slirp4netns)
command -v ip >/dev/null || packages+=(iproute2)
dpkg -s busybox-static >/dev/null 2>&1 || packages+=(busybox-static)
[[ -x /usr/bin/chromium ]] || packages+=(chromium)
command -v npm >/dev/null || packages+=(nodejs npm)
if ((${#packages[@]})); then
  echo "Installing ${packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi

# Builds the JupyterLab extension too (npm install + tsc + jupyter-builder).
python -m pip install -q --disable-pip-version-check -e ".[test]"

# The real agent CLIs the provider tests drive (against fake model APIs on 127.0.0.1).
cli_prefix=${AGENSTRA_CLI_PREFIX:-/var/tmp/agenstra-clis}
clis=(@anthropic-ai/claude-code@2.1.197 @openai/codex@0.169.0 @google/gemini-cli@0.61.0
      opencode-ai@1.18.33 @zed-industries/claude-agent-acp@0.23.1)
installed=$(cd "$cli_prefix" 2>/dev/null && npm ls --depth=0 2>/dev/null || true)
for cli in "${clis[@]}"; do
  if ! grep -q "${cli}" <<<"$installed"; then
    echo "Installing agent CLIs into $cli_prefix"
    mkdir -p "$cli_prefix"
    npm install --prefix "$cli_prefix" --no-audit --no-fund --loglevel=error "${clis[@]}"
    break
  fi
done
export AGENSTRA_TEST_CLI_BIN="$cli_prefix/node_modules/.bin"
export AGENSTRA_REQUIRE_CLIS=1

# JupyterHub's proxy, for the JupyterHub test (jupyterhub itself is a test extra).
hub_prefix=${AGENSTRA_HUB_PREFIX:-/var/tmp/agenstra-hub}
if [[ ! -x "$hub_prefix/node_modules/.bin/configurable-http-proxy" ]]; then
  mkdir -p "$hub_prefix"
  npm install --prefix "$hub_prefix" --no-audit --no-fund --loglevel=error \
    configurable-http-proxy@5
fi
export AGENSTRA_TEST_CHP="$hub_prefix/node_modules/.bin/configurable-http-proxy"
export AGENSTRA_REQUIRE_JUPYTERHUB=1

DOCKER_HOST=$(scripts/start-dockerd.sh)
export DOCKER_HOST
scripts/make-test-image.sh >/dev/null
scripts/build-agent-image.sh >/dev/null
export AGENSTRA_REQUIRE_DOCKER=1  # here Docker tests must run, not skip

export AGENSTRA_REQUIRE_BROWSER=1  # the sidebar's tests must run in Chromium, not skip
export AGENSTRA_REQUIRE_SANDBOX=1  # the isolation suite must run, not skip
export AGENSTRA_REQUIRE_PANDAS=1  # kernel context summaries of real DataFrames

ruff check agenstra_jupyter tests benchmarks
(cd labextension && npm install --no-audit --no-fund --loglevel=error \
  && npm run --silent typecheck && npm test --silent)
python -m pytest "$@"
