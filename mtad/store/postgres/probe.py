"""Connect once to the configured PostgreSQL and say what is there: ``mtad check-config``'s store check.

``connect_options(store, node_id)`` are the driver's connection settings every mtad connection uses (the backend's
pool takes the same). ``probe(store, node_id)`` opens one connection and returns a ``ServerInfo`` (server version,
schema version or none yet, durability settings), or raises ``ConfigError("store.dsn", one line)`` for a wrong DSN,
a refused login, a missing database or an unreachable server. Messages never contain the password.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from mtad.base.errors import ConfigError
from mtad.config.schema import StoreConfig

# The backend's migrations keep one row per applied schema version here (``mtad store migrate``, planned).
SCHEMA_TABLE = "mtad_schema"
CONNECT_TIMEOUT = 10.0  # seconds for one connection attempt, login included


@dataclass(frozen=True)
class ServerInfo:
    """What ``probe`` found. ``where`` is ``HOST:PORT/DATABASE`` (no user, no password)."""

    where: str
    server_version: str  # as the server says it: ``15.18 (Debian 15.18-0+deb12u1)``
    schema_version: int | None  # None: no mtad schema in this database yet
    fsync: str
    synchronous_commit: str

    def warnings(self) -> tuple[str, ...]:
        """Server settings under which an acknowledged message could be lost in a crash."""
        found = []
        if self.fsync != "on":
            found.append(f"fsync is {self.fsync} on the server: a crash can lose committed mail")
        if self.synchronous_commit == "off":
            found.append("synchronous_commit is off on the server: a crash can lose mail already answered 250")
        return tuple(found)


def where(dsn: str) -> str:
    """``HOST:PORT/DATABASE`` of a ``postgresql://`` URI, for messages (never the user or password)."""
    try:
        parts = urlsplit(dsn)
        hosts = parts.netloc.rpartition("@")[2] or "localhost"
        database = unquote(parts.path.lstrip("/")) or unquote(parts.username or "") or "(default database)"
    except ValueError:
        return "(the server in store.dsn)"
    if ":" not in hosts.rpartition("]")[2]:
        hosts += ":5432"
    return f"{hosts}/{database}"


def connect_options(store: StoreConfig, node_id: str) -> dict:
    """Keyword arguments for ``psycopg.connect``: the DSN, the connect timeout, the statement timeout and a name
    (every connection mtad opens, the store's and the probe's, uses these)."""
    assert store.dsn is not None
    timeout_ms = max(1, round(store.statement_timeout.seconds * 1000))
    return {
        "conninfo": store.dsn.reveal(),
        "connect_timeout": max(1, round(CONNECT_TIMEOUT)),
        "options": f"-c statement_timeout={timeout_ms}",
        "application_name": f"mtad {node_id}"[:63],  # pg_stat_activity shows which node holds a connection
        "autocommit": True,  # the store issues BEGIN/COMMIT itself (group commit)
    }


def connect(store: StoreConfig, node_id: str):
    """One new ``psycopg.Connection`` with ``connect_options``."""
    import psycopg
    return psycopg.connect(**connect_options(store, node_id))


def _password(dsn: str) -> str | None:
    try:
        return urlsplit(dsn).password
    except ValueError:
        return None


def _explain(exc: BaseException, place: str) -> str:
    """One line for an exception from connecting or probing."""
    import psycopg
    if isinstance(exc, psycopg.errors.InvalidPassword | psycopg.errors.InvalidAuthorizationSpecification):
        return f"PostgreSQL at {place} refused the login: {exc}"
    if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
        # libpq's own message: the server was not reached, or refused the login before answering in SQL terms
        text = " ".join(str(exc).split())
        if "password authentication failed" in text or "no password supplied" in text:
            return f"PostgreSQL at {place} refused the login: {text}"
        if "timeout expired" in text:
            return f"no answer from PostgreSQL at {place} within {CONNECT_TIMEOUT:g}s"
        if "Connection refused" in text:
            return f"cannot connect to PostgreSQL at {place}: connection refused"
        if "could not translate host name" in text:
            return f"cannot connect to PostgreSQL at {place}: cannot resolve the host name"
        return f"cannot connect to PostgreSQL at {place}: {text}"
    if isinstance(exc, psycopg.Error):
        return f"PostgreSQL at {place} answered: {exc}"
    if isinstance(exc, ValueError | psycopg.ProgrammingError):
        return f"not a usable DSN: {exc}"
    return f"cannot use PostgreSQL at {place}: {type(exc).__name__}: {exc}"


def _probe(store: StoreConfig, node_id: str) -> ServerInfo:
    options = connect_options(store, node_id)
    with connect(store, node_id) as conn:
        def one(sql: str, *args):
            return conn.execute(sql, args).fetchone()[0]
        version = one("SHOW server_version")
        fsync = one("SHOW fsync")
        sync = one("SHOW synchronous_commit")
        schema = None
        if one("SELECT to_regclass(%s) IS NOT NULL", SCHEMA_TABLE):
            schema = one(f"SELECT max(version) FROM {SCHEMA_TABLE}")
        return ServerInfo(where(options["conninfo"]), version, schema, fsync, sync)


def probe(store: StoreConfig, node_id: str) -> ServerInfo:
    """Connect once and report (a blocking call: for the command line). ``ConfigError("store.dsn", ...)`` else."""
    if store.dsn is None or not store.dsn.read:
        raise ValueError("probe needs a DSN that was read")
    try:
        import psycopg  # noqa: F401 - a dependency of mtad; imported only when this backend is configured
    except ImportError:
        raise ConfigError("store.backend", "postgresql needs the Python package psycopg 3"
                                           " (pip install 'psycopg[binary]')") from None
    try:
        return _probe(store, node_id)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line naming the setting, never a traceback
        raise ConfigError("store.dsn", explain(exc, store.dsn.reveal())) from None


def explain(exc: BaseException, dsn: str) -> str:
    """One line for a failure to connect to or probe the server of ``dsn``, without its password."""
    message = _explain(exc, where(dsn))
    password = _password(dsn)
    if password:
        message = message.replace(password, "********")
    return " ".join(message.split())
