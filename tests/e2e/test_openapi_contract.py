"""docs/openapi.yaml checked against the running server: the document is a valid OpenAPI 3.1 description,
every documented path and method is served (routed: not the router's own 404/405), and every JSON answer
whose status the document describes validates against the documented schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from tests.e2e.events_support import World, running_world, events
from tests.support.api import AUTH, api
from tests.support.wait import wait_for

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
METHOD_ORDER = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def spec() -> dict:
    data = yaml.safe_load(SPEC_PATH.read_text())
    validate(data)
    return data


@pytest.fixture(scope="module")
def world(tmp_path_factory, certs):
    with running_world(tmp_path_factory, certs, "openapi") as w:
        yield w


def resolve(spec: dict, obj: Any) -> Any:
    while isinstance(obj, dict) and "$ref" in obj and obj["$ref"].startswith("#/components/responses/"):
        obj = spec["components"]["responses"][obj["$ref"].rsplit("/", 1)[1]]
    return obj


def documented_schema(spec: dict, operation: dict, status: int) -> dict | None:
    response = resolve(spec, (operation.get("responses") or {}).get(str(status)))
    if not response:
        return None
    schema = ((response.get("content") or {}).get("application/json") or {}).get("schema")
    if schema is None:
        return None
    return {**schema, "components": spec["components"]}  # local $refs resolve against this root


async def prepare(world: World) -> dict[str, str]:
    """Data for the path parameters: an event page token, a tag, suppression entries, a webhook."""
    world.send(["ok@dest.test"], "Contract", tags=("news",))
    await wait_for(lambda: events(world, "example.com", event="delivered"), 15, "a delivery")
    page = await api(world, "GET", "/v3/example.com/events", params={"limit": "1"})
    for kind in ("bounces", "unsubscribes", "complaints"):
        await api(world, "POST", f"/v3/example.com/{kind}", data={"address": "known@x.test"})
    await api(world, "POST", "/v3/example.com/whitelists", data={"address": "known@x.test"})
    await api(world, "POST", "/v3/domains/example.com/webhooks",
              data=[("id", "delivered"), ("url", world.receiver.url("contract"))])
    return {"domain": "example.com", "name": "example.com", "address": "known@x.test", "webhook": "delivered",
            "tag": "news", "page": page["paging"]["next"].rsplit("/", 1)[1]}


async def test_every_documented_operation_is_served_and_matches_its_schema(spec, world):
    values = await prepare(world)
    problems = []
    checked = 0
    async with aiohttp.ClientSession(headers=AUTH) as session:
        for path, item in spec["paths"].items():
            url = world.api_url + re.sub(r"\{([^}]+)\}", lambda m: values.get(m.group(1), "x"), path)
            for method in sorted((m for m in item if m in METHOD_ORDER), key=METHOD_ORDER.index):
                operation = item[method]
                kwargs: dict[str, Any] = {}
                if method in ("post", "put", "patch"):
                    body = ((operation.get("requestBody") or {}).get("content") or {})
                    kwargs = {"json": {}} if list(body)[:1] == ["application/json"] else {"data": {}}
                async with session.request(method.upper(), url, **kwargs) as resp:
                    checked += 1
                    text = await resp.text()
                    is_json = resp.content_type == "application/json"
                    data = await resp.json() if is_json else None
                    routed = not (resp.status == 405 or (resp.status == 404 and (data or {}).get("message") == "Not Found"))
                    if not routed:
                        problems.append(f"{method.upper()} {path}: {resp.status} {text[:100]}")
                        continue
                    if resp.status >= 500:
                        problems.append(f"{method.upper()} {path}: {resp.status} {text[:200]}")
                        continue
                    schema = documented_schema(spec, operation, resp.status)
                    if schema is not None:
                        if not is_json:
                            problems.append(f"{method.upper()} {path}: {resp.status} is documented as JSON, got "
                                            f"{resp.content_type}")
                            continue
                        errors = sorted(Draft202012Validator(schema).iter_errors(data), key=str)
                        if errors:
                            problems.append(f"{method.upper()} {path}: {resp.status} does not match the documented"
                                            f" schema: {errors[0].message} at {list(errors[0].absolute_path)}")
    assert checked >= 40
    assert not problems, "\n".join(problems)


async def test_responses_of_a_few_endpoints_validate_with_data_in_them(spec, world):
    """The sweep above sees empty lists where nothing was created; here the lists hold entries."""
    values = await prepare(world)
    cases = [
        ("/v3/{domain}/events", "get", {"limit": "5"}),
        ("/v3/{domain}/bounces", "get", {}),
        ("/v3/{domain}/unsubscribes", "get", {}),
        ("/v3/{domain}/whitelists", "get", {}),
        ("/v3/{domain}/stats/total", "get", {"event": "delivered", "duration": "1d"}),
        ("/v3/stats/filter", "get", {"event": "accepted", "group": "tag", "duration": "1d"}),
        ("/v3/domains/{domain}/webhooks", "get", {}),
        ("/v3/{domain}/tags", "get", {}),
        ("/v3/{domain}/aggregates/providers", "get", {}),
    ]
    for path, method, params in cases:
        data = await api(world, method.upper(), path.replace("{domain}", values["domain"]), params=params)
        assert data.get("items", data.get("stats", [None])) or data.get("webhooks") or data.get("providers"), path
        schema = documented_schema(spec, spec["paths"][path][method], 200)
        Draft202012Validator(schema).validate(data)
    logs = await api(world, "POST", "/v1/analytics/logs", json={"include_totals": True})
    assert logs["items"]
    Draft202012Validator(documented_schema(spec, spec["paths"]["/v1/analytics/logs"]["post"], 200)).validate(logs)
