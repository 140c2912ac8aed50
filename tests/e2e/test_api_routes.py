"""Routes over HTTP: Mailgun's response shapes, and routes created by the API routing the next inbound message
(an SMTP client on the MX listener, an aiohttp receiver on loopback for the forward), without a restart."""

from __future__ import annotations

import smtplib

import pytest

from tests.support.api import api

CONFIG_ROUTE = {"id": "0000000000000000000c0f19", "priority": 5, "description": "from the config file",
                "expression": 'match_recipient("config-only@inbound.test")', "actions": ['forward("ops@example.com")']}
ROUTE_KEYS = {"id", "priority", "description", "expression", "actions", "created_at"}


@pytest.fixture(scope="module")
def daemon(daemon_factory):
    return daemon_factory(routing={"routes": [CONFIG_ROUTE], "allowed_networks": ["127.0.0.0/8"],
                                   "retry_schedule": ["1s"]})



def inbound(daemon, rcpt: str, subject: str = "routed") -> tuple[int, str]:
    """One message to ``rcpt`` on the MX listener; (code, text) of RCPT if refused, else of DATA."""
    with smtplib.SMTP("127.0.0.1", daemon.mx, local_hostname="client.test", timeout=10) as s:
        s.ehlo()
        s.mail("someone@sender.test")
        code, text = s.rcpt(rcpt)
        if code != 250:
            return code, text.decode()
        code, text = s.data(f"From: someone@sender.test\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nHi.\r\n".encode())
        return code, text.decode()


async def create(daemon, **fields) -> dict:
    data = [("priority", str(fields.get("priority", 1))), ("description", fields.get("description", "test")),
            ("expression", fields["expression"])] + [("action", a) for a in fields["actions"]]
    body = await api(daemon, "POST", "/v3/routes", data=data)
    assert body["message"] == "Route has been created"
    return body["route"]


async def test_crud_in_mailgun_shapes(daemon):
    route = await create(daemon, priority=3, description="Sample route",
                         expression="match_recipient('.*@samples.inbound.test')",
                         actions=["forward('http://127.0.0.1:9/messages/')", "stop()"])
    assert set(route) == ROUTE_KEYS
    assert len(route["id"]) == 24 and route["created_at"].endswith(" GMT")
    assert route["actions"] == ["forward('http://127.0.0.1:9/messages/')", "stop()"] and route["priority"] == 3
    got = await api(daemon, "GET", f"/v3/routes/{route['id']}")
    assert got == {"route": route}
    listing = await api(daemon, "GET", "/v3/routes", params={"skip": 0, "limit": 100})
    assert route in listing["items"] and listing["total_count"] == len(listing["items"])
    page = await api(daemon, "GET", "/v3/routes", params={"skip": 1, "limit": 1})
    assert page["total_count"] == listing["total_count"] and page["items"] == listing["items"][1:2]
    updated = await api(daemon, "PUT", f"/v3/routes/{route['id']}", data={"description": "Renamed"})
    assert updated == {**route, "description": "Renamed", "message": "Route has been updated"}
    deleted = await api(daemon, "DELETE", f"/v3/routes/{route['id']}")
    assert deleted == {"message": "Route has been deleted", "id": route["id"]}
    missing = await api(daemon, "GET", f"/v3/routes/{route['id']}", expect=404)
    assert missing == {"message": "Route not found"}
    await api(daemon, "PUT", f"/v3/routes/{route['id']}", data={"priority": "1"}, expect=404)
    await api(daemon, "DELETE", f"/v3/routes/{route['id']}", expect=404)


@pytest.mark.parametrize("data, words", [
    ({"expression": "match_recipient('x@inbound.test'", "action": "stop()"}, "column"),
    ({"expression": "match_everything()", "action": "stop()"}, "unknown filter"),
    ({"expression": "catch_all()", "action": "explode()"}, "unknown action"),
    ({"expression": "catch_all()"}, "'action' parameter is missing"),
    ({"action": "stop()"}, "'expression' parameter is missing"),
    ({"expression": "catch_all()", "action": "stop()", "priority": "high"}, "'priority'"),
])
async def test_invalid_routes_are_refused(daemon, data, words):
    err = await api(daemon, "POST", "/v3/routes", data=data, expect=400)
    assert words in err["message"], err
    listing = await api(daemon, "GET", "/v3/routes")
    assert all(r["expression"] != data.get("expression") for r in listing["items"])


