#!/bin/bash
# bench/drain.sh -- outbound drain rate: a full queue emptied into smtp-sink, mtad (DKIM off, DKIM on) beside
# Postfix relaying the same number of messages to the same smtp-sink, in ONE run on this machine; prints a
# markdown table of msgs/s, server and sink CPU, and the ratios mtad/Postfix (issue 3, "Benchmark").
#
#   bash bench/drain.sh [--msgs 5000] [--size 1024] [--rounds 3] [--dkim off,rsa] [--out DIR]
#                       [--servers postfix,postfix-dkim,mtad] [--profile] [--mtad-src DIR] [--base-src DIR | --base-rev REV] [--keep] [--pg]
#                       [--pg-nodes N]
#   --dkim LIST     mtad variants, any of off, rsa (RSA-2048), ed25519, both (RSA-2048 + Ed25519 at once); a
#                   suffix /wN sets delivery.dkim_workers (rsa/w0: sign in mtad's process, rsa/w2: two workers)
#   --profile       also sample each mtad with py-spy during its last round (raw stacks OUT/mtad-dkim-V.txt and
#                   a bench/pyspy_top.py ranking OUT/mtad-dkim-V.top.txt); installs py-spy with pip when missing
#   --mtad-src DIR  measure the mtad package found in DIR (a folder holding mtad/) instead of this work tree
#   --base-src DIR  also measure the mtad in DIR in the same rounds (labels base-mtad-...; variants without /wN),
#                   e.g. a `git archive HEAD | tar -x -C /tmp/base` export, for a before/after in one run; the
#                   summary adds a before/after table: mtad/base-mtad per variant with the rounds' spread
#   --base-rev REV  the same with mtad as committed at REV (`git archive REV mtad` into the scratch folder)
#   --html          every message HTML with 10 links; with variants like rsa,rsa+track (click and open tracking
#                   on: tracking.defaults) the drain rate tracked vs untracked in one run (issue 13)
#   --pg            also mtad on PostgreSQL in the same rounds, one per DKIM variant (labels mtad-pg-dkim-...):
#                   a private PostgreSQL server (tests/support/postgres.py: initdb + pg_ctl as user mtadtest,
#                   loopback, fsync and synchronous_commit on), a database per variant; the summary adds the
#                   database server's CPU per message and its committed transactions per message; with
#                   --base-src/--base-rev the base tree runs on PostgreSQL too (base-mtad-pg-dkim-...);
#                   DRAIN_PG_STATEMENTS=1 loads pg_stat_statements into that server and adds the statements it ran
#                   per delivered message (db_statements_per_msg; each statement's calls and rows per message in
#                   OUT/LABEL-rN-statements.log); DB commits/msg leaves out the bench's own transactions (its polls)
#   --pg-nodes N    (implies --pg) also N mtad-pg nodes on one database per DKIM variant (labels mtad-pg-xN-dkim-...):
#                   the submission split among them, drained together; the summary adds each node's CPU per
#                   message it delivered and the database's CPU per message
#   --servers       postfix, postfix-dkim, mtad (SQLite); with --pg, a list naming none of them (e.g. --servers pg)
#                   measures only the PostgreSQL variants
#                   postfix-dkim: a second private Postfix that DKIM-signs what it relays with OpenDKIM (the milter
#                   Postfix users sign with) on the same RSA-2048 key, selector (rsa) and domain (sender.bench.test)
#                   as mtad's rsa variants, relaxed/relaxed, the same header fields; signing happens while the queue
#                   drains (an after-queue content filter re-injecting through an smtpd with the milter:
#                   bench/postfix/setup_postfix.sh), as mtad signs at delivery. Before the rounds one message is
#                   relayed to a capturing sink and its signature verified with dkimpy (bench/postfix/dkim_check.py);
#                   the run stops if it is not signed. The summary adds mtad's ratio to postfix-dkim.
#
# How each server is measured (details in bench/drain.py's docstring): N messages of SIZE bytes, one
# recipient each, are queued while delivery is held back, then released; the clock runs until the queue is
# empty. The servers take turns round by round, so drift in the machine's speed affects them alike. Postfix: private instance (bench/postfix/setup_postfix.sh), hold queue filled by smtp-source,
# released by `postsuper -H ALL; postqueue -f`, relayhost = smtp-sink. mtad: `queue pause --domain`, 20
# authenticated submission sessions fill it, the pause is lifted; MX lookups go to a DNS server on
# 127.0.0.1 whose MX for bench.test points at smtp-sink. mtad's shaping file for the run: default policy
# max_connections 20 (= Postfix's default_destination_concurrency_limit), no rate limit, 1000 deliveries
# per connection; poll_interval 100 ms.
#
# INSTALLS WHAT IS MISSING (root, Debian): apt-get install postfix (smtp-source, smtp-sink; the package's own
# instance is preseeded "No configuration" and stays stopped); pip install -e <repo> if mtad's dependencies
# are missing; apt-get install opendkim for postfix-dkim (a private instance; the package's service unused);
# py-spy with --profile. Then re-executes itself in a private network namespace (unshare -n,
# loopback only): no benchmark traffic can leave 127.0.0.1.
# Bounded: every fill and every drain is given 240 s, the whole run 50 min. Default run (5000 x 1 KB, 3 rounds,
# off+rsa, postfix and postfix-dkim): about 3-5 minutes (postfix-dkim drains 5x slower than postfix).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PY=${PY:-python3}
MSGS=5000; SIZE=1024; ROUNDS=3; DKIM="off,rsa"; OUT=""; SERVERS="postfix,postfix-dkim,mtad"; PROFILE=0; MTAD_SRC=$REPO; KEEP=0
BASE_SRC=""; BASE_REV=""; PG=0; HTML=0; PG_NODES=0
ORIG_ARGS=("$@")
while [ $# -gt 0 ]; do
  case $1 in
    --msgs) MSGS=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --dkim) DKIM=$2; shift ;;
    --out) OUT=$2; shift ;;
    --servers) SERVERS=$2; shift ;;
    --profile) PROFILE=1 ;;
    --mtad-src) MTAD_SRC=$(cd "$2" && pwd); shift ;;
    --base-src) BASE_SRC=$(cd "$2" && pwd) || exit 2; shift ;;
    --base-rev) BASE_REV=$2; shift ;;
    --keep) KEEP=1 ;;
    --pg) PG=1 ;;
    --html) HTML=1 ;;
    --pg-nodes) PG=1; PG_NODES=$2; shift ;;
    -h|--help) sed -n '2,56p' "$0"; exit 0 ;;
    *) echo "drain.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
