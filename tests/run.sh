#!/usr/bin/env bash
# README's test command: installs everything the suite needs, then runs the whole suite.
# System packages (Debian): postfix (a real smarthost client and smtp-sink), swaks (a real SMTP client),
# opendkim-tools (an independent DKIM verifier); Exim and Sendmail, which conflict with postfix, are unpacked
# privately by tests/support/install_test_mtas.sh. Python packages: the project with its [test] extra, in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=""
  for pkg in postfix swaks opendkim-tools; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
  done
  if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
  bash tests/support/install_test_mtas.sh \
    || echo "tests/run.sh: Exim/Sendmail could not be unpacked; their smarthost tests will skip" >&2
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
if command -v npm >/dev/null 2>&1; then  # mailgun.js 14 for tests/e2e/test_api_mailgun_js.py, in a private folder
  npm install --prefix tests/.node --no-audit --no-fund --loglevel=error mailgun.js@14 >/dev/null \
    || echo "tests/run.sh: mailgun.js could not be installed; its test will skip" >&2
fi
.venv/bin/lint-imports --no-cache  # the layer contracts in pyproject.toml: a wrong import fails the run
exec .venv/bin/python -m pytest -n 2 -rs "$@"  # -rs: every skip and its reason in the summary
