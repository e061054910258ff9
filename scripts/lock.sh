#!/usr/bin/env bash
# Refreshes requirements/test.txt: the exact versions (with their hashes) that the test
# environment installs, so that a release elsewhere never changes what CI runs until a
# maintainer runs this and commits the result. The package's own dependency ranges in
# pyproject.toml stay ranges; only the test environment is pinned.
#
#   bash scripts/lock.sh            # newest versions the ranges allow
#   bash scripts/lock.sh redis      # only move redis (and what it needs)
#
# It resolves for CPython 3.11 (the oldest Python we support) in a throwaway virtual
# environment with a pinned pip-tools, then prints which pins changed.
set -euo pipefail
cd "$(dirname "$0")/.."

lock=requirements/test.txt
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check pip-tools==7.7.0

upgrade=(--upgrade)
if [ $# -gt 0 ]; then
    upgrade=()
    for package in "$@"; do upgrade+=(--upgrade-package "$package"); done
fi

cp "$lock" "$work/before.txt" 2>/dev/null || : > "$work/before.txt"
"$work/venv/bin/pip-compile" -q "${upgrade[@]}" --generate-hashes --allow-unsafe \
    --strip-extras --no-emit-index-url --no-emit-find-links --extra test --extra client \
    --output-file "$lock" pyproject.toml

pins() { grep -E '^[A-Za-z0-9_.-]+==' "$1" | sed 's/ .*//' | sort; }
changes=$(diff <(pins "$work/before.txt") <(pins "$lock") | grep -E '^[<>]' || true)
if [ -z "$changes" ]; then
    echo "no pin changed"
else
    echo "pins changed (< before, > now):"
    echo "$changes"
fi
