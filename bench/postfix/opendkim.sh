#!/bin/sh
# Start a private OpenDKIM milter for the postfix-dkim drain variant (bench/drain.sh).
#   sh opendkim.sh DIR PORT KEY_PEM SELECTOR DOMAIN
# Writes DIR/opendkim.conf and starts `opendkim -x` as the unprivileged user opendkim (made by Debian's opendkim
# package), listening on inet:PORT@127.0.0.1, pid in DIR/opendkim.pid, start-up errors in DIR/opendkim.log (no
# syslog). It signs every message From DOMAIN it is given (Domain, Selector, KeyFile: the key read once at
# start; a KeyTable/SigningTable set-up measured the same CPU per message) with KEY_PEM as d=DOMAIN s=SELECTOR,
# rsa-sha256, c=relaxed/relaxed, over the header fields mtad signs (mtad/mail/dkim.py DEFAULT_SIGNED_HEADERS;
# OpenDKIM signs those present, From always), no over-signing (OversignHeaders unset), no l=, no verification
# (Mode s). RequireSafeKeys is off: the scratch folder is under /tmp, world-writable, which OpenDKIM counts as an
# unsafe path for any key below it (the key itself is mode 600, owned by opendkim).
# The system-wide opendkim (/etc/opendkim.conf) is not touched.
set -eu
DIR=$1; PORT=$2; KEY=$3; SELECTOR=$4; DOMAIN=$5
mkdir -p "$DIR"
cp "$KEY" "$DIR/key.pem"
chown -R opendkim "$DIR"
chmod 700 "$DIR"; chmod 600 "$DIR/key.pem"
cat > "$DIR/opendkim.conf" <<CONF
Syslog                  no
Background              yes
UserID                  opendkim
PidFile                 $DIR/opendkim.pid
Socket                  inet:$PORT@127.0.0.1
Mode                    s
Canonicalization        relaxed/relaxed
SignatureAlgorithm      rsa-sha256
Domain                  $DOMAIN
Selector                $SELECTOR
KeyFile                 $DIR/key.pem
InternalHosts           127.0.0.1
SignHeaders             From,To,Cc,Subject,Date,Message-ID,MIME-Version,Content-Type,Content-Transfer-Encoding,Reply-To,In-Reply-To,References,List-Unsubscribe,List-Unsubscribe-Post,List-Id,Sender,Feedback-ID
RequireSafeKeys         false
UMask                   077
CONF
chown opendkim "$DIR/opendkim.conf"
opendkim -x "$DIR/opendkim.conf" 2>>"$DIR/opendkim.log"
for _ in $(seq 50); do [ -s "$DIR/opendkim.pid" ] && break; sleep 0.1; done
[ -s "$DIR/opendkim.pid" ] || { echo "opendkim did not start (see $DIR/opendkim.log)" >&2; exit 1; }
echo "opendkim pid: $(cat "$DIR/opendkim.pid")"
