"""A receiving domain's inbound authentication policy over HTTP (issue 15): mtad's sub-resource of a domain.

- ``GET /v3/domains/{name}/authentication``: the policy that applies to the domain now, where it comes from
  (``config``: the file's ``authentication.domains``; ``api``: set here; ``default``: ``authentication.policy``),
  and whether the checks run (``enabled``) under which ``authserv_id``;
- ``PUT /v3/domains/{name}/authentication`` with any of ``dmarc_reject``, ``dmarc_quarantine``, ``spf_fail``,
  ``no_auth``, each ``reject``, ``quarantine`` or ``ignore``: the fields given replace those of the policy now in
  force, the others keep their value; it applies at once on every node. A domain of the config file, or one with
  an entry in the file's ``authentication.domains``, is read-only here (403), like the file's other entries.
"""

from __future__ import annotations

import dataclasses
import time
import typing
from typing import Any

from aiohttp import web

from mtad.api import context, error
from mtad.api.formdata import read_post
from mtad.config.schema import AuthAction, AuthPolicyConfig

ACTIONS = typing.get_args(AuthAction)
FIELDS = tuple(f.name for f in dataclasses.fields(AuthPolicyConfig))


def _known(request: web.Request, name: str) -> str | None:
    """``config`` or ``api`` for a domain mtad knows, else None."""
    ctx = context(request)
    cfg = ctx.running_config()
    if name in cfg.sending_domains or name in {d.lower() for d in cfg.receiving_domains}:
        return "config"
    return "api" if name in ctx.accounts().domains else None


def _answer(request: web.Request, name: str) -> dict[str, Any]:
    ctx = context(request)
    auth = ctx.running_config().authentication
    verifier = ctx.ingress.verifier
    stored = verifier.stored_policies if verifier is not None else {}
    source = "config" if name in auth.domains else "api" if name in stored else "default"
    policy = verifier.policy(name) if verifier is not None else auth.policy
    return {"domain": name, "enabled": auth.enabled, "authserv_id": auth.authserv_id or ctx.ingress.hostname,
            "source": source, "policy": dataclasses.asdict(policy)}


async def get_policy(request: web.Request) -> web.Response:
    name = request.match_info["name"].lower()
    if _known(request, name) is None:
        return error(404, "Domain not found")
    return web.json_response(_answer(request, name))


async def put_policy(request: web.Request) -> web.Response:
    ctx = context(request)
    name = request.match_info["name"].lower()
    source = _known(request, name)
    if source is None:
        return error(404, "Domain not found")
    form = await read_post(request)
    changes = {}
    for field in FIELDS:
        value = form.get(field)
        if value is None or value == "":
            continue
        value = str(value).strip().lower()
        if value not in ACTIONS:
            return error(400, f"'{field}' must be one of {', '.join(ACTIONS)}")
        changes[field] = value
    if not changes:
        return error(400, f"give at least one of {', '.join(FIELDS)}")
    if source == "config" or name in ctx.running_config().authentication.domains:
        return error(403, f"Domain {name}'s policy is defined in the configuration file and is read-only "
                          "through the API")
    verifier = ctx.ingress.verifier
    current = verifier.policy(name) if verifier is not None else ctx.running_config().authentication.policy
    await ctx.store.set_auth_policy(name, dataclasses.replace(current, **changes), time.time())
    if verifier is not None:
        verifier.stored_policies = await ctx.store.load_auth_policies()
    body = _answer(request, name)
    body["message"] = "Domain authentication policy updated"
    return web.json_response(body)


def setup(app: web.Application) -> None:
    app.router.add_get("/v3/domains/{name}/authentication", get_policy)
    app.router.add_put("/v3/domains/{name}/authentication", put_policy)
