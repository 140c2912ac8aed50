"""Private Exim and Sendmail instances that relay through mtad as their smarthost, for the e2e tests.

The binaries come from Debian's packages unpacked by ``tests/support/install_test_mtas.sh`` into
``$MTAD_TEST_MTAS`` (default ``/opt/mtad-test-mtas``); they are never installed, so they don't conflict
with Postfix. Each instance gets its own folder there (not under /tmp: Sendmail refuses files below a
world-writable directory, and Exim's delivery processes run as Debian-exim, which must reach its spool)
with its config, spool/queue and logs, and is run with ``-C`` on that config.

Loopback only: every run happens in a private mount namespace whose /etc/resolv.conf names 127.0.0.1 and
whose /etc/nsswitch.conf resolves host names from /etc/hosts alone, so neither MTA can query the system's
resolver (Sendmail looks up its own host name and addresses at start); the smarthost is the IP literal
127.0.0.1, so nothing else is ever resolved. Without a way to set that up (``unshare``), the tests skip.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(os.environ.get("MTAD_TEST_MTAS", "/opt/mtad-test-mtas"))
EXIM = ROOT / "exim" / "usr" / "sbin" / "exim4"
SENDMAIL = ROOT / "sendmail" / "usr" / "libexec" / "sendmail" / "sendmail"
MAKEMAP = ROOT / "sendmail" / "usr" / "libexec" / "sendmail" / "makemap"
SENDMAIL_CF = ROOT / "sendmail" / "usr" / "share" / "sendmail" / "cf"
INSTALL_HINT = "bash tests/support/install_test_mtas.sh (tests/run.sh runs it as root)"

_ISOLATE = ('mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/nsswitch.conf '
            '&& mount --bind "$3" /etc/hosts && shift 3 && exec "$@"')
_isolation_ok: bool | None = None


def unavailable(binary: Path, what: str) -> str | None:
    """Why an MTA cannot be run here (the skip reason), or None."""
    global _isolation_ok
    if os.geteuid() != 0:
        return f"a private {what} instance needs root (mount namespace, setuid MTA binaries)"
    if not binary.exists():
        return f"{what} is not unpacked at {binary}: run {INSTALL_HINT}"
    if shutil.which("unshare") is None or shutil.which("m4") is None:
        return "unshare (util-linux) or m4 is missing"
    if _isolation_ok is None:
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("resolv.conf", "nsswitch.conf", "hosts"):
                (Path(tmp) / name).write_text("")
            result = subprocess.run(isolated(Path(tmp), "true"), capture_output=True, timeout=30)
            _isolation_ok = result.returncode == 0
    if not _isolation_ok:
        return ("cannot give the MTA a private loopback-only resolver (unshare --mount and mount --bind failed):"
                " refusing to run it against the system's resolver")
    return None


def workdir(prefix: str, hostname: str) -> Path:
    """A fresh folder under the MTAs' root, reachable by unprivileged users, below no world-writable folder,
    with the files ``isolated`` puts in place: a resolver on 127.0.0.1, host names from files only, and an
    /etc/hosts where this machine's name has the qualified name ``hostname`` (else Sendmail, unable to
    qualify its own name, sleeps a minute at every start)."""
    base = ROOT / "run"
    base.mkdir(mode=0o755, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    folder.chmod(0o755)
    (folder / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    (folder / "nsswitch.conf").write_text("hosts: files\nnetworks: files\n")
    (folder / "hosts").write_text(f"127.0.0.1 {hostname} {socket.gethostname()} localhost\n::1 localhost\n")
    return folder


def isolated(folder: Path, *command: str) -> list[str]:
    """``command`` run in a mount namespace with the folder's resolv.conf, nsswitch.conf and hosts."""
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _ISOLATE, "isolate",
            str(folder / "resolv.conf"), str(folder / "nsswitch.conf"), str(folder / "hosts"), *command]


@dataclass
class Run:
    returncode: int
    output: str  # standard output and error
    log: str  # the MTA's own log (Exim: mainlog + paniclog; Sendmail: the -v transcript, i.e. output)

    def queue_id(self) -> str | None:
        """mtad's queue id, from the ``250 2.0.0 Ok: queued as ID`` reply the MTA logged."""
        m = re.search(r"queued as ([0-9A-F]+)", self.log)
        return m.group(1) if m else None


# --- Exim -----------------------------------------------------------------------------------------------

