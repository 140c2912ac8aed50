#!/bin/bash
# bench/ingress.sh -- mtad's SMTP ingress beside smtp-sink, Postfix (durable queue, hold) and Haraka
# (discard), all set up and started by this script, in ONE run on this machine; prints a markdown
# table of msgs/s, server CPU, peak RSS/PSS and the ratios mtad/Postfix, mtad/Haraka, mtad/smtp-sink.
# See bench/README.md for how to read it.
#
#   bash bench/ingress.sh [--quick] [--out DIR] [--servers sink,postfix,haraka,mtad]
#                         [--sizes 1024,102400] [--sessions 1,20,100] [--repeats N] [--target-s S] [--keep]
#                         [--mtad-rev REV] [--base-rev REV | --base-src DIR] [--sequential] [--pg]
#   default         the servers are started one after the other and stay up; within each size x sessions
#                   cell each repeat drives every server once, in rotating order, so drifts in the
#                   machine's speed (other work on a shared machine) hit all servers alike
#   --sequential    start, measure completely and stop one server after the other instead
#   --mtad-rev REV  measure mtad as committed at REV (`git archive REV mtad` into the scratch folder)
#                   instead of this work tree's mtad/ (e.g. to compare before/after a change)
#   --base-rev REV  also run mtad as committed at REV (`git archive REV mtad`), labelled base-mtad, on :2528,
#                   with the same config (in the schema both trees accept), driven in the same rotating
#                   order within each cell as the other servers: a before/after comparison in ONE run; the
#                   summary adds base-mtad and the ratio mtad/base-mtad per cell with the run-to-run spread
#   --base-src DIR  the same with the mtad package found in DIR (a folder holding mtad/)
#   --pg            also mtad on PostgreSQL, labelled mtad-pg (the same as --servers ...,mtad-pg): a private
#                   PostgreSQL server (tests/support/postgres.py: initdb + pg_ctl as user mtadtest, loopback,
#                   fsync and synchronous_commit on) with one database, and an mtad whose config is mtad's plus
#                   `store: {backend: postgresql, dsn: ...}`, on :2529 (API :2582), driven in the same rotation;
#                   the summary adds mtad-pg/Postfix, the database server's CPU per message (its process tree)
#                   and its committed transactions per accepted message (pg_stat_database.xact_commit delta)
#                   with --base-rev/--base-src also base-mtad-pg: the base tree on a second database of the
#                   same server (:2540, API :2590), in the same rotation: before/after on PostgreSQL in one run
#   --pg-nodes N    with N >= 2 also mtad-pg-xN: N mtad-pg nodes (node_id n1..nN, :2531.. API :2583..) on a second
#                   database of the same server, driven as one server in the same rotation (one smtp-source per
#                   node, messages and sessions split evenly); implies --pg. 1 vs N nodes in one run
#
# INSTALLS WHAT IS MISSING (needs root; Debian 12 / this project's machine kind):
#   * apt-get install postfix swaks  -- smtp-source, smtp-sink, postfix (the package's own instance is
#     preseeded "No configuration" and left stopped; this script runs a private instance in a tmp folder)
#   * apt-get install nodejs npm     -- only if `node` is missing
#   * npm install Haraka             -- into $MTAD_BENCH_HARAKA_DIR (default /tmp/mtad-bench-haraka)
#   * pip install -e <repo>          -- only if mtad's dependencies (aiosmtpd, yaml, uvloop) are missing
# Installs run first; then the script re-executes itself in a private network namespace
# (unshare -n, loopback only), so no benchmark traffic can leave 127.0.0.1.
#
# Bounded: every smtp-source run sends at most --max-msgs (12000) messages and is killed after 90 s;
# the whole measurement is killed after 60 minutes. Full run: about 10 minutes on an idle machine
# (up to ~20 when other work keeps the machine busy: each run first waits up to 10 s for quiet);
# --quick: about 3.
# Scratch data (Postfix queue, mtad's SQLite store, Haraka instance) lives in a mktemp folder under /tmp
# and is deleted at the end unless --keep; results (ingress.jsonl, summary.md, logs) stay in --out.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PY=${PY:-python3}
HARAKA_DIR=${MTAD_BENCH_HARAKA_DIR:-/tmp/mtad-bench-haraka}
HARAKA=$HARAKA_DIR/node_modules/Haraka/bin/haraka

