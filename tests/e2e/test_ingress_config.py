"""Configuration and command line: errors name the key path and stop start-up, ``check-config`` prints
the effective configuration with secrets masked, and ``mtad passwd`` makes hashes the daemon accepts.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import ingress_only
from tests.e2e.helpers import MESSAGE, queue_id, send, stored, submission
from mtad.base.passwords import hash_password
from tests.support.daemon import PASSWORD, base_config

FAST_HASH = hash_password(PASSWORD, n=2**10)


def mtad_cli(*args: str, stdin: str | None = None, env: dict | None = None,
             timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtad", *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})))


@pytest.fixture
def config_file(tmp_path, certs):
    """``write(cfg) -> path``; ``cfg`` starts as the tests' base configuration."""
    def write(cfg: dict) -> Path:
        path = tmp_path / "mtad.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path
    write.base = ingress_only(base_config(tmp_path, certs))
    return write


@pytest.mark.parametrize("change, key_path", [
    (lambda c: c["limits"].__setitem__("max_sizee", 10), "limits.max_sizee"),
    (lambda c: c.__setitem__("listners", []), "listners"),
    (lambda c: c["sending_domains"]["example.com"]["users"]["postmaster"].__setitem__("sendas", []),
     "sending_domains.example.com.users.postmaster.sendas"),
    (lambda c: c["limits"].__setitem__("command_timeout", "5 parsecs"), "limits.command_timeout"),
    (lambda c: c["limits"].__setitem__("max_message_size", "huge"), "limits.max_message_size"),
    (lambda c: c["limits"].__setitem__("bare_newline", "ignore"), "limits.bare_newline"),
    (lambda c: c["listeners"][1].__setitem__("address", "nowhere"), "listeners[1].address"),
    (lambda c: c["listeners"][0].__setitem__("address", "127.0.0.1:99999"), "listeners[0].address"),
    (lambda c: c["listeners"][2].__setitem__("role", "relay"), "listeners[2].role"),
    (lambda c: c["sending_domains"]["other.org"]["users"]["app"].__setitem__("password_hash", "plaintext"),
     "sending_domains.other.org.users.app.password_hash"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_config_errors_name_the_key_path(config_file, change, key_path):
    cfg = config_file.base
    cfg.setdefault("limits", {})
    change(cfg)
    path = config_file(cfg)
    result = mtad_cli("check-config", str(path))
    assert result.returncode == 2, result
    assert key_path in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_config_error_stops_start_up(config_file):
    cfg = config_file.base
    cfg["limits"] = {"command_timeout": "soon"}
    path = config_file(cfg)
    result = mtad_cli("run", "--config", str(path), timeout=20)  # must exit, not serve
    assert result.returncode == 2
    assert "limits.command_timeout" in result.stderr + result.stdout


def test_check_config_prints_effective_config_with_secrets_masked(config_file, tmp_path):
    secret_file = tmp_path / "app.hash"
    secret_file.write_text(FAST_HASH + "\n")
    cfg = config_file.base
    users = cfg["sending_domains"]
    users["example.com"]["users"]["postmaster"]["password_hash"] = {"env": "MTAD_TEST_HASH"}
    users["other.org"]["users"]["app"]["password_hash"] = {"file": str(secret_file)}
    users["example.com"]["users"]["inline"] = {"password_hash": FAST_HASH}
    path = config_file(cfg)
    result = mtad_cli("check-config", str(path), env={"MTAD_TEST_HASH": FAST_HASH})
    assert result.returncode == 0, result.stderr
    assert FAST_HASH not in result.stdout and "$scrypt$" not in result.stdout
    effective = yaml.safe_load(result.stdout)
    domains = effective["sending_domains"]
    for masked in (domains["example.com"]["users"]["postmaster"]["password_hash"],
                   domains["other.org"]["users"]["app"]["password_hash"],
                   domains["example.com"]["users"]["inline"]["password_hash"]):
        assert masked.startswith("********"), masked
    assert "MTAD_TEST_HASH" in domains["example.com"]["users"]["postmaster"]["password_hash"]
    # Effective: defaults filled in, values canonical.
    assert effective["limits"]["max_recipients"] == 1000
    assert effective["listeners"][0]["address"] == cfg["listeners"][0]["address"]


def test_secret_from_a_missing_env_var_names_the_key(config_file):
    cfg = config_file.base
    cfg["sending_domains"]["other.org"]["users"]["app"]["password_hash"] = {"env": "MTAD_NOT_SET_ANYWHERE"}
    result = mtad_cli("check-config", str(config_file(cfg)))
    assert result.returncode == 2
    assert "sending_domains.other.org.users.app.password_hash" in result.stderr
    assert "MTAD_NOT_SET_ANYWHERE" in result.stderr


def test_passwd_hash_is_accepted_by_the_daemon(mtad_factory, ingress_config, certs, tmp_path):
    result = mtad_cli("passwd", "--stdin", stdin="correct horse battery\n")
    assert result.returncode == 0, result.stderr
    hashed = result.stdout.strip()
    assert hashed.startswith("$scrypt$") and "correct horse" not in hashed
    again = mtad_cli("passwd", "--stdin", stdin="correct horse battery\n").stdout.strip()
    assert again != hashed, "each hash has its own salt"

    (tmp_path / "user.hash").write_text(hashed + "\n")
    ingress_config["sending_domains"]["example.com"]["users"]["writer"] = {
        "password_hash": {"file": str(tmp_path / "user.hash")}}
    daemon = mtad_factory().start()
    ctx = certs.client_context()
    with submission(daemon, ctx, login="writer@example.com", password="correct horse battery") as s:
        code, text = send(s, "writer@example.com", ["reader@gmail.com"], MESSAGE)
    assert code == 250, text
    assert stored(daemon, queue_id(text))["envelope"]["auth_user"] == "writer@example.com"
    with pytest.raises(smtplib.SMTPAuthenticationError):
        submission(daemon, ctx, login="writer@example.com", password="correct horse")
    with submission(daemon, ctx, login="postmaster@example.com", password=PASSWORD):
        pass


def test_passwd_refuses_an_empty_password():
    result = mtad_cli("passwd", "--stdin", stdin="\n")
    assert result.returncode != 0
    assert not result.stdout.strip()


def test_listener_address_in_use_is_reported(config_file, certs):
    import socket
    cfg = config_file.base
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg["listeners"][0]["address"] = f"127.0.0.1:{busy.getsockname()[1]}"
        path = config_file(cfg)
        started = time.monotonic()
        result = mtad_cli("run", "--config", str(path), timeout=20)
    assert result.returncode != 0
    assert time.monotonic() - started < 15
    assert cfg["listeners"][0]["address"] in result.stderr or "in use" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


REPO = Path(__file__).resolve().parents[2]


def test_shipped_example_config_validates_as_shipped():
    """config/mtad.yaml reads its secrets from /etc/mtad and the environment of the machine it is deployed on;
    ``--no-secrets`` checks everything else on a fresh checkout, and a plain check says how."""
    example = REPO / "config" / "mtad.yaml"
    result = mtad_cli("check-config", "--no-secrets", str(example))
    assert result.returncode == 0, result.stderr
    assert "OK (secrets not read)" in result.stderr
    effective = yaml.safe_load(result.stdout)
    user = effective["sending_domains"]["example.com"]["users"]["postmaster"]
    assert user["password_hash"] == "(not read: file:/etc/mtad/secrets/postmaster.hash)"
    assert effective["signing_key"] == "(not read: env:MTAD_SIGNING_KEY)"
    assert effective["routing"]["routes"][0]["description"] == "Support tickets to the helpdesk application"

    env = {k: v for k, v in os.environ.items() if k != "MTAD_SIGNING_KEY"}
    plain = subprocess.run([sys.executable, "-m", "mtad", "check-config", str(example)], capture_output=True,
                           text=True, timeout=30, env=env)
    assert plain.returncode == 2
    assert "sending_domains.example.com.users.postmaster.password_hash" in plain.stderr
    assert "--no-secrets" in plain.stderr and "Traceback" not in plain.stderr


def test_no_secrets_still_checks_everything_else(config_file):
    cfg = config_file.base
    cfg["sending_domains"]["other.org"]["users"]["app"]["password_hash"] = {"env": "MTAD_NOT_SET_ANYWHERE"}
    assert mtad_cli("check-config", "--no-secrets", str(config_file(cfg))).returncode == 0
    cfg["sending_domains"]["example.com"]["users"]["postmaster"]["password_hash"] = "plaintext"  # inline: checked
    result = mtad_cli("check-config", "--no-secrets", str(config_file(cfg)))
    assert result.returncode == 2 and "sending_domains.example.com.users.postmaster.password_hash" in result.stderr
    cfg["sending_domains"]["example.com"]["users"]["postmaster"]["password_hash"] = FAST_HASH
    cfg["limits"] = {"max_sizee": 10}
    result = mtad_cli("check-config", "--no-secrets", str(config_file(cfg)))
    assert result.returncode == 2 and "limits.max_sizee" in result.stderr


def test_check_config_prints_defaults_as_the_daemon_applies_them(config_file):
    cfg = config_file.base  # other.org's user "app" has no send_as
    result = mtad_cli("check-config", str(config_file(cfg)))
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    domains = effective["sending_domains"]
    assert domains["other.org"]["users"]["app"]["send_as"] == ["other.org"]  # its own domain, not []
    assert domains["example.com"]["users"]["postmaster"]["send_as"] == ["example.com", "news.example.com"]
    shaping = Path(effective["delivery"]["shaping_file"])  # the shipped shaping, not null
    assert shaping.name == "providers.yaml" and shaping.is_file()
