#!/usr/bin/env bash
# Install agenstra-jupyter and start JupyterLab with it. Agents run in a bubblewrap sandbox
# with slirp4netns for their network: where those are missing this installs them when it can
# (as root, or with sudo that needs no password); otherwise agents say what to install.
# Extra arguments go to `jupyter lab`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v slirp4netns >/dev/null || missing+=(slirp4netns)
command -v ip >/dev/null || missing+=(iproute2)
if ((${#missing[@]})) && command -v apt-get >/dev/null; then
  as_root=()
  if [[ $(id -u) != 0 ]]; then
    if sudo -n true 2>/dev/null; then as_root=(sudo -n); else as_root=(none); fi
  fi
  if [[ ${as_root[0]-} == none ]]; then
    echo "Agents need ${missing[*]}: install them with: sudo apt-get install ${missing[*]}" >&2
  else
    echo "Installing ${missing[*]} (the agents' sandbox)"
    "${as_root[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

python -m pip install -q --disable-pip-version-check -e .
root_flag=()
[[ $(id -u) == 0 ]] && root_flag=(--allow-root)
exec jupyter lab "${root_flag[@]}" "$@"