# ---------------------------------------------------------------- arguments
QUICK=0; OUT=""; SERVERS="sink,postfix,haraka,mtad"; SIZES="1024,102400"; SESSIONS="1,20,100"
REPEATS=""; TARGET=""; KEEP=0; MTAD_REV=""; SEQUENTIAL=0; BASE_REV=""; BASE_SRC=""; PG=0; PG_NODES=1
ORIG_ARGS=("$@")
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --out) OUT=$2; shift ;;
    --servers) SERVERS=$2; shift ;;
    --sizes) SIZES=$2; shift ;;
    --sessions) SESSIONS=$2; shift ;;
    --repeats) REPEATS=$2; shift ;;
    --target-s) TARGET=$2; shift ;;
    --keep) KEEP=1 ;;
    --mtad-rev) MTAD_REV=$2; shift ;;
    --base-rev) BASE_REV=$2; shift ;;
    --base-src) BASE_SRC=$(cd "$2" && pwd) || exit 2; shift ;;
    --sequential) SEQUENTIAL=1 ;;
    --pg) PG=1 ;;
    --pg-nodes) PG=1; PG_NODES=$2; shift ;;
    -h|--help) sed -n '2,45p' "$0"; exit 0 ;;
    *) echo "ingress.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ $PG = 1 ] && SERVERS="$SERVERS,mtad-pg"
if [ $QUICK = 1 ]; then
  RUN_ARGS=(--repeats "${REPEATS:-1}" --target-s "${TARGET:-1.5}" --warmup 200 --min-msgs 200)
else
  RUN_ARGS=(--repeats "${REPEATS:-3}" --target-s "${TARGET:-3}" --warmup 300 --min-msgs 300)
fi
RUN_ARGS+=(--prewarm 3000 --quiet-wait 10 --max-msgs 12000 --run-timeout 90 --sizes "$SIZES" --sessions "$SESSIONS")
want() { case ",$SERVERS," in *",$1,"*) return 0;; *) return 1;; esac; }
if [ -n "$BASE_REV" ] && [ -n "$BASE_SRC" ]; then echo "ingress.sh: --base-rev or --base-src, not both" >&2; exit 2; fi
if [ -n "$BASE_REV$BASE_SRC" ] && ! want mtad; then echo "ingress.sh: --base-rev/--base-src need mtad in --servers" >&2; exit 2; fi
if [ -n "$BASE_REV" ] && ! git -C "$REPO" rev-parse -q --verify "$BASE_REV^{commit}" >/dev/null; then
  echo "ingress.sh: --base-rev $BASE_REV is not a commit of $REPO" >&2; exit 2
fi

