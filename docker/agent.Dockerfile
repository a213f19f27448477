# The agent image: Python, Node.js and npm, a non-root user (uid 1000) and /workspace.
# The Docker runtime uses agenstra-agent:latest by default when it exists.
#
#   docker build -f docker/agent.Dockerfile -t agenstra-agent:latest .
#   # with the agent CLIs you use:
#   docker build -f docker/agent.Dockerfile -t agenstra-agent:latest \
#       --build-arg CLIS="@anthropic-ai/claude-code @openai/codex @google/gemini-cli" .
#
# On a host without access to a container registry, scripts/build-agent-image.sh builds the
# same image from Debian packages (debootstrap) instead of the debian:bookworm-slim base.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
ARG CLIS=""
RUN set -eu; \
    if ! command -v npm >/dev/null || ! command -v python3 >/dev/null; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 python3-venv nodejs npm \
            ca-certificates procps; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    id -u agent >/dev/null 2>&1 || useradd --uid 1000 --create-home --shell /bin/bash agent; \
    mkdir -p /workspace && chown 1000:1000 /workspace; \
    if [ -n "$CLIS" ]; then npm install --global --no-audit --no-fund $CLIS; fi
ENV HOME=/workspace
USER 1000:1000
WORKDIR /workspace
