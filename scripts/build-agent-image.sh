#!/usr/bin/env bash
# Build agenstra-agent:latest (docker/agent.Dockerfile). Where no registry serves
# debian:bookworm-slim (as on these machines), the base is made from Debian packages with
# debootstrap and imported first. Extra arguments go to `docker build` (e.g. --build-arg CLIS=...).
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${AGENSTRA_AGENT_IMAGE:-agenstra-agent:latest}
base=debian:bookworm-slim
if ! docker image inspect "$base" >/dev/null 2>&1 && ! docker pull -q "$base" >/dev/null 2>&1; then
  base=agenstra-agent-base:bookworm
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || {
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
    rootfs=$(mktemp -d /var/tmp/agenstra-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    echo "Building the $base base image from Debian packages (a minute or two)"
    # npm's many dependencies defeat debootstrap's resolver: the Dockerfile adds it with apt.
    debootstrap --variant=minbase --include=python3,nodejs,ca-certificates,procps \
      bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' - "$base" >/dev/null
  fi
fi
docker build --network host -q -f docker/agent.Dockerfile --build-arg BASE="$base" \
  -t "$tag" "$@" docker >/dev/null
echo "$tag"