async def test_config_routes_are_listed_and_read_only(daemon):
    listing = await api(daemon, "GET", "/v3/routes")
    config = next(r for r in listing["items"] if r["id"] == CONFIG_ROUTE["id"])
    assert config["expression"] == CONFIG_ROUTE["expression"] and config["priority"] == 5
    err = await api(daemon, "PUT", f"/v3/routes/{CONFIG_ROUTE['id']}", data={"priority": "9"}, expect=403)
    assert "configuration file" in err["message"]
    await api(daemon, "DELETE", f"/v3/routes/{CONFIG_ROUTE['id']}", expect=403)
    match = await api(daemon, "GET", "/v3/routes/match", params={"address": "config-only@inbound.test"})
    assert match["route"]["id"] == CONFIG_ROUTE["id"]


async def test_api_route_routes_the_next_inbound_message_and_changes_apply_at_once(daemon, receiver):
    rcpt = "support@inbound.test"
    code, _ = inbound(daemon, rcpt)
    assert code == 550  # no route yet: refused at RCPT
    route = await create(daemon, expression=f"match_recipient('{rcpt}')",
                         actions=[f"forward('{receiver.url('first')}')"])
    code, text = inbound(daemon, rcpt, "first")
    assert code == 250, text
    posts = await receiver.wait(1)
    assert posts[0].path == "/first" and posts[0].get("recipient") == rcpt and posts[0].get("subject") == "first"
    match = await api(daemon, "GET", "/v3/routes/match", params={"address": rcpt})
    assert match["route"]["id"] == route["id"]
    await api(daemon, "PUT", f"/v3/routes/{route['id']}", data=[("action", f"forward('{receiver.url('second')}')")])
    code, _ = inbound(daemon, rcpt, "second")
    assert code == 250
    posts = await receiver.wait(2)
    assert posts[1].path == "/second" and posts[1].get("subject") == "second"
    await api(daemon, "DELETE", f"/v3/routes/{route['id']}")
    code, _ = inbound(daemon, rcpt)
    assert code == 550
    err = await api(daemon, "GET", "/v3/routes/match", params={"address": rcpt}, expect=404)
    assert err == {"message": "Route not found"}


async def test_api_routes_are_kept_across_a_restart(daemon, receiver):
    rcpt = "kept@inbound.test"
    route = await create(daemon, expression=f"match_recipient('{rcpt}')",
                         actions=[f"forward('{receiver.url('kept')}')"])
    assert daemon.stop() == 0
    daemon.start()
    got = await api(daemon, "GET", f"/v3/routes/{route['id']}")
    assert got["route"] == route
    code, text = inbound(daemon, rcpt)
    assert code == 250, text
    assert (await receiver.wait(1))[0].path == "/kept"
    await api(daemon, "DELETE", f"/v3/routes/{route['id']}")


async def test_routes_test_on_the_command_line_evaluates_the_routes_the_api_created(daemon):
    """``mtad routes test`` reads the API's routes from the running daemon's store (read-only) beside the file's."""
    import subprocess
    import sys
    route = await create(daemon, priority=0, description="for the command line",
                         expression="match_recipient('cli-check@inbound.test')",
                         actions=["forward('http://127.0.0.1:9/cli/')", "stop()"])
    try:
        result = subprocess.run([sys.executable, "-m", "mtad", "routes", "test", "--config", str(daemon.config_path),
                                 "--recipient", "cli-check@inbound.test"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert f"route {route['id']} (priority 0) match_recipient('cli-check@inbound.test')" in result.stdout
        assert "  forward -> http://127.0.0.1:9/cli/" in result.stdout and "Traceback" not in result.stderr
    finally:
        await api(daemon, "DELETE", f"/v3/routes/{route['id']}")
