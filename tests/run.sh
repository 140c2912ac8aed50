#!/usr/bin/env bash
# README's test command: installs everything the suite needs, then runs the whole suite.
# What the tests need is checked as a capability (does the tool do what the tests ask of it), not as "the
# package is installed": swaks installed without libnet-ssleay-perl (only Recommended) cannot do TLS.
#   swaks                    a real SMTP client                          (Debian swaks)
#   Perl Net::SSLeay         swaks's STARTTLS and implicit TLS           (libnet-ssleay-perl)
#   postfix, sendmail        a real smarthost client                     (postfix)
#   Cyrus SASL PLAIN/LOGIN   Postfix's AUTH as a client                  (libsasl2-modules)
#   opendkim-testmsg         an independent DKIM verifier                (opendkim-tools)
#   chromium                 a real browser for the web panel's tests    (chromium; driven headless by Playwright
#                            for Python with its executable_path: tests/e2e/test_panel.py; nothing downloaded)
#   initdb, pg_ctl, psql     a private PostgreSQL server for the session (postgresql; tests/support/postgres.py),
#                            run as the unprivileged system user mtadtest when the tests run as root
#   spamd                    a real SpamAssassin for spam filtering (spamassassin, spamd; tests/support/spamd.py),
#                            local rules only, run as mtadtest when the tests run as root
# Exim and Sendmail, which conflict with postfix, are unpacked privately by tests/support/install_test_mtas.sh.
# Python packages: the project with its [test] extra, in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
SASL_DIR="/usr/lib/$(uname -m)-linux-gnu/sasl2"
missing=""
need() {  # need PACKAGE CHECK: PACKAGE is missing unless the shell command CHECK succeeds
  bash -c "$2" >/dev/null 2>&1 || missing="$missing $1"
}
need swaks "command -v swaks"
need libnet-ssleay-perl "perl -MNet::SSLeay -e1"
need postfix "test -x /usr/sbin/postfix && test -x /usr/sbin/sendmail"
need libsasl2-modules "test -e $SASL_DIR/libplain.so -o -e $SASL_DIR/libplain.so.2"
need opendkim-tools "command -v opendkim-testmsg || test -x /usr/sbin/opendkim-testmsg"
need chromium "command -v chromium"
need postgresql "ls /usr/lib/postgresql/*/bin/initdb /usr/lib/postgresql/*/bin/pg_ctl || (command -v initdb && command -v pg_ctl)"
need "spamassassin spamd" "command -v spamd || test -x /usr/sbin/spamd"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
  id -u mtadtest >/dev/null 2>&1 \
    || useradd --system --no-create-home --shell /usr/sbin/nologin mtadtest  # PostgreSQL refuses to run as root
  bash tests/support/install_test_mtas.sh \
    || echo "tests/run.sh: Exim/Sendmail could not be unpacked; their smarthost tests will skip" >&2
elif [ -n "$missing" ]; then
  echo "tests/run.sh: not root with apt-get, so not installing:$missing; the tests that need them will skip" >&2
fi
# Python's bytecode cache, whatever the caller's environment says: with PYTHONDONTWRITEBYTECODE set, every daemon a
# test starts (hundreds) compiled mtad from source again, and every pytest process re-rewrote its plugins' asserts
# (about a quarter of an end-to-end module's CPU time). __pycache__/ is in .gitignore.
unset PYTHONDONTWRITEBYTECODE
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
if command -v npm >/dev/null 2>&1; then  # mailgun.js 14 for tests/e2e/test_api_mailgun_js.py, in a private folder
  npm install --prefix tests/.node --no-audit --no-fund --loglevel=error mailgun.js@14 >/dev/null \
    || echo "tests/run.sh: mailgun.js could not be installed; its test will skip" >&2
fi
.venv/bin/lint-imports --no-cache  # the layer contracts in pyproject.toml: a wrong import fails the run
# PostgreSQL servers left by an earlier run killed with its watchdogs (kill -9 of everything): stopped, folders
# removed; servers of runs still alive are left alone (tests/support/pg_watchdog.py)
.venv/bin/python tests/support/pg_watchdog.py reap || true
# The whole suite, one pytest run: --dist loadfile, so a module's tests run on one worker and its module-scoped
# daemons (clusters, Postfix, the browser) start once, not once per worker; tests/support/xdist_plan.py sends the
# slowest modules first and cuts the API fuzzing module's 175 operations into two halves.
# One worker more than the cores (2 cores: 3 workers, at most 8; MTAD_TEST_WORKERS overrides): about a third of
# a worker's time is waiting (leases running out, daemons starting and stopping, paced sends), which a third
# worker fills: measured on 2 cores, the whole run took 8 min 36 s with 2 workers and 8 min 0 s with 3.
# With paths given: one run, default scheduling.
# -rs: every skip and its reason in the summary.
cores=$(nproc 2>/dev/null || echo 2)
workers=${MTAD_TEST_WORKERS:-$(( cores + 1 > 8 ? 8 : cores + 1 ))}
for arg in "$@"; do
  case $arg in -*) ;; *) exec .venv/bin/python -m pytest -n "$workers" -rs "$@" ;; esac
done
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile -rs "$@"
