#!/usr/bin/env bash
# Rebuild the JupyterLab extension after a change to labextension/ and put it where
# JupyterLab loads it (an editable install copies it there only when pip runs).
set -euo pipefail
cd "$(dirname "$0")/../labextension"
npm run --silent build:lib
npm run --silent build:labextension >/dev/null
target="$(python -c 'import sys; print(sys.prefix)')/share/jupyter/labextensions/@agenstra/jupyterlab"
rm -rf "$target.new"
cp -r ../agenstra_jupyter/labextension "$target.new"
cp install.json "$target.new/"
rm -rf "$target"
mv "$target.new" "$target"
echo "installed at $target"
