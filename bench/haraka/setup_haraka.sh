#!/bin/sh
# Create a Haraka instance in discard mode for the ingress benchmark (Haraka installed with npm).
# Adapted from ../shared/bench/haraka/setup_haraka.sh (discard mode only).
#   sh setup_haraka.sh HARAKA_BIN DIR [PORT] [NODES]
# Accepts recipients @example.net (rcpt_to.in_host_list) and drops each message at once
# (queue/discard): Haraka's SMTP dialogue cost with no storage at all.
# Start:   YES_REALLY_DO_DISCARD=1 node HARAKA_BIN -c DIR
# bench_rdns.js answers the connect-time rDNS lookup locally so nothing leaves loopback.
# NODES (optional): Haraka's cluster mode with that many worker processes (default: one process).
set -eu
HARAKA=$1; DIR=$2; PORT=${3:-2526}; NODES=${4:-}
HERE=$(cd "$(dirname "$0")" && pwd)
rm -rf "$DIR"
node "$HARAKA" -i "$DIR" >/dev/null
cp "$HERE"/plugins/*.js "$DIR/plugins/"
echo bench.localdomain > "$DIR/config/me"
echo example.net > "$DIR/config/host_list"
{
  echo "listen=127.0.0.1:$PORT"
  echo "inactivity_timeout=60"
  [ -n "$NODES" ] && echo "nodes=$NODES"
  true
} > "$DIR/config/smtp.ini"
printf '[main]\nlevel=warn\ntimestamps=false\n' > "$DIR/config/log.ini"
printf 'bench_rdns\nrcpt_to.in_host_list\nqueue/discard\n' > "$DIR/config/plugins"
echo "haraka instance ready in $DIR (discard)"
