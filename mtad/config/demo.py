"""The embedded default: what ``mtad run`` uses with no config file.

State in ./mtad-state; listeners on 127.0.0.1:2525 (MX), :2587 (submission, STARTTLS) and :2465
(submission, implicit TLS); a demo sending domain with one SMTP user and a demo receiving domain,
whose credentials are generated on first start, kept in the state folder, and printed at start-up.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from mtad.config.schema import Config, SendingDomainConfig, UserConfig
from mtad.config.load import Secret
from mtad.base.passwords import hash_password

DEMO_SENDING_DOMAIN = "demo.mtad.test"
DEMO_RECEIVING_DOMAIN = "inbound.mtad.test"
DEMO_USER = "postmaster"


def demo_credentials(state_dir: Path) -> dict[str, str]:
    """Read or create ``demo-credentials.json`` (mode 0600) in the state folder."""
    path = state_dir / "demo-credentials.json"
    if path.exists():
        return json.loads(path.read_text())
    state_dir.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    creds = {"sending_domain": DEMO_SENDING_DOMAIN, "receiving_domain": DEMO_RECEIVING_DOMAIN,
             "login": f"{DEMO_USER}@{DEMO_SENDING_DOMAIN}", "password": password,
             "password_hash": hash_password(password)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f, indent=2)
    return creds


def embedded_default(state_dir: str = "./mtad-state") -> tuple[Config, dict[str, str]]:
    state = Path(state_dir).resolve()
    creds = demo_credentials(state)
    cfg = Config(
        hostname="localhost",
        state_dir=str(state),
        sending_domains={creds["sending_domain"]: SendingDomainConfig(
            users={DEMO_USER: UserConfig(password_hash=Secret(creds["password_hash"], "state"))})},
        receiving_domains=(creds["receiving_domain"],),
    )
    return cfg, creds
