#!/bin/bash
# bench/profile_mtad.sh -- where mtad's time goes under smtp-source load, sampled with py-spy.
#
#   bash bench/profile_mtad.sh [--size 1024] [--sessions 20] [--seconds 15] [--out DIR]
#                              [--mtad-rev REV] [--native] [--gil] [--svg] [--pg]
#
# Starts mtad exactly as bench/ingress.sh does (config from mtad_config.py: MX listener, tls none,
# example.net a receiving domain, SQLite store in a mktemp folder, log level warning), warms it with 3000 messages, then
# samples it with py-spy (100 Hz, --nonblocking, all threads, --threads) while smtp-source sends
# messages of --size bytes over --sessions concurrent sessions (new connection per message) for
# --seconds. Prints the msgs/s reached under the profiler and bench/pyspy_top.py's ranking; keeps
# the raw stacks (profile.txt) and, with --svg, a flame graph from a second pass (profile.svg).
# --native adds C frames (uvloop, sqlite3, the kernel boundary) to the stacks; py-spy must then
# pause mtad for each sample, which slows it more. --gil keeps only samples of the thread holding the
# GIL: what a single mtad process can do at most is bounded by that work (all threads' Python code).
# --pg: mtad's store on a private PostgreSQL server (bench/pg_bench.py, as bench/ingress.sh --pg starts it).
# Installs py-spy with pip when missing. All traffic stays on 127.0.0.1 (unshare -n, as ingress.sh).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PY=${PY:-python3}
SIZE=1024; SESSIONS=20; SECONDS_=15; OUT=""; MTAD_REV=""; NATIVE=(--nonblocking); SVG=0; GIL=(); PG=0
ORIG_ARGS=("$@")
while [ $# -gt 0 ]; do
  case $1 in
    --size) SIZE=$2; shift ;;
    --sessions) SESSIONS=$2; shift ;;
    --seconds) SECONDS_=$2; shift ;;
    --out) OUT=$2; shift ;;
    --mtad-rev) MTAD_REV=$2; shift ;;
    --native) NATIVE=(--native) ;;  # py-spy cannot unwind C frames without pausing the process
    --svg) SVG=1 ;;
    --gil) GIL=(--gil) ;;
    --pg) PG=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "profile_mtad.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "${BENCH_NETNS:-}" ]; then
  [ "$(id -u)" = 0 ] || { echo "profile_mtad.sh: run as root" >&2; exit 1; }
  command -v smtp-source >/dev/null || { echo "smtp-source missing: run bench/ingress.sh once (it installs postfix)" >&2; exit 1; }
  command -v py-spy >/dev/null || "$PY" -m pip install -q py-spy || { echo "pip install py-spy failed" >&2; exit 1; }
  exec unshare -n env BENCH_NETNS=1 bash -c 'ip link set lo up && exec bash "$0" "$@"' "$0" "${ORIG_ARGS[@]}"
fi

WORK=$(mktemp -d /tmp/mtad-profile.XXXXXX)
OUT=${OUT:-$WORK}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
M=""
cleanup() {
  [ -n "$M" ] && kill "$M" 2>/dev/null
  [ -s "$WORK/pg/dsn" ] && "$PY" "$HERE/pg_bench.py" stop "$WORK/pg" >/dev/null 2>&1 && rm -rf "$WORK/pg"
  rm -rf "$WORK/state" "$WORK/mtad-src"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
MTAD_SRC=$REPO
if [ -n "$MTAD_REV" ]; then
  MTAD_SRC=$WORK/mtad-src; mkdir -p "$MTAD_SRC"
  git -C "$REPO" archive "$MTAD_REV" mtad | tar -x -C "$MTAD_SRC" || exit 1
fi
DSN=""; STORE=("$PY" "$HERE/mtad_store.py"); DB=$WORK/state/mtad.sqlite3
if [ $PG = 1 ]; then
  "$PY" "$HERE/pg_bench.py" start "$WORK/pg" >"$OUT/pg-start.log" 2>&1 || { echo "PostgreSQL did not start" >&2; exit 1; }
  DSN=$(cat "$WORK/pg/dsn"); STORE=("$PY" "$HERE/pg_bench.py"); DB=$DSN
fi
(cd "$WORK" && PYTHONPATH=$MTAD_SRC "$PY" "$HERE/mtad_config.py" "$WORK/mtad.yaml" "$WORK/state" 2527 \
   ${DSN:+--store-dsn "$DSN"}) || exit 1
(cd "$WORK" && PYTHONPATH=$MTAD_SRC exec "$PY" -m mtad run --config "$WORK/mtad.yaml" >"$OUT/mtad.log" 2>&1) &
M=$!
for _ in $(seq 150); do (exec 3<>/dev/tcp/127.0.0.1/2527) 2>/dev/null && break; sleep 0.1; done
SRC=(smtp-source -s "$SESSIONS" -l "$SIZE" -f a@example.com -t b@example.net -M bench.localdomain)
"${SRC[@]}" -m 3000 127.0.0.1:2527 || { echo "warm-up failed; mtad.log:" >&2; tail "$OUT/mtad.log" >&2; exit 1; }
"${STORE[@]}" empty "$DB"

load() {  # smtp-source for about $SECONDS_ seconds (bounded: at most 1,000,000 messages, killed at the end)
  local before after t0 t1
  before=$("${STORE[@]}" count "$DB")
  t0=$(date +%s.%N)
  timeout "$SECONDS_" "${SRC[@]}" -m 1000000 127.0.0.1:2527 >/dev/null 2>&1
  t1=$(date +%s.%N)
  after=$("${STORE[@]}" count "$DB")
  "$PY" -c "import sys; n, t = int(sys.argv[1]), float(sys.argv[3]) - float(sys.argv[2]); print(f'stored {n} messages in {t:.1f} s under the profiler: {n / t:,.0f} msgs/s')" "$((after - before))" "$t0" "$t1"
  "${STORE[@]}" empty "$DB"
}

echo "== profiling mtad ($SIZE bytes, $SESSIONS sessions, ${SECONDS_}s) -> $OUT/profile.txt"
py-spy record --pid "$M" --rate 100 --threads "${NATIVE[@]}" "${GIL[@]}" --format raw \
  --duration "$SECONDS_" -o "$OUT/profile.txt" >"$OUT/py-spy.log" 2>&1 &
SPY=$!
sleep 0.5
load
wait $SPY
if [ $SVG = 1 ]; then
  py-spy record --pid "$M" --rate 100 "${NATIVE[@]}" --duration "$SECONDS_" \
    -o "$OUT/profile.svg" >>"$OUT/py-spy.log" 2>&1 &
  SPY=$!
  sleep 0.5
  load >/dev/null
  wait $SPY
  echo "flame graph: $OUT/profile.svg"
fi
"$PY" "$HERE/pyspy_top.py" "$OUT/profile.txt" | tee "$OUT/profile-top.txt"
echo "raw stacks: $OUT/profile.txt   ranking: $OUT/profile-top.txt"
