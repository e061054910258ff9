#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine, then runs all of it:
# ruff, mypy and pytest. Debian packages come from apt-get only when missing; the Python
# side lives in a virtual environment built from scratch on every run (.venv-test, or
# $TAXI_TEST_VENV), so the result never depends on what the machine already holds.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The operators' page is tested in Debian's headless Chromium, driven by Playwright (a
# Python package from the test extra); Playwright never downloads a browser of its own.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# The TypeScript client (clients/js) builds and tests with Debian's Node.js and npm.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} with apt-get"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The suite's shared Redis on 127.0.0.1:6379; tests that stop Redis start their own.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 50); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

venv="${TAXI_TEST_VENV:-.venv-test}"
echo "building the test environment in $venv"
rm -rf "$venv"
python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
pip_install() { python -m pip install -q --disable-pip-version-check "$@"; }
# Exact versions, checked by hash (requirements/test.txt; `bash scripts/lock.sh` refreshes
# it): a release elsewhere never changes what CI runs. The venv's own pip does this, as it
# comes with the machine's Python: upgrading it would be one more thing left to chance.
pip_install --require-hashes -r requirements/test.txt
# Then the project and the example plugin, editable, from what is already installed: no
# resolution, no download, no build environment of their own.
pip_install --no-deps --no-build-isolation -e . -e ./examples/taxi-plugin-sos
python -m pip check --disable-pip-version-check

python -m ruff check taxi_tornado tests bench examples
python -m mypy
# The TypeScript client: exact versions from its lock file (npm ci), then its build, type
# check and tests against a real server run with this environment's Python.
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error && TAXI_PYTHON=python npm test)
# The slowest tests are named at the end, to keep the suite well under ten minutes.
python -m pytest -q -p no:cacheprovider --durations=15 "$@"
