#!/bin/sh
# Create and start a private Postfix instance for benchmarks (copied from ../shared/bench/postfix/).
#   sh setup_postfix.sh DIR [SMTPD_PORT] [RELAY_PORT] [MILTER REINJECT_PORT]
# DIR gets etc/ (config), spool/ (queue), data/, maillog.
# smtpd listens on 127.0.0.1:SMTPD_PORT (default 2525); all mail relays to
# [127.0.0.1]:RELAY_PORT (default 2530, run smtp-sink there).
# With MILTER (e.g. inet:127.0.0.1:2528, an OpenDKIM: bench/postfix/opendkim.sh) and REINJECT_PORT: DKIM signing
# AFTER the queue, the way Postfix signs mail it did not sign on receipt (FILTER_README's after-queue content
# filter, the amavis set-up): every queued message carries content_filter = signer:[127.0.0.1]:REINJECT_PORT, so
# when it leaves the queue it goes to a second smtpd on REINJECT_PORT whose cleanup runs the milter (the signature
# is added there) and queues it again, without the filter, for the relay. Signing therefore happens while the
# queue drains, as mtad's does (mtad signs at delivery), at the price of that second queue pass.
# (Differs from the shared copy: maillog_file_prefixes lets the log live in DIR, which Postfix 3.7
# refuses outside /var otherwise; errors are printed even without a terminal.)
# Mode after setup: "hold" (every accepted message is fsync'd into the queue
# and put on hold; nothing is delivered). (Relay mode: ../shared/bench/postfix/mode_postfix.sh.)
# The system-wide postfix is not touched.
set -eu
DIR=$1; PORT=${2:-2525}; RELAY=${3:-2530}; MILTER=${4:-}; REINJECT=${5:-}
mkdir -p "$DIR/etc" "$DIR/spool" "$DIR/data"
chown postfix "$DIR/data"
cat > "$DIR/etc/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $DIR/spool
data_directory = $DIR/data
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.localdomain
mydomain = localdomain
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_transport = error:local delivery disabled
relay_domains =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_client_restrictions = check_client_access static:HOLD
smtpd_peername_lookup = no
relayhost = [127.0.0.1]:$RELAY
smtp_dns_support_level = disabled
smtp_host_lookup = native
default_process_limit = 200
maillog_file = $DIR/maillog
maillog_file_prefixes = /var, /dev/stdout, $DIR
biff = no
CF
if [ -n "$MILTER" ]; then
  cat >> "$DIR/etc/main.cf" <<CF
content_filter = signer:[127.0.0.1]:$REINJECT
milter_default_action = tempfail
milter_protocol = 6
CF
fi
cat > "$DIR/etc/master.cf" <<CF
127.0.0.1:$PORT inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
CF
if [ -n "$MILTER" ]; then
  cat >> "$DIR/etc/master.cf" <<CF
signer    unix  -       -       n       -       -       smtp
  -o smtp_send_xforward_command=yes
  -o disable_mime_output_conversion=yes
127.0.0.1:$REINJECT inet n - n - - smtpd
  -o content_filter=
  -o smtpd_milters=$MILTER
  -o smtpd_client_restrictions=
  -o smtpd_authorized_xforward_hosts=127.0.0.0/8
  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_address_mappings
CF
fi
postfix -c "$DIR/etc" check || { script -qc "postfix -c $DIR/etc check" /dev/null >&2; exit 1; }
postfix -c "$DIR/etc" start
sleep 1
echo "master pid: $(cat "$DIR/spool/pid/master.pid")"
