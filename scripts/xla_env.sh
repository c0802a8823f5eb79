#!/usr/bin/env bash
# Print the path of the torch-xla virtual environment, creating it first when missing.
#
# The venv lives outside the clone, under ${XDG_CACHE_HOME:-~/.cache}/smyrf-biggan/venv-xla-<hash of
# requirements/xla.txt>, so every later run (and every clone) reuses it, and changing the pins builds a new one.
# It is built in a temporary directory and renamed into place only after torch_xla imports, so an interrupted build
# never leaves a half-made venv at the final path; a lock keeps concurrent callers from downloading ~4 GB twice.
# Progress goes to stderr; stdout carries only the path. Use it as:  "$(scripts/xla_env.sh)/bin/python" -m pytest ...
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
req="$root/requirements/xla.txt"
key="$( (sha256sum "$req" 2>/dev/null || shasum -a 256 "$req") | cut -c1-16)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/smyrf-biggan"
venv="$cache/venv-xla-$key"

ready() { [ -x "$venv/bin/python" ] && [ -f "$venv/.ready" ]; }

if ! ready; then
  mkdir -p "$cache"
  exec 9>"$cache/.venv-xla.lock"
  command -v flock >/dev/null && flock 9
  if ! ready; then
    tmp="$(mktemp -d "$cache/.venv-xla-build.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    echo "xla_env: creating $venv from $req (~4 GB download, a few minutes)" >&2
    "${PYTHON:-python3}" -m venv --prompt "venv-xla-$key" "$tmp"
    "$tmp/bin/python" -m pip install --quiet --progress-bar off --upgrade pip >&2
    "$tmp/bin/python" -m pip install --quiet --progress-bar off -r "$req" >&2
    "$tmp/bin/python" -c "import torch, torch_xla, torchvision" >&2
    # venv scripts (pip, pytest, torchrun, activate) record their own path: point them at the final location.
    grep -rlI --null "$tmp" "$tmp/bin" | xargs -0 -r sed -i "s#$tmp#$venv#g"
    touch "$tmp/.ready"
    rm -rf "$venv"  # a leftover without .ready (from an older, interrupted layout)
    mv -T "$tmp" "$venv"
    trap - EXIT
  fi
fi
echo "$venv"