# ---------------------------------------------------------------- phase 1: installs (outside the namespace)
if [ -z "${BENCH_NETNS:-}" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "ingress.sh: run as root (private Postfix instance, network namespace, apt)" >&2; exit 1
  fi
  APT=()
  command -v smtp-source >/dev/null && command -v smtp-sink >/dev/null && command -v postfix >/dev/null \
    || APT+=(postfix)
  command -v swaks >/dev/null || APT+=(swaks)
  if want haraka && ! command -v node >/dev/null; then APT+=(nodejs npm); fi
  if [ ${#APT[@]} -gt 0 ]; then
    echo "== installing with apt: ${APT[*]}"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections 2>/dev/null
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${APT[@]}" >/dev/null || {
      echo "ingress.sh: apt-get install ${APT[*]} failed" >&2; exit 1; }
  fi
  if want haraka && [ ! -f "$HARAKA" ]; then
    echo "== installing Haraka with npm into $HARAKA_DIR"
    mkdir -p "$HARAKA_DIR" && (cd "$HARAKA_DIR" && { [ -f package.json ] || npm init -y >/dev/null; } \
      && npm install --no-audit --no-fund Haraka >/dev/null 2>"$HARAKA_DIR/npm-install.log") || {
      echo "ingress.sh: npm install Haraka failed (see $HARAKA_DIR/npm-install.log)" >&2; exit 1; }
  fi
  if { want mtad || want mtad-pg; } && ! "$PY" -c 'import aiosmtpd, aiosqlite, yaml, uvloop, psycopg' 2>/dev/null; then
    echo "== installing mtad (pip install -e $REPO)"
    "$PY" -m pip install -q -e "$REPO" || { echo "ingress.sh: pip install failed" >&2; exit 1; }
  fi
  exec unshare -n env BENCH_NETNS=1 bash -c 'ip link set lo up && exec bash "$0" "$@"' "$0" "${ORIG_ARGS[@]}"
fi

# ---------------------------------------------------------------- phase 2: measure (inside the namespace)
WORK=$(mktemp -d /tmp/mtad-bench.XXXXXX)
chmod 755 "$WORK"   # Postfix's daemons (user postfix) must reach the queue inside it
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/ingress.jsonl
: > "$RESULTS"
PIDS=()
PF=""
cleanup() {
  [ -n "$PF" ] && postfix -c "$PF/etc" stop >/dev/null 2>&1
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  [ -d "$WORK/pg" ] && "$PY" "$HERE/pg_bench.py" stop "$WORK/pg"
  if [ $KEEP = 0 ]; then
    rm -rf "$WORK/postfix" "$WORK/haraka" "$WORK/mtad" "$WORK/mtad-src" "$WORK/base-mtad" "$WORK/base-src" "$WORK/servers.spec" "$WORK"/mtad-pg* "$WORK/pg"
    [ "$OUT" != "$WORK/results" ] && rmdir "$WORK" 2>/dev/null
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
wait_port() {
  for _ in $(seq 150); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 not up" >&2; return 1
}
stop_pid() {  # stop one server we started, by its PID
  kill "$1" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null
}
# which mtad: this work tree, or a committed revision exported read-only with git archive
MTAD_SRC=$REPO
MTAD_DESC="work tree $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
git -C "$REPO" status --porcelain -- mtad 2>/dev/null | grep -q . && MTAD_DESC="$MTAD_DESC + uncommitted changes in mtad/"
if want mtad && [ -n "$MTAD_REV" ]; then
  MTAD_SRC=$WORK/mtad-src; mkdir -p "$MTAD_SRC"
  git -C "$REPO" archive "$MTAD_REV" mtad | tar -x -C "$MTAD_SRC" || { echo "cannot export mtad at $MTAD_REV" >&2; exit 1; }
  MTAD_DESC="revision $(git -C "$REPO" rev-parse --short "$MTAD_REV")"
fi
# the base mtad of a before/after comparison (--base-rev / --base-src), measured beside it as base-mtad
BASE_DESC=""
if [ -n "$BASE_REV" ]; then
  BASE_SRC=$WORK/base-src; mkdir -p "$BASE_SRC"
  git -C "$REPO" archive "$BASE_REV" mtad | tar -x -C "$BASE_SRC" || { echo "cannot export mtad at $BASE_REV" >&2; exit 1; }
  BASE_DESC="revision $(git -C "$REPO" rev-parse --short "$BASE_REV")"
elif [ -n "$BASE_SRC" ]; then
  BASE_DESC="$BASE_SRC"
fi
# both mtads get the same config: only the blocks both trees accept (mtad_config.py --src, once per tree)
CONFIG_SRCS=(--src "$MTAD_SRC")
[ -n "$BASE_SRC" ] && CONFIG_SRCS+=(--src "$BASE_SRC")
RI=(timeout 3600 "$PY" "$HERE/run_ingress.py" --out "$RESULTS" "${RUN_ARGS[@]}")
SPEC=$WORK/servers.spec

{
  echo "date: $(date -u +%FT%TZ)   host: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo)   load: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "mtad: $MTAD_DESC   python: $("$PY" -c 'import sys; print(sys.version.split()[0])')"
  [ -n "$BASE_DESC" ] && echo "base-mtad: $BASE_DESC (before/after in one run: ratio mtad/base-mtad)"
  echo "postfix: $(postconf -h mail_version 2>/dev/null)   haraka: $(node -p "require('$HARAKA_DIR/node_modules/Haraka/package.json').version" 2>/dev/null || echo -)   node: $(node --version 2>/dev/null || echo -)"
  echo "run: ${RUN_ARGS[*]}   servers: $SERVERS   $([ $SEQUENTIAL = 1 ] && echo sequential || echo interleaved)   scratch: $WORK"
} | tee "$OUT/env.txt"

# Each start_X sets up and starts one server and appends its line to $SPEC
# (label|port|pid|pidfile|stored-cmd|between-cmd, read by run_ingress.py); stop_X stops it.
start_sink() {
  echo "== smtp-sink :2530 (the SMTP dialogue's practical limit here; stores nothing)"
  smtp-sink -u nobody 127.0.0.1:2530 1000 >/dev/null 2>&1 &
  SINK=$!; PIDS+=($SINK)
  wait_port 2530 && echo "sink|2530|$SINK|||" >>"$SPEC"
}
stop_sink() { stop_pid "$SINK"; }

start_postfix() {
  echo "== Postfix $(postconf -h mail_version) :2525 smtpd -> cleanup -> fsync'd queue file, on hold (nothing delivered)"
  PF=$WORK/postfix; rm -rf "$PF"; mkdir -p "$PF"
  if sh "$HERE/postfix/setup_postfix.sh" "$PF" 2525 2530 >"$OUT/postfix-setup.log" 2>&1 && wait_port 2525; then
    echo "postfix-hold|2525||$PF/spool/pid/master.pid|sh $HERE/postfix/queue_count.sh $PF|postsuper -c $PF/etc -d ALL hold >/dev/null 2>&1" >>"$SPEC"
  else
    echo "Postfix did not start (see $OUT/postfix-setup.log)" >&2
  fi
}
stop_postfix() { postfix -c "$PF/etc" stop >/dev/null 2>&1; PF=""; sleep 1; }

start_haraka() {
  HD=$WORK/haraka
  echo "== Haraka $(node -p "require('$HARAKA_DIR/node_modules/Haraka/package.json').version" 2>/dev/null) :2526 discard (${HARAKA_NODES:-one} node process; nothing stored)"
  if sh "$HERE/haraka/setup_haraka.sh" "$HARAKA" "$HD" 2526 ${HARAKA_NODES:-} >"$OUT/haraka-setup.log" 2>&1; then
    YES_REALLY_DO_DISCARD=1 node "$HARAKA" -c "$HD" >"$OUT/haraka.log" 2>&1 &
    H=$!; PIDS+=($H)
    wait_port 2526 && echo "haraka-discard|2526|$H|||" >>"$SPEC"
  else
    echo "Haraka setup failed (see $OUT/haraka-setup.log)" >&2
  fi
}
stop_haraka() { stop_pid "$H"; }

# start_mtad_tree LABEL SRC DESC SMTP-PORT API-PORT: one mtad from the package in SRC, in $WORK/LABEL, logs
# in $OUT/LABEL.log; sets MPID (empty when it did not start)
start_mtad_tree() {
  local label=$1 src=$2 desc=$3 port=$4 api=$5
  MPID=""
  if ! (cd / && PYTHONPATH=$src "$PY" -c 'import mtad.app' >"$OUT/$label-import.log" 2>&1); then
    echo "== $label SKIPPED: its code does not import ($desc):" >&2; tail -3 "$OUT/$label-import.log" >&2
    echo "   (another change in progress? measure a commit with --mtad-rev REV)" >&2
    return
  fi
  local md=$WORK/$label; mkdir -p "$md"
  local db=$md/state/mtad.sqlite3
  # one MX listener, tls none, example.net received, a catch_all() stop() route where routes exist
  if ! (cd "$md" && PYTHONPATH=$src "$PY" "$HERE/mtad_config.py" "$md/mtad.yaml" "$md/state" "$port" \
        ${api:+--api-port "$api"} ${STORE_DSN:+--store-dsn "$STORE_DSN"} ${NODE_ID:+--node-id "$NODE_ID"} \
        "${CONFIG_SRCS[@]}"); then
    echo "== $label SKIPPED: no valid bench config for this revision" >&2
    return
  fi
  cp "$md/mtad.yaml" "$OUT/$label.yaml"
  echo "== $label ($desc) :$port, $OUT/$label.yaml: MX listener, tls none, ${STORE_DSN:+PostgreSQL (fsync, synchronous_commit on) instead of }SQLite WAL synchronous=FULL, group commit"
  (cd "$md" && PYTHONPATH=$src exec "$PY" -m mtad run --config "$md/mtad.yaml" >"$OUT/$label.log" 2>&1) &
  MPID=$!; PIDS+=($MPID)
  if [ -n "${NODE_ID:-}" ]; then  # one node of several: start_mtadpg writes their one spec line
    wait_port "$port" || { echo "$label did not start:" >&2; tail -20 "$OUT/$label.log" >&2; MPID=""; }
  elif [ -n "$STORE_DSN" ] && wait_port "$port"; then
    local h="$PY $HERE/pg_bench.py"
    echo "$label|$port|$MPID||$h count $STORE_DSN|$h empty $STORE_DSN|$PG_PID|$h xacts $STORE_DSN" >>"$SPEC"
  elif wait_port "$port"; then
    echo "$label|$port|$MPID||$PY $HERE/mtad_store.py count $db|$PY $HERE/mtad_store.py empty $db" >>"$SPEC"
  else
    echo "$label did not start:" >&2; tail -20 "$OUT/$label.log" >&2
  fi
}
stop_mtad_tree() {  # LABEL PID
  [ -n "$2" ] && stop_pid "$2"
  if [ -s "$OUT/$1.log" ]; then echo "-- $1.log (warnings and errors):"; tail -5 "$OUT/$1.log"; fi
}
# with a base tree both mtads set their API port (2580, 2581) so that they can run side by side
start_mtad() { start_mtad_tree mtad "$MTAD_SRC" "$MTAD_DESC" 2527 "${BASE_SRC:+2580}"; M=$MPID; }
stop_mtad() { stop_mtad_tree mtad "$M"; }
start_base() { start_mtad_tree base-mtad "$BASE_SRC" "$BASE_DESC" 2528 2581; BM=$MPID; }
stop_base() { stop_mtad_tree base-mtad "$BM"; }
# mtad-pg: the same mtad and config with its store on a private PostgreSQL server started here (bench/pg_bench.py)
STORE_DSN=""; PG_PID=""
start_mtadpg() {
  echo "== PostgreSQL $(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1): private server for mtad-pg (bench/pg_bench.py)"
  if ! "$PY" "$HERE/pg_bench.py" start "$WORK/pg" >"$OUT/pg-start.log" 2>&1; then
    echo "PostgreSQL did not start (see $OUT/pg-start.log)" >&2; return
  fi
  PG_PID=$(cat "$WORK/pg/pid"); STORE_DSN=$(cat "$WORK/pg/dsn")
  start_mtad_tree mtad-pg "$MTAD_SRC" "$MTAD_DESC" 2529 2582; MP=$MPID
  MPN=()
  if [ "$PG_NODES" -ge 2 ]; then
    local label=mtad-pg-x$PG_NODES ports=() pids=() i
    STORE_DSN=$("$PY" "$HERE/pg_bench.py" createdb "$STORE_DSN" mtadbench_nodes) || { STORE_DSN=""; return; }
    for i in $(seq "$PG_NODES"); do
      NODE_ID=n$i start_mtad_tree "$label-n$i" "$MTAD_SRC" "$MTAD_DESC" $((2530 + i)) $((2582 + i))
      [ -n "$MPID" ] || { STORE_DSN=""; return; }
      ports+=($((2530 + i))); pids+=("$MPID"); MPN+=("$MPID")
    done
    local h="$PY $HERE/pg_bench.py"
    echo "$label|$(IFS=+; echo "${ports[*]}")|$(IFS=+; echo "${pids[*]}")||$h count $STORE_DSN|$h empty $STORE_DSN|$PG_PID|$h xacts $STORE_DSN" >>"$SPEC"
  fi
  STORE_DSN=""
}
# base-mtad-pg: the base tree (--base-rev/--base-src) on a second database of the same server, beside mtad-pg
start_basepg() {
  [ -n "$PG_PID" ] || return
  STORE_DSN=$("$PY" "$HERE/pg_bench.py" createdb "$(cat "$WORK/pg/dsn")" mtadbench_base) || { STORE_DSN=""; return; }
  start_mtad_tree base-mtad-pg "$BASE_SRC" "$BASE_DESC" 2540 2590; BMP=$MPID
  STORE_DSN=""
}
stop_basepg() { stop_mtad_tree base-mtad-pg "$BMP"; }
stop_mtadpg() {
  stop_mtad_tree mtad-pg "$MP"
  local i=1 p; for p in "${MPN[@]}"; do stop_mtad_tree "mtad-pg-x$PG_NODES-n$i" "$p"; i=$((i + 1)); done
}
wanted() {
  case $1 in base) [ -n "$BASE_SRC" ] && want mtad ;; mtadpg) want mtad-pg ;;
    basepg) [ -n "$BASE_SRC" ] && want mtad-pg ;; *) want "$1" ;; esac
}