# The seed manual's Exim smarthost set-up (a manualroute router for every non-local domain to the smarthost,
# an smtp transport that authenticates with the credentials of passwd.client), in the shape Debian's
# exim4-config gives it: the remote_smtp_smarthost transport and the PLAIN / LOGIN plaintext client
# authenticators reading CONFDIR/passwd.client, which send the password only over TLS ($tls_out_cipher).
# hosts_require_tls / hosts_require_auth / tls_verify_* make Exim insist on verified TLS and on AUTH.
EXIM_CONF = """\
CONFDIR = {dir}
exim_path = {exim}
exim_user = Debian-exim
exim_group = Debian-exim
primary_hostname = exim-client.test
qualify_domain = example.com
spool_directory = {dir}/spool
log_file_path = {dir}/log/%slog
log_selector = +tls_certificate_verified +smtp_confirmation
keep_environment =
domainlist local_domains =
never_users = root
daemon_smtp_ports =
message_logs = false
host_lookup =
rfc1413_hosts =

begin routers

smarthost:
  driver = manualroute
  domains = ! +local_domains
  transport = remote_smtp_smarthost
  route_list = * 127.0.0.1 byname
  # the smarthost is on this machine's loopback address: deliver to it anyway
  self = send
  no_more

begin transports

remote_smtp_smarthost:
  driver = smtp
  port = {port}
  allow_localhost
  multi_domain
  hosts_try_auth = <; ${{if exists{{CONFDIR/passwd.client}} \\
        {{${{lookup{{$host}}nwildlsearch{{CONFDIR/passwd.client}}{{$host_address}}}}}}{{}} }}
  hosts_require_auth = *
  hosts_require_tls = *
  tls_verify_certificates = CONFDIR/ca.pem
  tls_verify_hosts = *
  tls_verify_cert_hostnames = *

begin retry

*  *  F,1h,15m

begin authenticators

PASSWDLINE=${{sg{{${{lookup{{$host}}nwildlsearch{{CONFDIR/passwd.client}}{{$value}}fail}}}}{{\\\\N[\\\\^]\\\\N}}{{^^}}}}

{authenticators}
"""

EXIM_AUTHENTICATORS = {
    "PLAIN": """\
plain:
  driver = plaintext
  public_name = PLAIN
  client_send = "<; ${if !eq{$tls_out_cipher}{}\\
                    {^${extract{1}{:}{PASSWDLINE}}\\
                     ^${sg{PASSWDLINE}{\\\\N([^:]+:)(.*)\\\\N}{\\\\$2}}\\
                    }fail}"
""",
    "LOGIN": """\
login:
  driver = plaintext
  public_name = LOGIN
  client_send = "<; ${if and{{!eq{$tls_out_cipher}{}}{!eq{PASSWDLINE}{}}}{}fail}\\
                 ; ${extract{1}{::}{PASSWDLINE}}\\
                 ; ${sg{PASSWDLINE}{\\\\N([^:]+:)(.*)\\\\N}{\\\\$2}}"
""",
}


class EximClient:
    """A private Exim whose only route is mtad's submission listener on 127.0.0.1:``port``."""

    def __init__(self, port: int, login: str, password: str, ca_pem: bytes, mechanisms: tuple[str, ...]):
        self.dir = workdir("exim-", "exim-client.test")
        for sub in ("spool", "log"):
            (self.dir / sub).mkdir()
            shutil.chown(self.dir / sub, "Debian-exim", "Debian-exim")
        (self.dir / "ca.pem").write_bytes(ca_pem)
        # Debian's /etc/exim4/passwd.client: host:login:password (the seed manual's "*.mailgun.org:user:pass")
        (self.dir / "passwd.client").write_text(f"127.0.0.1:{login}:{password}\n")
        (self.dir / "passwd.client").chmod(0o640)
        shutil.chown(self.dir / "passwd.client", "root", "Debian-exim")
        self.config = self.dir / "exim.conf"
        self.config.write_text(EXIM_CONF.format(dir=self.dir, exim=EXIM, port=port, authenticators="\n".join(
            EXIM_AUTHENTICATORS[m] for m in mechanisms)))

    def log(self) -> str:
        parts = []
        for name in ("mainlog", "paniclog"):
            path = self.dir / "log" / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def send(self, sender: str, recipient: str, message: bytes) -> Run:
        """Submit on standard input and deliver in the foreground (-odf): returns once Exim has tried."""
        result = subprocess.run(isolated(self.dir, str(EXIM), "-C", str(self.config), "-odf", "-v", "-f", sender,
                                         recipient), input=message, capture_output=True, timeout=60)
        output = (result.stdout + result.stderr).decode(errors="replace")
        return Run(result.returncode, output, self.log())

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# --- Sendmail -------------------------------------------------------------------------------------------