want() { case ",$SERVERS," in *",$1,"*) return 0;; *) return 1;; esac; }
if [ -n "$BASE_REV" ] && [ -n "$BASE_SRC" ]; then echo "drain.sh: --base-rev or --base-src, not both" >&2; exit 2; fi
if [ -n "$BASE_REV" ] && ! git -C "$REPO" rev-parse -q --verify "$BASE_REV^{commit}" >/dev/null; then
  echo "drain.sh: --base-rev $BASE_REV is not a commit of $REPO" >&2; exit 2
fi

# ---------------------------------------------------------------- phase 1: installs (outside the namespace)
if [ -z "${BENCH_NETNS:-}" ]; then
  [ "$(id -u)" = 0 ] || { echo "drain.sh: run as root (private Postfix instance, network namespace, apt)" >&2; exit 1; }
  if ! { command -v smtp-source && command -v smtp-sink && command -v postfix; } >/dev/null; then
    echo "== installing with apt: postfix"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections 2>/dev/null
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null \
      || { echo "drain.sh: apt-get install postfix failed" >&2; exit 1; }
  fi
  if want postfix-dkim && ! command -v opendkim >/dev/null; then
    echo "== installing with apt: opendkim (its system service is not used: a private instance runs per bench)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq opendkim >/dev/null; } \
      || { echo "drain.sh: apt-get install opendkim failed" >&2; exit 1; }
  fi
  if { want mtad || want postfix-dkim; } && ! "$PY" -c 'import aiosmtpd, aiosmtplib, dns, yaml, uvloop, cryptography' 2>/dev/null; then
    echo "== installing mtad (pip install -e $REPO)"
    "$PY" -m pip install -q -e "$REPO" || { echo "drain.sh: pip install failed" >&2; exit 1; }
  fi
  if [ $PROFILE = 1 ] && ! command -v py-spy >/dev/null; then
    "$PY" -m pip install -q py-spy || { echo "drain.sh: pip install py-spy failed" >&2; exit 1; }
  fi
  exec unshare -n env BENCH_NETNS=1 bash -c 'ip link set lo up && exec bash "$0" "$@"' "$0" "${ORIG_ARGS[@]}"
