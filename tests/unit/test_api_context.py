"""The API's collaborators are explicit and typed (issue 11 item 3): no service locator, no App in the API."""

from __future__ import annotations

import ast
import base64
import dataclasses
from pathlib import Path

import aiohttp
from aiohttp import web

from mtad import api
from mtad.api import ApiContext, ApiKey, context, create_app, hash_key
from mtad.config.schema import ApiConfig

API_DIR = Path(api.__file__).parent


def test_the_context_is_a_frozen_dataclass_of_named_collaborators():
    assert dataclasses.is_dataclass(ApiContext) and ApiContext.__dataclass_params__.frozen
    assert "__getattr__" not in vars(ApiContext)  # no lookup by name behind the fields
    names = [f.name for f in dataclasses.fields(ApiContext)]
    assert names == ["config", "store", "base_url", "keys", "running_config", "allowed_networks", "ingress", "routing",
                     "accounts", "apply_accounts", "metrics", "signing_key",
                     "tracking_base_url"]
    assert all(f.type not in ("Any", "dict[str, Any]") for f in dataclasses.fields(ApiContext))


def test_no_api_module_reaches_the_app_or_a_bag_of_extras():
    for path in sorted(API_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("extras", "mtad_config"), f"{path.name}:{node.lineno}"
                if node.attr == "app":  # request.app is aiohttp's Application; a context has no .app
                    assert isinstance(node.value, ast.Name) and node.value.id == "request", f"{path.name}:{node.lineno}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                assert "mtad.app" not in ast.unparse(node).split(), f"{path.name}:{node.lineno}"


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode()}


async def test_keys_are_read_at_each_request_so_a_reload_takes_effect_at_once():
    keys = [ApiKey(hash_key("old-key"))]
    ctx = ApiContext(config=ApiConfig(), store=None, base_url="http://api.test", keys=lambda: keys,
                     running_config=lambda: None, allowed_networks=(), ingress=None, routing=None,
                     accounts=lambda: None, apply_accounts=lambda accounts: None, metrics=lambda: None)

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"base_url": context(request).base_url})

    app = create_app(ctx, [lambda a: a.router.add_get("/v3/whoami", whoami)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v3/whoami"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers=_auth("old-key")) as r:
                assert (r.status, await r.json()) == (200, {"base_url": "http://api.test"})
            keys[:] = [ApiKey(hash_key("new-key"))]  # what App._reload_api_keys does
            async with session.get(url, headers=_auth("old-key")) as r:
                assert r.status == 401
            async with session.get(url, headers=_auth("new-key")) as r:
                assert r.status == 200
    finally:
        await runner.cleanup()
