import re
from pathlib import Path

import pytest

from mtad.config import schema as config
from mtad.base.errors import ConfigError
from mtad.base.passwords import hash_password, verify_password
from mtad.base.rates import Duration, Rate, Size


def parse(data):
    return config.parse(data, Path("."))


def test_defaults_are_the_embedded_listeners():
    cfg = parse({})
    assert [(listener.address, listener.role, listener.tls) for listener in cfg.listeners] == [
        ("127.0.0.1:2525", "mx", "starttls"), ("127.0.0.1:2587", "submission", "starttls"),
        ("127.0.0.1:2465", "submission", "implicit")]
    assert cfg.limits.max_message_size == Size(25_000_000)


@pytest.mark.parametrize("data, path", [
    ({"limits": {"max_mesage_size": 1}}, "limits.max_mesage_size"),
    ({"limits": {"command_timeout": "5 parsecs"}}, "limits.command_timeout"),
    ({"listeners": [{"address": "nowhere", "role": "mx"}]}, "listeners[0].address"),
    ({"listeners": [{"address": "127.0.0.1:25", "role": "relay"}]}, "listeners[0].role"),
    ({"sending_domains": {"a.com": {"users": {"u": {"password_hash": "plain"}}}}},
     "sending_domains.a.com.users.u.password_hash"),
    ({"delivery": {"retry": {"schedule": []}}}, "delivery.retry.schedule"),
    ({"routing": {"allowed_networks": ["not-a-net"]}}, "routing.allowed_networks[0]"),
    ({"tls": {"cert": "only-cert.pem"}}, "tls"),
    ({"store": {"claim_lease": "1s"}}, "store.claim_lease"),
])
def test_errors_name_the_key_path(data, path):
    with pytest.raises(ConfigError) as err:
        parse(data)
    assert err.value.path == path
    assert str(err.value).startswith(path + ":")


def test_secrets_from_env_and_file_are_masked(tmp_path, monkeypatch):
    digest = hash_password("pw", n=2**10)
    (tmp_path / "hash").write_text(digest + "\n")
    monkeypatch.setenv("MTAD_TEST_HASH", digest)
    cfg = config.parse({"sending_domains": {"a.com": {"users": {
        "x": {"password_hash": {"file": "hash"}}, "y": {"password_hash": {"env": "MTAD_TEST_HASH"}}}}}}, tmp_path)
    users = cfg.users()
    assert verify_password("pw", users["x@a.com"][0].password_hash.reveal())
    assert users["y@a.com"][0].password_hash.reveal() == digest
    text = config.effective(cfg)
    assert digest not in text and "env:MTAD_TEST_HASH" in text and "********" in text


def test_missing_env_secret_is_an_error(monkeypatch):
    monkeypatch.delenv("MTAD_NOPE", raising=False)
    with pytest.raises(ConfigError, match="MTAD_NOPE"):
        parse({"signing_key": {"env": "MTAD_NOPE"}})


def test_value_types_round_trip():
    assert str(Rate.parse("2000/h")) == "2000/h" and Rate.parse("100/s").per_second == 100
    assert Duration.parse("1.5h").seconds == 5400 and str(Duration.parse("90m")) == "90m"
    assert Size.parse("64KiB").bytes == 65536
    with pytest.raises(ValueError):
        Rate.parse("5 per s")


def test_demo_passwords_are_safe_to_type_on_a_command_line(tmp_path):
    """README's "Try it" passes the demo password to swaks as ``--auth-password "$PASS"``: one that began with "-"
    was read as an option ("Unknown option: 3ij..."), so a generated password is letters and digits only."""
    from mtad.config.demo import demo_credentials
    for n in range(10):  # with the old urlsafe alphabet all ten were clean one time in 2,000
        creds = demo_credentials(tmp_path / str(n))
        assert re.fullmatch(r"[A-Za-z0-9]{24,}", creds["password"]), creds["password"]
        assert demo_credentials(tmp_path / str(n))["password"] == creds["password"]  # kept, not made again


def test_a_config_file_that_is_not_yaml_is_refused_naming_the_file_and_line(tmp_path):
    path = tmp_path / "mtad.yaml"
    path.write_text("hostname: mx.example.com\nlimits:\n  max_message_size: [1, 2\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(path) in str(caught.value) and "not valid YAML" in str(caught.value)
    assert "line 3" in str(caught.value) or "line 4" in str(caught.value), str(caught.value)
    path.write_text("hostname: mx.example.com\nlimits:\n  max_message_size: 10 MB\n")
    assert config.load(path).limits.max_message_size.bytes == 10_000_000
