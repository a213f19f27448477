#!/usr/bin/env bash
# Import a tiny busybox image (no registry here) as agenstra-test-busybox:latest.
# /workspace and /tmp are writable by uid 1000, the agents' default user.
set -euo pipefail
tag=${1:-agenstra-test-busybox:latest}
if docker image inspect "$tag" >/dev/null 2>&1; then exit 0; fi
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{bin,etc,tmp,workspace,proc,sys,dev}
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $("$rootfs/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
echo 'agent:x:1000:1000:agent:/workspace:/bin/sh' >>"$rootfs/etc/passwd"
printf 'root:x:0:\nagent:x:1000:\n' >"$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"
chown 1000:1000 "$rootfs/workspace"
tar -C "$rootfs" -c . | docker import -c 'ENV PATH=/bin' -c 'WORKDIR /workspace' - "$tag" >/dev/null
echo "$tag"