# The seed manual's sendmail.mc lines (SMART_HOST, FEATURE(authinfo)) plus what a smarthost on another port
# with required, verified TLS needs: the relay mailer's port, the CA for STARTTLS, and an access map
# entry "TLS_Srv:127.0.0.1 VERIFY" that makes Sendmail refuse to go on (and so to send the password)
# unless the server's certificate was verified. The "relay:" prefix is needed because the smarthost is
# 127.0.0.1, one of Sendmail's own addresses (a plain [127.0.0.1] would be taken as local and dropped).
SENDMAIL_MC = """\
divert(-1)
# mtad tests: a Sendmail that relays all mail through mtad (the seed manual's smarthost set-up)
divert(0)dnl
VERSIONID(`mtad smarthost client test')dnl
OSTYPE(`linux')dnl
define(`confDOMAIN_NAME', `sendmail-client.test')dnl
define(`QUEUE_DIR', `{dir}/queue')dnl
define(`ALIAS_FILE', `{dir}/etc/aliases')dnl
define(`STATUS_FILE', `{dir}/etc/statistics')dnl
define(`HELP_FILE', `{dir}/etc/helpfile')dnl
define(`confPID_FILE', `{dir}/sendmail.pid')dnl
define(`confSERVICE_SWITCH_FILE', `{dir}/etc/service.switch')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confTO_CONNECT', `10s')dnl
define(`confCACERT_PATH', `{dir}/etc')dnl
define(`confCACERT', `{dir}/etc/ca.pem')dnl
define(`confAUTH_MECHANISMS', `PLAIN LOGIN')dnl
define(`confAUTH_OPTIONS', `A p')dnl
define(`SMART_HOST', `relay:[127.0.0.1]')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {port}')dnl
define(`ESMTP_MAILER_ARGS', `TCP $h {port}')dnl
FEATURE(`nocanonify')dnl
FEATURE(`authinfo', `hash {dir}/etc/authinfo')dnl
FEATURE(`access_db', `hash -T<TMPF> {dir}/etc/access')dnl
MAILER(`local')dnl
MAILER(`smtp')dnl
"""


class SendmailClient:
    """A private Sendmail (sendmail.cf made with m4 from sendmail-cf) relaying through 127.0.0.1:``port``."""

    def __init__(self, port: int, login: str, password: str, ca_pem: bytes, mechanism: str):
        self.dir = workdir("sendmail-", "sendmail-client.test")
        etc, queue = self.dir / "etc", self.dir / "queue"
        etc.mkdir()
        queue.mkdir(mode=0o700)
        (etc / "ca.pem").write_bytes(ca_pem)
        (etc / "service.switch").write_text("hosts files\naliases files\n")
        for name in ("aliases", "statistics", "helpfile"):
            (etc / name).write_text("")
        (etc / "sendmail.mc").write_text(SENDMAIL_MC.format(dir=self.dir, port=port))
        self.config = etc / "sendmail.cf"
        with open(self.config, "wb") as cf:
            subprocess.run(["m4", f"-D_CF_DIR_={SENDMAIL_CF}/", str(SENDMAIL_CF / "m4" / "cf.m4"),
                            str(etc / "sendmail.mc")], stdout=cf, check=True, timeout=30)
        # The seed manual's authinfo line, for this smarthost; "make -C /etc/mail" is makemap hash.
        self.make_map("authinfo", f'AuthInfo:127.0.0.1 "U:{login}" "P:{password}" "M:{mechanism}"\n')
        self.make_map("access", "TLS_Srv:127.0.0.1 VERIFY\n")

    def make_map(self, name: str, text: str) -> None:
        source = self.dir / "etc" / name
        source.write_text(text)
        source.chmod(0o600)
        subprocess.run([str(MAKEMAP), "-C", str(self.config), "hash", str(source)], input=text.encode(),
                       check=True, capture_output=True, timeout=30)

    def send(self, sender: str, recipient: str, message: bytes) -> Run:
        """Submit on standard input and deliver at once (-odi), -v printing the SMTP dialogue."""
        result = subprocess.run(isolated(self.dir, str(SENDMAIL), "-C", str(self.config), "-odi", "-v",
                                         "-f", sender, recipient), input=message, capture_output=True, timeout=60)
        output = (result.stdout + result.stderr).decode(errors="replace")
        return Run(result.returncode, output, output)

    def queued(self) -> list[str]:
        """Files left in the queue (a deferred message)."""
        return sorted(p.name for p in (self.dir / "queue").iterdir())

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
