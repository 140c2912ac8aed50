"""Shared fixtures: trustme certificates, and mtad started from a config file on loopback ports."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.support.daemon import Mtad, base_config, daemon_store
from tests.support.postgres import pg_database, postgres  # noqa: F401 (fixtures)

pytest_plugins = ["tests.support.xdist_plan"]  # how the suite is spread over xdist's workers


@dataclass
class Certs:
    ca: trustme.CA
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    ca = trustme.CA()
    server = ca.issue_cert("mtad.test", "localhost", "127.0.0.1")
    folder = tmp_path_factory.mktemp("certs")
    cert, key = folder / "cert.pem", folder / "key.pem"
    server.private_key_pem.write_to_path(key)
    server.cert_chain_pems[0].write_to_path(cert)
    return Certs(ca, cert, key)


@pytest.fixture(scope="module")
def store_backend() -> str:
    """The store backend of the daemons a module starts: ``MTAD_TEST_STORE`` (default sqlite). A module runs on
    both with ``from tests.support.stores import both_backends as store_backend``."""
    return os.environ.get("MTAD_TEST_STORE", "sqlite")


@pytest.fixture(scope="module", autouse=True)
def daemons_store(store_backend: str, request):
    """Daemons started by the module's tests get a store of ``store_backend`` (``tests.support.daemon``). A
    module-scoped fixture that starts daemons names it as a parameter, so that it is made again for each backend
    of a module that runs on both."""
    if store_backend != "postgresql":
        yield
        return
    server = request.getfixturevalue("postgres")
    with daemon_store(lambda: {"backend": "postgresql", "dsn": server.create_database()[1]}):
        yield


@pytest.fixture
def mtad_config(tmp_path: Path, certs: Certs) -> dict:
    """The config dict a test may change before starting mtad with the ``mtad`` fixture."""
    return base_config(tmp_path, certs)


@pytest.fixture
def mtad_factory(tmp_path: Path, mtad_config: dict):
    started: list[Mtad] = []

    def make(cfg: dict | None = None) -> Mtad:
        daemon = Mtad(tmp_path, cfg or mtad_config)
        started.append(daemon)
        return daemon
    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture
def mtad(mtad_factory) -> Mtad:
    return mtad_factory().start()
