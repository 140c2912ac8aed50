"""The suite's one client of mtad's HTTP API (aiohttp), with the test key.

``await api(target, method, path, expect=200, **kwargs)`` returns the decoded body (JSON when the answer is
JSON, else bytes) after asserting its status (``expect=None``: any status). ``target`` is anything with an
``api_url`` (a ``Mtad``, an events ``World``); ``path`` may also be a whole URL (a ``next`` link). ``kwargs`` go
to aiohttp (``data=``, ``params=``, ``headers=``); ``auth=`` replaces the test key's header (``{}``: none).
``api_sync`` is the same call for synchronous tests.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp

from tests.support.daemon import API_KEY


def basic_auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


AUTH = basic_auth("api", API_KEY)


async def api(target: Any, method: str, path: str, *, expect: int | None = 200, **kwargs: Any) -> Any:
    url = path if path.startswith("http") else target.api_url + path
    async with aiohttp.ClientSession(headers=kwargs.pop("auth", AUTH)) as session:
        async with session.request(method, url, **kwargs) as resp:
            body = await resp.json(content_type=None) if resp.content_type == "application/json" else await resp.read()
            if expect is not None:
                assert resp.status == expect, (method, path, resp.status, body)
            return body


def api_sync(target: Any, method: str, path: str, *, expect: int | None = 200, **kwargs: Any) -> Any:
    return asyncio.run(api(target, method, path, expect=expect, **kwargs))