fi

# ---------------------------------------------------------------- phase 2: measure (inside the namespace)
WORK=$(mktemp -d /tmp/mtad-drain.XXXXXX)
chmod 755 "$WORK"   # Postfix's daemons (user postfix) must reach the queue inside it
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/drain.jsonl
: > "$RESULTS"
SINK=""; PF=""; PFD=""; DKIMD=""
cleanup() {
  [ -n "$PF" ] && postfix -c "$PF/etc" stop >/dev/null 2>&1
  [ -n "$PFD" ] && postfix -c "$PFD/etc" stop >/dev/null 2>&1
  [ -n "$DKIMD" ] && [ -s "$DKIMD/opendkim.pid" ] && kill "$(cat "$DKIMD/opendkim.pid")" 2>/dev/null
  [ -n "$SINK" ] && kill "$SINK" 2>/dev/null
  if [ $KEEP = 0 ]; then
    rm -rf "$WORK/postfix" "$WORK/postfix-dkim" "$WORK/opendkim" "$WORK/dkim-key" "$WORK"/*mtad-* "$WORK/base-src"
    [ "$OUT" != "$WORK/results" ] && rmdir "$WORK" 2>/dev/null
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
wait_port() {
  for _ in $(seq 150); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 not up" >&2; return 1
}
if [ -n "$BASE_REV" ]; then
  mkdir -p "$WORK/base-src"
  git -C "$REPO" archive "$BASE_REV" mtad | tar -x -C "$WORK/base-src" || { echo "cannot export mtad at $BASE_REV" >&2; exit 1; }
  BASE_SRC=$WORK/base-src
fi
MTAD_DESC="$MTAD_SRC"
[ "$MTAD_SRC" = "$REPO" ] && MTAD_DESC="work tree $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(
  git -C "$REPO" status --porcelain -- mtad 2>/dev/null | grep -q . && echo ' + uncommitted changes in mtad/')"
{
  echo "date: $(date -u +%FT%TZ)   host: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  echo "mtad: $MTAD_DESC   python: $("$PY" -c 'import sys; print(sys.version.split()[0])')   postfix: $(postconf -h mail_version 2>/dev/null)"
  echo "run: $MSGS msgs x $SIZE B, $ROUNDS rounds, mtad dkim variants: $DKIM   scratch: $WORK"
  [ -n "$BASE_SRC" ] && echo "base: ${BASE_REV:+revision $(git -C "$REPO" rev-parse --short "$BASE_REV") in }$BASE_SRC (labels base-mtad-...)"
} | tee "$OUT/env.txt"

ARGS=()
if want postfix-dkim; then  # before smtp-sink: the signature check captures on its port
  # one RSA-2048 key for OpenDKIM and mtad's rsa variants (drain.py --dkim-key): selector rsa, d=sender.bench.test
  mkdir -p "$WORK/dkim-key"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/dkim-key/rsa.pem" 2>/dev/null
  PFD=$WORK/postfix-dkim; DKIMD=$WORK/opendkim; mkdir -p "$PFD"
  if sh "$HERE/postfix/opendkim.sh" "$DKIMD" 2528 "$WORK/dkim-key/rsa.pem" rsa sender.bench.test \
       >"$OUT/opendkim-setup.log" 2>&1 \
     && sh "$HERE/postfix/setup_postfix.sh" "$PFD" 2526 2530 inet:127.0.0.1:2528 2527 >"$OUT/postfix-dkim-setup.log" 2>&1 \
     && wait_port 2526 && wait_port 2527; then
    "$PY" "$HERE/postfix/dkim_check.py" --postfix-dir "$PFD" --port 2526 --capture-port 2530 \
      --key "$WORK/dkim-key/rsa.pem" --selector rsa --domain sender.bench.test --size "$SIZE" 2>&1 | tee "$OUT/postfix-dkim-check.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "drain.sh: postfix-dkim does not sign: stopping (logs: $PFD/maillog," \
                                        "$DKIMD/opendkim.log)" >&2; exit 1; }
    ARGS+=(--postfix-dkim-dir "$PFD" --postfix-dkim-port 2526 --opendkim-pid "$(cat "$DKIMD/opendkim.pid")"
           --dkim-key "$WORK/dkim-key/rsa.pem")
  else
    echo "drain.sh: postfix-dkim did not start (see $OUT/opendkim-setup.log, $OUT/postfix-dkim-setup.log)" >&2; exit 1
  fi
fi

smtp-sink -u nobody 127.0.0.1:2530 1000 >/dev/null 2>&1 &
SINK=$!
wait_port 2530 || exit 1

ARGS+=(--sink-port 2530 --sink-pid "$SINK" --work "$WORK" --out "$RESULTS" --msgs "$MSGS" --size "$SIZE"
       --rounds "$ROUNDS" --mtad-src "$MTAD_SRC" --mtad "")
if want postfix; then
  PF=$WORK/postfix; mkdir -p "$PF"
  if sh "$HERE/postfix/setup_postfix.sh" "$PF" 2525 2530 >"$OUT/postfix-setup.log" 2>&1 && wait_port 2525; then
    ARGS+=(--postfix-dir "$PF" --postfix-port 2525)
  else
    echo "Postfix did not start (see $OUT/postfix-setup.log)" >&2; PF=""
  fi
fi
want mtad && ARGS+=(--mtad "$DKIM")
[ $PG = 1 ] && ARGS+=(--pg "$DKIM" --pg-nodes "$PG_NODES")
[ -n "$BASE_SRC" ] && ARGS+=(--base-src "$BASE_SRC")
[ $PROFILE = 1 ] && ARGS+=(--profile "$OUT")
[ $HTML = 1 ] && ARGS+=(--html)
echo "== $ROUNDS rounds, servers taking turns: ${PF:+postfix }${PFD:+postfix-dkim }$(want mtad && echo "mtad (DKIM $DKIM) ")$([ $PG = 1 ] && echo "mtad-pg (DKIM $DKIM)")"
timeout 3000 "$PY" "$HERE/drain.py" run "${ARGS[@]}" || echo "drain.py failed (logs: $WORK/*mtad-*/mtad.log)" >&2
for log in "$WORK"/*mtad-*/mtad.log; do
  [ -f "$log" ] && cp "$log" "$OUT/$(basename "$(dirname "$log")").log"
done
if [ $PROFILE = 1 ]; then
  for prof in "$OUT"/*mtad-*dkim-*.txt; do
    case $prof in *.top.txt) continue ;; esac
    "$PY" "$HERE/pyspy_top.py" "$prof" --top 30 > "${prof%.txt}.top.txt"
    echo "profile ranking: ${prof%.txt}.top.txt"
  done
fi

echo
"$PY" "$HERE/drain.py" summarize "$RESULTS" | tee "$OUT/summary.md"
echo
echo "results: $RESULTS   table: $OUT/summary.md"
