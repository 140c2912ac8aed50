"""The embedded default: what ``mtad run`` uses with no config file.

State in ./mtad-state; listeners on 127.0.0.1:2525 (MX), :2587 (submission, STARTTLS) and :2465
(submission, implicit TLS); a demo sending domain with one SMTP user and a demo receiving domain,
whose credentials are generated on first start, kept in the state folder, and printed at start-up.
The demo route keeps what no other route takes (``catch_all()`` -> ``store()``), so mail to the demo
receiving domain is accepted and can be read through the API; route forwards may reach loopback URLs
(everything the demo listens on is loopback too). README.md's "Try it" walks through it.

Only ``mtad run`` creates the state folder and the credentials (``create``); the other commands read them.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from mtad.config.schema import Config, RouteConfig, RoutingConfig, SendingDomainConfig, UserConfig
from mtad.config.load import Secret
from mtad.base.passwords import hash_password

DEMO_SENDING_DOMAIN = "demo.mtad.test"
DEMO_RECEIVING_DOMAIN = "inbound.mtad.test"
DEMO_USER = "postmaster"
DEMO_ROUTE = RouteConfig(expression="catch_all()", actions=("store()",), priority=1000,
                         description="demo: keep mail no other route takes (read it through the API)")
DEMO_ALLOWED_NETWORKS = ("127.0.0.0/8", "::1/128")  # route forwards to an application on this machine


def demo_credentials(state_dir: Path, create: bool = True) -> dict[str, str] | None:
    """Read or (``create``) make ``demo-credentials.json`` (mode 0600) in the state folder; None if absent."""
    path = state_dir / "demo-credentials.json"
    if path.exists():
        return json.loads(path.read_text())
    if not create:
        return None
    state_dir.mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(16)  # 128 bits, letters and digits only: never read as an option ("-x...")
    creds = {"sending_domain": DEMO_SENDING_DOMAIN, "receiving_domain": DEMO_RECEIVING_DOMAIN,
             "login": f"{DEMO_USER}@{DEMO_SENDING_DOMAIN}", "password": password,
             "password_hash": hash_password(password)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f, indent=2)
    return creds


def embedded_default(state_dir: str = "./mtad-state", create: bool = True) -> tuple[Config, dict[str, str] | None]:
    """The embedded default and its demo credentials (None, and no SMTP user, if absent and not ``create``)."""
    state = Path(state_dir).resolve()
    creds = demo_credentials(state, create)
    users = {DEMO_USER: UserConfig(password_hash=Secret(creds["password_hash"], "state"))} if creds else {}
    cfg = Config(
        hostname="localhost",
        state_dir=str(state),
        sending_domains={DEMO_SENDING_DOMAIN: SendingDomainConfig(users=users)},
        receiving_domains=(DEMO_RECEIVING_DOMAIN,),
        routing=RoutingConfig(routes=(DEMO_ROUTE,), allowed_networks=DEMO_ALLOWED_NETWORKS),
    )
    return cfg, creds
