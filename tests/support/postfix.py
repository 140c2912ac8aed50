"""A private Postfix instance for the e2e tests: its own config, queue and log folders under /tmp, its own smtpd
on a loopback address, started with ``postfix -c``; the system's Postfix is not touched.

``private_postfix(prefix, smtpd, main_cf, **fields)`` writes the one master.cf (the services a relaying Postfix
needs, its smtpd listening on ``smtpd``) and a main.cf made of the settings every instance shares (loopback only,
no DNS, no local delivery, its log in the folder) followed by the test's own ``main_cf`` lines (where it relays,
TLS, SASL), starts it and yields the folder; at the end it is stopped and the folder removed. ``unavailable()`` is
the skip reason when no private instance can run here; ``maillog(folder)`` the tail of its log for a failure
message. Starting takes ~0.2 s instead of 4 s: the queue folders are made from Postfix's own table and its
integrity checks skipped (``quick-start``), and the config files are dated in the past.

Used by tests/e2e/test_ingress_clients.py (Postfix as a smarthost client of mtad) and tests/e2e/test_reports.py
(Postfix as a gateway that bounces after it accepted).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

POSTFIX = Path("/usr/sbin/postfix")
SENDMAIL = Path("/usr/sbin/sendmail")
POSTFIX_FILES = Path("/etc/postfix/postfix-files")  # Postfix's own table of its folders: owner, group, mode

MASTER_CF = """\
{smtpd} inet n - n - - smtpd
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
"""

# What every private instance shares: its folders, loopback only, no DNS (host names from /etc/hosts or IP
# literals), nothing delivered locally, its log in its folder.
BASE_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/spool
data_directory = {dir}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
local_transport = error:local delivery disabled
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_host_lookup = native
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
biff = no
"""


def unavailable(sendmail: bool = False) -> str | None:
    """Why a private Postfix cannot run here (the skip reason), or None. ``sendmail``: its sendmail is needed
    too."""
    if not POSTFIX.exists() or (sendmail and not SENDMAIL.exists()):
        return "Postfix is not installed (Debian package postfix; the test bootstrap installs it)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (mail_owner postfix, setgid postdrop)"
    return None


def maillog(folder: Path, tail: int = 4000) -> str:
    """The last ``tail`` characters of the instance's log."""
    path = folder / "maillog"
    return path.read_text(errors="replace")[-tail:] if path.exists() else "(no maillog)"


def _quick_start(spool: Path) -> None:
    """Make the queue folders as Postfix's table says (what ``post-install create-missing`` does) and mark the
    queue ``quick-start``: ``postfix start`` then skips its integrity checks, which scan the whole installation
    and take 3-4 s. Without the table the checks run (they make the folders themselves)."""
    if not POSTFIX_FILES.exists():
        return
    made = False
    for line in POSTFIX_FILES.read_text().splitlines():
        fields = line.split(":")
        if len(fields) < 5 or fields[1] != "d" or not fields[0].startswith("$queue_directory/"):
            continue
        path = spool / fields[0].removeprefix("$queue_directory/")
        path.mkdir(exist_ok=True)
        owner = {"root": "root", "$mail_owner": "postfix"}.get(fields[2])
        group = {"-": None, "$setgid_group": "postdrop"}.get(fields[3], "")
        if owner is None or group == "":
            return  # a line this reader does not know: let Postfix's own checks do it
        shutil.chown(path, owner, group)
        path.chmod(int(fields[4], 8))
        made = True
    if made:
        (spool / "quick-start").touch()


@contextlib.contextmanager
def private_postfix(prefix: str, smtpd: str, main_cf: str, files: dict[str, bytes] | None = None,
                    **fields: object) -> Iterator[Path]:
    """A running private Postfix; yields its folder (``etc/`` is its config folder, ``maillog`` its log).

    ``smtpd`` is its smtpd's ``ip:port``; ``main_cf`` the instance's own main.cf lines, a format string filled
    with ``fields`` and ``dir`` (the folder); ``files`` more files for ``etc/`` (a CA file the main.cf names)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    folder.chmod(0o755)  # Postfix daemons run as the postfix user and must reach their queue
    for sub in ("etc", "spool", "data"):
        (folder / sub).mkdir()
    shutil.chown(folder / "data", "postfix")
    _quick_start(folder / "spool")
    for name, content in (files or {}).items():
        (folder / "etc" / name).write_bytes(content)
    (folder / "etc" / "main.cf").write_text(BASE_MAIN_CF.format(dir=folder) + main_cf.format(dir=folder, **fields))
    (folder / "etc" / "master.cf").write_text(MASTER_CF.format(smtpd=smtpd))
    past = time.time() - 60  # a config file written a moment ago makes ``postfix start`` poll (0.3 s each) for
    for written in (folder / "etc").iterdir():  # about 2 s before it goes on: dated a minute back, it does not
        os.utime(written, (past, past))
    conf = str(folder / "etc")
    try:
        result = subprocess.run([str(POSTFIX), "-c", conf, "start"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"postfix start: {result.stdout}{result.stderr}\n{maillog(folder)}"
        yield folder
    finally:
        subprocess.run([str(POSTFIX), "-c", conf, "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
