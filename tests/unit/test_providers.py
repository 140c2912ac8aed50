"""mtad.providers: provider lookup, automation matching, and the strict YAML builder."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from mtad.base.errors import ConfigError
from mtad.outbound.providers import AutomationRule, ProviderPolicy, ShapingConfig, build, for_destination, load_shaping, \
    match_automation
from mtad.base.rates import Duration, Rate

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "providers.yaml"


@pytest.fixture(scope="module")
def shipped() -> ShapingConfig:
    return load_shaping(SHIPPED)


def test_gmail_and_a_google_hosted_domain_share_one_provider(shipped):
    gmail = for_destination("gmail.com", [], shipped)
    hosted = for_destination("example.org", ["aspmx.l.google.com", "alt1.aspmx.l.google.com",
                                             "ASPMX2.GOOGLEMAIL.COM."], shipped)
    assert gmail is hosted
    assert gmail.name == "google" and gmail.max_connections == 5 and gmail.max_deliveries_per_connection == 50


def test_shipped_providers_match_their_mx_hosts(shipped):
    cases = {
        "yahoo": ["mta5.am0.yahoodns.net"],
        "outlook": ["hotmail-com.olc.protection.outlook.com"],
        "office365": ["contoso-com.mail.protection.outlook.com"],
        "office365-dane": ["contoso-com.o-v1.mx.microsoft"],
        "apple": ["mx01.mail.icloud.com", "mx02.mail.icloud.com"],
        "gmx-webde": ["mx00.emig.gmx.net", "mx01.web.de"],
        "orange": ["smtp-in.orange.fr"],
        "yandex": ["mx.yandex.net"],
        "proton": ["mail.protonmail.ch", "mailsec.protonmail.ch"],
    }
    for name, hosts in cases.items():
        assert for_destination("customer.example", hosts, shipped).name == name, hosts


def test_unknown_domain_gets_default_limits_under_its_own_name(shipped):
    policy = for_destination("Shop.Example.", ["mx.shop.example"], shipped)
    assert policy.name == "shop.example"
    assert (policy.max_connections, policy.max_message_rate) == (shipped.default.max_connections,
                                                                   shipped.default.max_message_rate)
    assert for_destination("other.example", [], shipped).name == "other.example"


def test_provider_inherits_unset_limits_from_default(shipped):
    google = for_destination("gmail.com", [], shipped)
    assert google.max_message_rate == Rate.parse("100/s")
    assert google.data_timeout == shipped.default.data_timeout == Duration.parse("60s")


def test_suffix_matches_whole_labels_only():
    shaping = ShapingConfig(providers=(ProviderPolicy(name="g", match_mx_suffix=(".google.com",),
                                                      match_domain_suffix=("gmail.com",)),))
    assert for_destination("x.example", ["notgoogle.com"], shaping).name == "x.example"
    assert for_destination("notgmail.com", [], shaping).name == "notgmail.com"
    assert for_destination("sub.gmail.com", [], shaping).name == "g"
    assert for_destination("x.example", ["google.com"], shaping).name == "g"


def test_every_mx_host_must_match_for_an_mx_suffix_match():
    shaping = ShapingConfig(providers=(ProviderPolicy(name="g", match_mx_suffix=("google.com",)),))
    assert for_destination("x.example", ["aspmx.l.google.com", "backup.x.example"], shaping).name == "x.example"


def test_domain_suffix_wins_over_mx_and_longest_suffix_wins():
    shaping = ShapingConfig(providers=(
        ProviderPolicy(name="broad", match_mx_suffix=("outlook.com",)),
        ProviderPolicy(name="o365", match_mx_suffix=("mail.protection.outlook.com",)),
        ProviderPolicy(name="by-domain", match_domain_suffix=("contoso.example",)),
    ))
    assert for_destination("a.example", ["a-example.mail.protection.outlook.com"], shaping).name == "o365"
    assert for_destination("a.example", ["eur.olc.outlook.com"], shaping).name == "broad"
    assert for_destination("contoso.example", ["contoso-example.mail.protection.outlook.com"],
                           shaping).name == "by-domain"


def test_equal_suffixes_go_to_the_first_provider():
    shaping = ShapingConfig(providers=(ProviderPolicy(name="first", match_mx_suffix=("mx.example",)),
                                       ProviderPolicy(name="second", match_mx_suffix=("mx.example",))))
    assert for_destination("d.example", ["a.mx.example"], shaping).name == "first"


def test_automation_matches_reply_text_for_its_providers(shipped):
    yahoo = "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume"
    rule = match_automation(yahoo, "yahoo", shipped.automation)
    assert rule is not None and rule.name == "yahoo-tss04" and rule.action == "suspend"
    assert rule.duration == Duration.parse("2h")
    # The same text from another provider only meets the catch-all IP-reputation rule.
    assert match_automation(yahoo, "google", shipped.automation).name == "ip-reputation"

    gmail = "421-4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP"
    rule = match_automation(gmail, "google", shipped.automation)
    assert rule.name == "gmail-unusual-rate" and rule.max_message_rate == Rate.parse("10/min")
    assert rule.threshold == Rate.parse("2/h")

    outlook = "451 4.7.500 The mail server [192.0.2.1] has exceeded the maximum number of connections."
    assert match_automation(outlook, "outlook", shipped.automation).max_connections == 1
    assert match_automation("250 2.0.0 OK", "google", shipped.automation) is None


def test_rule_without_providers_applies_to_unknown_domains():
    rules = (AutomationRule(name="any", regex="busy"), AutomationRule(name="only-y", providers=("y",), regex="x"))
    assert match_automation("421 busy", "shop.example", rules).name == "any"
    assert match_automation("421 x", "shop.example", rules) is None


MINIMAL = {
    "default": {"max_connections": 3, "max_message_rate": "10/s"},
    "providers": {"google": {"match_mx_suffix": [".google.com"], "max_message_rate": "5/s"},
                  "unlimited": {"match_domain_suffix": ["u.example"], "max_message_rate": None}},
    "automation": {"busy": {"providers": ["google"], "regex": "busy", "action": "throttle",
                            "max_connections": 1, "duration": "10m"}},
}


def test_build_minimal_config():
    shaping = build(MINIMAL)
    google, unlimited = shaping.providers
    assert google == ProviderPolicy(name="google", match_mx_suffix=("google.com",), max_connections=3,
                                    max_message_rate=Rate(5, 1))
    assert unlimited.max_message_rate is None
    assert shaping.automation == (AutomationRule(name="busy", providers=("google",), regex="busy", action="throttle",
                                                 max_connections=1, duration=Duration(600)),)
    assert build({}) == ShapingConfig()


def _with(section: str, entry: str | None, changes: dict) -> dict:
    """MINIMAL with ``changes`` merged into ``section`` (or into its ``entry``)."""
    data = copy.deepcopy(MINIMAL)
    target = data[section] if entry is None else data[section].setdefault(entry, {})
    target.update(changes)
    return data


@pytest.mark.parametrize("data, path, problem", [
    ({"defaults": {}}, "defaults", "unknown key"),
    (_with("providers", "google", {"max_msg_rate": "5/s"}), "providers.google.max_msg_rate", "unknown key"),
    (_with("providers", "google", {"max_message_rate": "5 per s"}), "providers.google.max_message_rate",
     "expected N/unit"),
    (_with("providers", "google", {"max_connections": 0}), "providers.google.max_connections", "at least 1"),
    (_with("providers", "google", {"max_connections": True}), "providers.google.max_connections", "integer"),
    (_with("providers", "google", {"tls": "sometimes"}), "providers.google.tls", "opportunistic"),
    (_with("providers", "google", {"match_mx_suffix": "google.com"}), "providers.google.match_mx_suffix", "list"),
    (_with("providers", "google", {"name": "other"}), "providers.google.name", "unknown key"),
    (_with("providers", "bare", {"max_connections": 2}), "providers.bare", "match_mx_suffix or match_domain_suffix"),
    (_with("default", None, {"match_mx_suffix": ["x.example"]}), "default.match_mx_suffix", "unknown key"),
    (_with("default", None, {"connect_timeout": "soon"}), "default.connect_timeout", "duration"),
    (_with("automation", "busy", {"providers": ["nope"]}), "automation.busy.providers", "unknown provider 'nope'"),
    (_with("automation", "busy", {"regex": "(unclosed"}), "automation.busy.regex", "invalid regular expression"),
    (_with("automation", "busy", {"action": "pause"}), "automation.busy.action", "suspend, throttle"),
    (_with("automation", "busy", {"max_connections": None}), "automation.busy", "needs max_connections"),
    (_with("automation", "busy", {"action": "suspend"}), "automation.busy", "takes no max_connections"),
    ({"providers": ["google"]}, "providers", "expected a mapping"),
])
def test_build_errors_name_the_path(data, path, problem):
    with pytest.raises(ConfigError) as info:
        build(data)
    assert info.value.path == path
    assert problem in info.value.problem


def test_load_shaping_reports_unreadable_files(tmp_path):
    bad = tmp_path / "providers.yaml"
    bad.write_text("providers: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read shaping config"):
        load_shaping(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_shaping(tmp_path / "missing.yaml")


def test_shipped_config_loads_with_every_named_provider(shipped):
    names = {p.name for p in shipped.providers}
    assert {"google", "yahoo", "outlook", "office365", "apple", "comcast", "gmx-webde", "orange", "mailru",
            "yandex", "zoho", "proton"} <= names
    assert shipped.automation[-1].name == "ip-reputation" and shipped.automation[-1].providers == ()


def test_a_shaping_file_reads_the_same_with_libyaml_and_errors_keep_their_line(tmp_path):
    import yaml
    text = SHIPPED.read_text(encoding="utf-8")
    assert load_shaping(SHIPPED) == build(yaml.safe_load(text))  # libyaml's parse builds what PyYAML's does
    bad = tmp_path / "providers.yaml"
    bad.write_text("default:\n  max_connections: 3\nproviders: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_shaping(bad)
    assert "line 3, column 12" in info.value.problem and "but got '<stream end>'" in info.value.problem  # PyYAML's
