#!/usr/bin/env bash
# Start a private Docker daemon for the test suite (no systemd here) and print its
# DOCKER_HOST. Idempotent: reuses a daemon already answering on the socket.
set -euo pipefail
root=${AGENSTRA_DOCKERD_ROOT:-/var/tmp/agenstra-dockerd}
sock="$root/docker.sock"
export DOCKER_HOST="unix://$sock"
if docker version >/dev/null 2>&1; then echo "$DOCKER_HOST"; exit 0; fi
mkdir -p "$root"
nohup dockerd --data-root "$root/data" --exec-root "$root/exec" --pidfile "$root/dockerd.pid" \
  -H "$DOCKER_HOST" --iptables=false --ip6tables=false --bridge=none \
  >"$root/dockerd.log" 2>&1 &
for _ in $(seq 1 100); do
  if docker version >/dev/null 2>&1; then echo "$DOCKER_HOST"; exit 0; fi
  sleep 0.2
done
echo "dockerd did not start; see $root/dockerd.log" >&2
tail -20 "$root/dockerd.log" >&2
exit 1