ORDER=(sink postfix haraka mtad base mtadpg basepg)
if [ $SEQUENTIAL = 1 ]; then
  for s in "${ORDER[@]}"; do
    wanted "$s" && [ "$s" != base ] && [ "$s" != basepg ] || continue
    : >"$SPEC"; "start_$s"
    # a before/after comparison stays within one run even here: base-mtad is measured together with mtad
    [ "$s" = mtad ] && wanted base && start_base
    [ "$s" = mtadpg ] && wanted basepg && start_basepg
    [ -s "$SPEC" ] && "${RI[@]}" --spec "$SPEC"
    "stop_$s"
    [ "$s" = mtad ] && wanted base && stop_base
    [ "$s" = mtadpg ] && wanted basepg && stop_basepg
  done
else
  : >"$SPEC"
  for s in "${ORDER[@]}"; do wanted "$s" && "start_$s"; done
  echo "== measuring $(cut -d'|' -f1 "$SPEC" | tr '\n' ' ')in turn within each cell"
  [ -s "$SPEC" ] && "${RI[@]}" --spec "$SPEC"
  for s in "${ORDER[@]}"; do wanted "$s" && "stop_$s"; done
fi

echo
"$PY" "$HERE/summarize_ingress.py" "$RESULTS" | tee "$OUT/summary.md"
echo
echo "results: $RESULTS   table: $OUT/summary.md"
