#!/usr/bin/env bash
# Exim and Sendmail for tests/e2e/test_ingress_smarthost_exim_sendmail.py, beside the installed Postfix.
#
# Their Debian packages cannot be installed next to postfix (all three provide and conflict with
# mail-transport-agent), so this script downloads them with `apt-get download` and unpacks them with
# `dpkg -x` into a private folder (default /opt/mtad-test-mtas, or $MTAD_TEST_MTAS):
#   exim/      exim4-daemon-light   (usr/sbin/exim4)
#   sendmail/  sendmail-bin, sendmail-cf   (usr/libexec/sendmail/{sendmail,makemap}, usr/share/sendmail/cf)
# Nothing is configured, started or put on PATH; the tests run each binary with its own config file (-C).
# The shared libraries they link against (none of which conflicts with anything) are installed normally,
# and so are m4 (to build sendmail.cf) and libsasl2-modules (Sendmail's PLAIN and LOGIN client mechanisms).
# Exim looks its compiled-in user up at start, whatever the config says, so the system user Debian-exim
# is created as exim4-config's postinst would.
#
# Idempotent: a second run finds the stamp file and the binaries and does nothing. Needs root and apt.
set -euo pipefail
DEST="${MTAD_TEST_MTAS:-/opt/mtad-test-mtas}"
STAMP="$DEST/.installed"
EXIM="$DEST/exim/usr/sbin/exim4"
SENDMAIL="$DEST/sendmail/usr/libexec/sendmail/sendmail"

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_test_mtas: needs root and apt-get; Exim/Sendmail smarthost tests will skip" >&2
  exit 0
fi

ensure_user() {
  getent group Debian-exim >/dev/null || groupadd --system Debian-exim
  getent passwd Debian-exim >/dev/null \
    || useradd --system --gid Debian-exim --home-dir /var/spool/exim4 --no-create-home \
               --shell /usr/sbin/nologin Debian-exim
}

if [ -f "$STAMP" ] && [ -x "$EXIM" ] && [ -x "$SENDMAIL" ] && [ -d "$DEST/sendmail/usr/share/sendmail/cf/m4" ] \
   && command -v m4 >/dev/null 2>&1; then
  ensure_user
  exit 0
fi

MTA_PACKAGES="exim4-daemon-light sendmail-bin sendmail-cf"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt's _apt user downloads into it

# The library dependencies of the binary packages ("lib*" among their Depends, alternatives included),
# plus m4 and the SASL client modules: those not installed yet (installed ones are left as they are, never
# upgraded).
missing_dependencies() {
  { apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances \
        $MTA_PACKAGES 2>/dev/null | awk '$1 ~ /Depends:$/ && $2 ~ /^lib/ {print $2}'
    echo m4; echo libsasl2-modules; } | sort -u | while read -r pkg; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
  done
}
if ! (cd "$work" && apt-get download -qq $MTA_PACKAGES >/dev/null 2>&1); then
  apt-get update -qq
  (cd "$work" && apt-get download -qq $MTA_PACKAGES >/dev/null)
fi
missing="$(missing_dependencies)"
if [ -n "$missing" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

rm -rf "$DEST/exim" "$DEST/sendmail"
mkdir -p "$DEST/exim" "$DEST/sendmail"
dpkg -x "$work"/exim4-daemon-light_*.deb "$DEST/exim"
dpkg -x "$work"/sendmail-bin_*.deb "$DEST/sendmail"
dpkg -x "$work"/sendmail-cf_*.deb "$DEST/sendmail"
# The tests run them as root: no setuid/setgid binaries are left lying around.
find "$DEST/exim" "$DEST/sendmail" -type f -perm /6000 -exec chmod u-s,g-s {} +
ensure_user

# Every shared library resolves (a missing one is a dependency this script failed to install).
for bin in "$EXIM" "$SENDMAIL" "$DEST/sendmail/usr/libexec/sendmail/makemap"; do
  if ldd "$bin" | grep -q "not found"; then
    echo "install_test_mtas: $bin lacks libraries:" >&2
    ldd "$bin" | grep "not found" >&2
    exit 1
  fi
done
(cd "$work" && ls -1 *.deb) > "$STAMP"
