"""``mtad`` command line: run, check-config, passwd, queue, campaigns, store (migrate, copy), ...

Only ``mtad run`` creates a state folder. The other commands find the state where ``mtad run`` keeps it
(``--config FILE``'s ``state_dir``, else ``--state-dir DIR``, else ``./mtad-state``); read-only ones open the
store read-only, and without a store every command says so and exits 1 instead of making anything.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from pathlib import Path

from mtad.config import schema as config_mod
from mtad.config.schema import Config
from mtad.base.errors import ConfigError, StoreError


class NoState(Exception):
    """The command needs the store of a daemon that has run; there is none where it looked."""


def _load_file(path: str) -> Config:
    """A config file, its routes compiled (``ConfigError`` names the route at fault)."""
    from mtad.inbound.routing import check_config_routes
    cfg = config_mod.load(path)
    check_config_routes(cfg.routing)
    return cfg


def _load(args: argparse.Namespace, create: bool = False) -> tuple[Config, dict | None]:
    """The config file's configuration, else the embedded default (its state made only if ``create``)."""
    if getattr(args, "config", None):
        return _load_file(args.config), None
    from mtad.config.demo import embedded_default
    return embedded_default(getattr(args, "state_dir", None) or "./mtad-state", create=create)


def cmd_run(args: argparse.Namespace) -> int:
    import gc
    # No cyclic GC while the daemon imports and starts (its passes over the growing heap cost ~0.1 s of CPU per
    # start and find little: what start builds lives as long as the process); App.run freezes what start built
    # and turns the GC back on once the listeners are up.
    gc.disable()
    from mtad.base import logsetup
    from mtad.app import run
    from mtad.base.memory import pin_mmap_threshold
    pin_mmap_threshold()  # large messages' memory goes back to the system (mtad.base.memory)
    cfg, demo = _load(args, create=True)
    logsetup.setup(cfg.log.level, cfg.log.format)
    if demo:
        print("mtad: no --config given; running the embedded default", file=sys.stderr)
        print(f"  state folder:     {cfg.state_path}", file=sys.stderr)
        for listener in cfg.listeners:
            print(f"  listener:         {listener.address} ({listener.role}, tls={listener.tls})", file=sys.stderr)
        print(f"  sending domain:   {demo['sending_domain']}", file=sys.stderr)
        print(f"  SMTP user:        {demo['login']}", file=sys.stderr)
        print(f"  SMTP password:    {demo['password']}", file=sys.stderr)
        print(f"  receiving domain: {demo['receiving_domain']}", file=sys.stderr)
        if cfg.api.enabled:
            from mtad.app import api_keys
            _, key = api_keys(cfg)
            print(f"  HTTP API:         http://{cfg.api.address}/v3  (user api, key {key})", file=sys.stderr)
            if cfg.ui.enabled:
                print(f"  web panel:        http://{cfg.api.address}/ui/  (sign in with the API key)", file=sys.stderr)
        print(f"  (kept in {cfg.state_path / 'demo-credentials.json'})", file=sys.stderr, flush=True)
    return run(cfg, Path(args.config).resolve() if args.config else None)


def cmd_check_config(args: argparse.Namespace) -> int:
    from contextlib import nullcontext
    from mtad.config.load import SecretError, unread_secrets
    try:
        with unread_secrets() if args.no_secrets else nullcontext():
            cfg = _load_file(args.file)
    except SecretError as exc:
        print(f"mtad: configuration error: {exc}\n(`mtad check-config --no-secrets {args.file}` checks the rest"
              " without reading secret files and environment variables)", file=sys.stderr)
        return 2
    print(config_mod.effective(cfg), end="")
    if cfg.store.backend == "postgresql":
        _check_postgresql(cfg)
    print(f"# {args.file}: OK{' (secrets not read)' if args.no_secrets else ''}", file=sys.stderr)
    return 0


def _check_postgresql(cfg: Config) -> None:
    """Connect to the configured PostgreSQL and report its version and mtad's schema version on it.
    A failure is a ``ConfigError`` naming ``store.dsn`` (exit 2)."""
    from mtad.store.postgres.probe import probe, where
    assert cfg.store.dsn is not None
    if not cfg.store.dsn.read:
        print(f"# store.dsn: not read ({cfg.store.dsn.source}), so the connection was not checked", file=sys.stderr)
        return
    sys.stdout.flush()  # the effective configuration before any error about it
    info = probe(cfg.store, cfg.node_id)
    schema = "no schema yet" if info.schema_version is None else f"schema version {info.schema_version}"
    print(f"# store.dsn: PostgreSQL {info.server_version} at {info.where}, {schema}", file=sys.stderr)
    for warning in info.warnings():
        print(f"# store.dsn: warning: {warning}", file=sys.stderr)


def cmd_passwd(args: argparse.Namespace) -> int:
    from mtad.base.passwords import hash_password
    if args.stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("mtad passwd: the passwords differ", file=sys.stderr)
            return 1
    if not password:
        print("mtad passwd: empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def cmd_apikey(args: argparse.Namespace) -> int:
    import secrets
    from mtad.api import hash_key
    key = "key-" + secrets.token_hex(16)
    print(f"key:      {key}")
    print(f"key_hash: {hash_key(key)}")
    return 0


def _no_state(cfg: Config) -> NoState:
    return NoState(f"no mtad state at {cfg.state_path} (no store {cfg.store_path.name} there): run this where "
                   "`mtad run` keeps its state, or give --state-dir DIR or --config FILE")


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _with_store(args: argparse.Namespace, action, *, write: bool = False):
    """``action(store)`` (a coroutine) on the state's store: opened for writing only if ``write`` (a store an
    older mtad left is migrated to this schema first), else read-only (a read-only command never writes)."""
    import asyncio
    from mtad.store import new_store
    cfg, _ = _load(args)
    postgresql = cfg.store.backend == "postgresql"
    if not postgresql and not cfg.store_path.exists():
        raise _no_state(cfg)
    store = new_store(cfg.store, cfg.store_path, cfg.node_id, read_only=not write)

    async def run():
        if write or postgresql:  # PostgreSQL: connects (a read-only store checks the schema, starts no writer)
            store.open()
        try:
            return await action(store)
        finally:
            store.close()
    return asyncio.run(run())


def cmd_queue_list(args: argparse.Namespace) -> int:
    rows = _with_store(args, lambda store: store.list_queue(args.limit))
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return 0
    print(f"{'QUEUE ID':<20} {'KIND':<8} {'STATE':<9} {'ATT':>3} {'NEXT ATTEMPT':<19} {'DESTINATION':<24} SENDER -> RECIPIENTS")
    for r in rows:
        print(f"{r.queue_id:<20} {r.kind:<8} {r.state:<9} {r.attempts:>3} {_when(r.next_attempt_at):<19} "
              f"{r.destination[:24]:<24} <{r.sender}> -> {', '.join(r.recipients)}"
              + (f"  [on {r.locked_by}]" if r.state == "active" and r.locked_by else ""))
    print(f"-- {len(rows)} pending")
    return 0


def cmd_queue_show(args: argparse.Namespace) -> int:
    from mtad.outbound import queueadmin
    info = _with_store(args, lambda store: queueadmin.show(store, args.queue_id))
    if info is None:
        print(f"mtad: no message {args.queue_id}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_queue_action(args: argparse.Namespace) -> int:
    from mtad.outbound import queueadmin
    action = args.queue_command

    def write(act):
        return _with_store(args, act, write=True)
    if action == "flush":
        n = write(lambda store: queueadmin.flush(store, domain=args.domain))
        print(f"{n} deliveries due now")
    elif action == "retry":
        n = write(lambda store: queueadmin.flush(store, queue_id=args.queue_id))
        print(f"{args.queue_id}: {n} deliveries due now")
    elif action == "delete":
        if not write(lambda store: queueadmin.delete(store, args.queue_id)):
            print(f"mtad: no message {args.queue_id}", file=sys.stderr)
            return 1
        print(f"{args.queue_id}: deleted")
    elif action == "bounce":
        n = write(lambda store: queueadmin.bounce(store, args.queue_id))
        print(f"{args.queue_id}: {n} recipients failed")
    elif action in ("pause", "resume"):
        kind, value = next((k, getattr(args, k)) for k in queueadmin.PAUSE_KINDS if getattr(args, k))
        if action == "pause":
            write(lambda store: queueadmin.pause(store, kind, value))
            print(f"paused {kind} {value}")
        else:
            n = write(lambda store: queueadmin.resume(store, kind, value))
            print(f"resumed {kind} {value} ({n} held deliveries back in the queue)")
    return 0


def _new_password(args: argparse.Namespace, what: str) -> str | None:
    """A password from standard input (``--stdin``) or typed twice; None (after saying why) if unusable."""
    if args.stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print(f"mtad {what}: the passwords differ", file=sys.stderr)
            return None
    if len(password) < 8:
        print(f"mtad {what}: a panel password needs at least 8 characters", file=sys.stderr)
        return None
    return password


def cmd_ui_user(args: argparse.Namespace) -> int:
    """``mtad ui-user add|passwd|remove|list``: the web panel's users, in the store (issue 17)."""
    import re
    from mtad.base.passwords import hash_password
    from mtad.store.panelusers import PanelUser
    action = args.ui_user_command
    if action == "list":
        users = _with_store(args, lambda store: store.panel_users())
        for user in users:
            print(f"{user.login}  (since {_when(user.created_at)})")
        return 0
    login = args.login.strip().lower()
    if not re.fullmatch(r"[a-z0-9][a-z0-9._@+-]{0,63}", login) or login == "api":
        print("mtad ui-user: a login is 1 to 64 letters, digits, '.', '_', '@', '+' or '-' (and not 'api',"
              " which signs in with an API key)", file=sys.stderr)
        return 2
    if action == "remove":
        if not _with_store(args, lambda store: store.delete_panel_user(login), write=True):
            print(f"mtad ui-user: no panel user {login}", file=sys.stderr)
            return 1
        print(f"removed panel user {login} (a session already open ends when it expires)")
        return 0
    password = _new_password(args, f"ui-user {action}")
    if password is None:
        return 1
    hashed = hash_password(password)
    if action == "add":
        if not _with_store(args, lambda store: store.add_panel_user(PanelUser(login, hashed, time.time())),
                           write=True):
            print(f"mtad ui-user: {login} exists (change its password with `mtad ui-user passwd {login}`)",
                  file=sys.stderr)
            return 1
        print(f"added panel user {login}")
    else:
        if not _with_store(args, lambda store: store.set_panel_password(login, hashed), write=True):
            print(f"mtad ui-user: no panel user {login}", file=sys.stderr)
            return 1
        print(f"changed the password of panel user {login}")


def _campaigns_read(args: argparse.Namespace, action):
    """``_with_store`` read-only, for the campaigns commands: a store older than the campaigns (its schema lacks
    their tables, and a read-only command does not migrate it) is said so, not a traceback."""
    try:
        return _with_store(args, action)
    except Exception as exc:  # noqa: BLE001 - only the store's "no such table" is ours to explain
        if "no such table: campaign" not in str(exc):
            raise
        raise NoState("this store predates campaigns (schema older than version 15): `mtad store migrate` or"
                      " `mtad run` upgrades it") from None


def cmd_campaigns_list(args: argparse.Namespace) -> int:
    """The campaigns (of one domain, or all) with their counters; read-only."""
    from mtad.events.campaigns import campaign_json
    total, found = _campaigns_read(args, lambda store: store.list_campaigns(
        args.domain.lower() if args.domain else None, args.limit, 0))
    if args.json:
        print(json.dumps({"total_count": total, "items": [{"domain": c.domain, **campaign_json(c)} for c in found]},
                         indent=2))
        return 0
    print(f"{'DOMAIN':<24} {'ID':<24} {'SUBMIT':>7} {'DELIV':>7} {'OPEN':>7} {'CLICK':>7} {'UNSUB':>6} {'COMPL':>6}"
          f" {'BOUNCE':>6} {'DROP':>6} CREATED  NAME")
    for c in found:
        print(f"{c.domain[:24]:<24} {c.id[:24]:<24} {c.count('submitted'):>7} {c.count('delivered'):>7}"
              f" {c.count('opened'):>7} {c.count('clicked'):>7} {c.count('unsubscribed'):>6}"
              f" {c.count('complained'):>6} {c.count('bounced'):>6} {c.count('dropped'):>6} {_when(c.created_at)}"
              f"  {c.name}")
    print(f"-- {len(found)} of {total} campaigns")
    return 0


def cmd_campaigns_show(args: argparse.Namespace) -> int:
    """One campaign: its counters and the stats of ``GET .../campaigns/ID/stats``; read-only."""
    from mtad.events.campaigns import campaign_json, stats_json

    async def read(store):
        return await store.get_campaign(args.domain.lower(), args.id), await store.campaign_stats(args.domain.lower(), args.id)
    found, stats = _campaigns_read(args, read)
    if found is None or stats is None:
        print(f"mtad: no campaign {args.id} on {args.domain}", file=sys.stderr)
        return 1
    print(json.dumps({"domain": found.domain, **campaign_json(found), "stats": stats_json(stats[0])}, indent=2))
    return 0


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    import os
    from mtad.mail import dkim
    cfg, _ = _load(args)
    folder = Path(args.out_dir) if args.out_dir else cfg.state_path / "dkim"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{args.domain}.{args.selector}.pem"
    if path.exists() and not args.force:
        print(f"mtad: {path} exists (use --force to replace it)", file=sys.stderr)
        return 1
    pem = dkim.generate_key(args.algorithm, args.bits)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    name, value = dkim.dns_record(dkim.load_key(args.domain, args.selector, pem))
    print(f"# key written to {path}; add to the config:")
    print(f"#   sending_domains: {{{args.domain}: {{dkim: [{{selector: {args.selector}, key_file: {path}}}]}}}}")
    print("# publish this DNS TXT record:")
    print(f'{name}. IN TXT "{value}"')
    return 0


def cmd_routes_test(args: argparse.Namespace) -> int:
    from mtad.inbound.router import RouteTable
    from mtad.inbound.routing import config_routes  # not mtad.app: the whole daemon, a second of imports
    cfg, _ = _load(args)
    routes = config_routes(cfg)
    if cfg.store.backend == "postgresql" or cfg.store_path.exists():  # routes created through the API too
        from mtad.inbound.routing import route_of
        routes += [route_of(record) for record in _with_store(args, lambda store: store.load_routes())]
    table = RouteTable(routes, allow_backtracking=cfg.routing.allow_backtracking_regex)
    headers = []
    for h in args.header or []:
        name, _, value = h.partition(":")
        headers.append((name.strip(), value.strip()))
    local, at, domain = args.recipient.rpartition("@")
    recipient = f"{local}{at}{domain.lower()}"  # as the MX listener takes it: the local part keeps its case
    print(f"recipient {recipient}: would be {'accepted' if table.would_handle(recipient) else 'refused (550 5.1.1)'}"
          " at RCPT time")
    matches = table.evaluate(recipient, headers)
    if not matches:
        print("no route matches: the message would be accepted and not forwarded" if table.would_handle(recipient)
              else "no route matches")
        return 1
    for m in matches:
        print(f"route {m.route.id} (priority {m.route.priority}) {m.route.expression}")
        for action in m.actions:
            if action.kind == "forward":
                for dest in action.destinations:
                    print(f"  forward -> {dest}")
            elif action.kind == "store":
                print(f"  store{' (notify ' + action.notify + ')' if action.notify else ''}")
            else:
                print("  stop")
        for problem in m.problems:
            print(f"  ! {problem}")
    return 0


def cmd_webhooks_redeliver(args: argparse.Namespace) -> int:
    from mtad.events import query as eventquery

    def when(text: str, name: str) -> float:
        try:
            return time.time() - eventquery.parse_duration(text, name)  # 2h, 3d: that long ago
        except eventquery.QueryError:
            return eventquery.parse_time(text, name)
    try:
        since = when(args.since, "--since")
        until = when(args.until, "--until") if args.until else None
    except eventquery.QueryError as exc:
        print(f"mtad: {exc}", file=sys.stderr)
        return 2
    n = _with_store(args, lambda store: store.redeliver_webhooks(since=since, until=until, kinds=args.event or (),
                                                                domain=args.domain, url=args.url), write=True)
    print(f"{n} webhook POSTs queued (events since {eventquery.rfc2822(since)}); the running daemon sends them")
    return 0


def cmd_store_migrate(args: argparse.Namespace) -> int:
    """Upgrade the configured store's schema, or create it in an empty PostgreSQL database; a schema newer than
    this mtad exits 2."""
    from mtad.store.migrations import NewerSchema
    from mtad.store.upgrade import migrate_store
    cfg, _ = _load(args)
    if cfg.store.backend == "sqlite" and not cfg.store_path.exists():
        raise _no_state(cfg)  # only `mtad run` makes a state folder; PostgreSQL's schema is made here
    try:
        done = migrate_store(cfg.store, cfg.store_path, cfg.node_id)
    except NewerSchema as exc:
        print(f"mtad: {exc}", file=sys.stderr)
        return 2
    name = "PostgreSQL at " + done.where if done.backend == "postgresql" else done.where
    if done.before == done.after:
        print(f"{name}: schema version {done.after}, current: nothing to do")
    elif done.before == 0:
        print(f"{name}: schema created, version 0 -> {done.after}")
    else:
        print(f"{name}: schema version {done.before} -> {done.after}")
    return 0


SQLITE_SCHEME, POSTGRESQL_SCHEME = "sqlite:", "postgresql:"


def _copy_source(text: str) -> Path:
    """``--from sqlite:PATH``: the store file, or the state folder holding ``mtad.sqlite3``."""
    if not text.startswith(SQLITE_SCHEME):
        raise ConfigError("--from", f"expected sqlite:PATH (the store file or its state folder), got {text!r}")
    path = Path(text[len(SQLITE_SCHEME):]).expanduser()
    default_name = config_mod.StoreConfig().path
    return path / default_name if path.is_dir() else path


def _copy_target(args: argparse.Namespace) -> tuple[config_mod.StoreConfig, str, str]:
    """The target's store settings, this run's node id, and the option its DSN came from: ``--to
    postgresql://...`` (inline: visible in the process list), ``--to-env NAME`` (the URI in an environment
    variable) or ``--to-config FILE`` (the new nodes' configuration, ``store.backend: postgresql``)."""
    if args.to_config:
        cfg = _load_file(args.to_config)
        if cfg.store.backend != "postgresql":
            raise ConfigError("store.backend", f"{args.to_config} must use backend: postgresql to be a copy's target")
        return cfg.store, cfg.node_id, "store.dsn"
    if args.to_env:
        option, dsn = f"--to-env {args.to_env}", {"env": args.to_env}
    else:
        option, dsn = "--to", args.to
        if dsn.startswith(POSTGRESQL_SCHEME) and not dsn.startswith(POSTGRESQL_SCHEME + "//"):
            dsn = dsn[len(POSTGRESQL_SCHEME):]  # postgresql:DSN, the DSN itself a postgresql:// URI
    try:
        cfg = config_mod.parse({"store": {"backend": "postgresql", "dsn": dsn}}, Path("."))
    except ConfigError as exc:
        raise ConfigError(option, exc.problem) from None
    return cfg.store, cfg.node_id, option


def cmd_store_copy(args: argparse.Namespace) -> int:
    """Copy a stopped single node's SQLite store into an empty PostgreSQL database (``mtad.store.copy``)."""
    from mtad.store.copy import copy_store, report_json, summary
    from mtad.store.migrations import NewerSchema
    source = _copy_source(args.source)
    target, node_id, option = _copy_target(args)
    try:
        report = copy_store(source, target, node_id, option)
    except NewerSchema as exc:
        print(f"mtad: {exc}", file=sys.stderr)
        return 2
    print(report_json(report) if args.json else "\n".join(summary(report)))
    return 0


def cmd_campaigns_pause(args: argparse.Namespace) -> int:
    """``mtad campaigns pause|resume ID``: an InboxFirst campaign (``/ga/api/v2``) stops making copies at its next
    batch (a running daemon's dispatcher sees it within a second), or continues from where it stopped."""
    paused = args.campaigns_command == "pause"
    found = _with_store(args, lambda store: store.set_campaign_paused(args.campaign_id, paused, time.time()),
                        write=True)
    if found is None:
        print(f"mtad: no InboxFirst campaign {args.campaign_id}", file=sys.stderr)
        return 1
    print(f"campaign {found.id} ({found.name}): {'paused' if found.paused else 'resumed'}; state {found.state},"
          f" {found.copies} copies made")
    return 0


def add_inboxfirst_campaign_commands(c, with_config) -> None:
    """``mtad campaigns pause|resume ID`` (InboxFirst campaigns, seed 004) on the ``campaigns`` subparsers ``c``."""
    for name, text in (("pause", "stop an InboxFirst campaign's sending (/ga/api/v2 campaigns)"),
                       ("resume", "continue a paused InboxFirst campaign from where it stopped")):
        p = c.add_parser(name, help=text)
        with_config(p)
        p.add_argument("campaign_id", type=int, help="the campaign's id (or stat id)")
        p.set_defaults(func=cmd_campaigns_pause)


def with_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML configuration file (default: the embedded default)")
    p.add_argument("--state-dir", help="state folder for the embedded default (default ./mtad-state)")


class _Unparsed(Exception):
    """``_parse_run`` leaves the arguments to the full parser."""


class _RunParser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise _Unparsed(message)


def _parse_run(argv: list[str]) -> argparse.Namespace | None:
    """``mtad run [--config FILE] [--state-dir DIR]`` parsed without building every command's parser (about a hundred
    of them: ~25 ms of CPU, at every daemon start); None for any other command, a help option, or arguments it
    cannot parse, which ``build_parser`` then parses (its help and its error messages, as always)."""
    if not argv or argv[0] != "run" or any(a.startswith(("-h", "--h")) for a in argv[1:]):
        return None
    parser = _RunParser(prog="mtad run", add_help=False)
    with_config(parser)
    try:
        args = parser.parse_args(argv[1:])
    except _Unparsed:
        return None
    args.command, args.func = "run", cmd_run
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtad", description="SMTP MTA and inbound mail router")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the daemon")
    with_config(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("check-config", help="validate a config file and print the effective configuration")
    p.add_argument("file")
    p.add_argument("--no-secrets", action="store_true",
                   help="do not read {file: ...} and {env: ...} secrets (check the rest where they are absent)")
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("passwd", help="print a password hash for the config file")
    p.add_argument("--stdin", action="store_true", help="read the password from standard input")
    p.set_defaults(func=cmd_passwd)
    p = sub.add_parser("apikey", help="make an HTTP API key and the hash for the config file")
    p.set_defaults(func=cmd_apikey)
    q = sub.add_parser("queue", help="inspect and manage the queue").add_subparsers(dest="queue_command",
                                                                                    required=True)
    p = q.add_parser("list", help="list pending deliveries and forwards")
    with_config(p)
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_queue_list)
    p = q.add_parser("show", help="a message, its headers and its pending work")
    with_config(p)
    p.add_argument("queue_id")
    p.set_defaults(func=cmd_queue_show)
    p = q.add_parser("flush", help="make deferred mail due now")
    with_config(p)
    p.add_argument("--domain")
    p.set_defaults(func=cmd_queue_action)
    for name, text in (("retry", "make one message due now"), ("delete", "remove a message and its work"),
                       ("bounce", "fail a message's pending recipients now")):
        p = q.add_parser(name, help=text)
        with_config(p)
        p.add_argument("queue_id")
        p.set_defaults(func=cmd_queue_action)
    for name in ("pause", "resume"):
        p = q.add_parser(name, help=f"{name} delivery for a destination domain, provider or tag")
        with_config(p)
        group = p.add_mutually_exclusive_group(required=True)
        group.add_argument("--domain")
        group.add_argument("--provider")
        group.add_argument("--tag")
        p.set_defaults(func=cmd_queue_action)

    u = sub.add_parser("ui-user", help="users of the web panel (/ui/)").add_subparsers(dest="ui_user_command",
                                                                                       required=True)
    for name, text in (("add", "add a panel user"), ("passwd", "change a panel user's password"),
                       ("remove", "remove a panel user")):
        p = u.add_parser(name, help=text)
        with_config(p)
        p.add_argument("login")
        if name != "remove":
            p.add_argument("--stdin", action="store_true", help="read the password from standard input")
        p.set_defaults(func=cmd_ui_user)
    p = u.add_parser("list", help="list the panel users")
    with_config(p)
    p.set_defaults(func=cmd_ui_user)
    c = sub.add_parser("campaigns", help="Mailgun campaigns (list, show: read-only) and InboxFirst campaigns"
                                         " (pause, resume)").add_subparsers(
        dest="campaigns_command", required=True)
    p = c.add_parser("list", help="the campaigns of a domain (or of all) with their counters")
    with_config(p)
    p.add_argument("--domain", help="only this sending domain's")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_campaigns_list)
    p = c.add_parser("show", help="one campaign: its counters and stats, as JSON")
    with_config(p)
    p.add_argument("domain")
    p.add_argument("id")
    p.set_defaults(func=cmd_campaigns_show)
    add_inboxfirst_campaign_commands(c, with_config)  # pause / resume: InboxFirst campaigns (integer ids)

    d = sub.add_parser("dkim", help="DKIM keys").add_subparsers(dest="dkim_command", required=True)
    p = d.add_parser("keygen", help="make a signing key and print the DNS record to publish")
    with_config(p)
    p.add_argument("domain")
    p.add_argument("--selector", required=True)
    p.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa")
    p.add_argument("--bits", type=int, default=2048)
    p.add_argument("--out-dir", help="where to write the key (default: STATE_DIR/dkim)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_dkim_keygen)

    r = sub.add_parser("routes", help="inbound routes").add_subparsers(dest="routes_command", required=True)
    p = r.add_parser("test", help="show which routes match a recipient and what would happen")
    with_config(p)
    p.add_argument("--recipient", required=True)
    p.add_argument("--header", action="append", help="'Name: value' (repeatable)")
    p.set_defaults(func=cmd_routes_test)

    w = sub.add_parser("webhooks", help="event webhooks").add_subparsers(dest="webhooks_command", required=True)
    p = w.add_parser("redeliver", help="POST stored events again to the current webhooks (after a long outage)")
    with_config(p)
    p.add_argument("--since", required=True, help="RFC 2822 date, epoch seconds, or a duration ago (2h, 3d)")
    p.add_argument("--until", help="same forms; default: now")
    p.add_argument("--event", action="append", help="only this event kind (repeatable): delivered, failed, ...")
    p.add_argument("--domain", help="only this domain's events")
    p.add_argument("--url", help="only this webhook URL")
    p.set_defaults(func=cmd_webhooks_redeliver)

    st = sub.add_parser("store", help="the store's schema; moving to PostgreSQL").add_subparsers(
        dest="store_command", required=True)
    p = st.add_parser("migrate", help="create or upgrade the configured store's schema")
    with_config(p)
    p.set_defaults(func=cmd_store_migrate)
    p = st.add_parser("copy", help="copy a stopped node's SQLite store into an empty PostgreSQL database")
    p.add_argument("--from", dest="source", required=True, metavar="sqlite:PATH",
                   help="the SQLite store file (or the state folder holding it) of a stopped mtad")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--to", metavar="postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
                       help="the target database (inline: other users may see it in the process list)")
    group.add_argument("--to-env", metavar="NAME", help="an environment variable holding the target's DSN")
    group.add_argument("--to-config", metavar="FILE",
                       help="the new nodes' config file: the target is its store (backend: postgresql)")
    p.add_argument("--json", action="store_true", help="the summary as JSON")
    p.set_defaults(func=cmd_store_copy)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse_run(argv) or build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, so a closed pipe is caught below rather than at exit
        return code
    except ConfigError as exc:
        print(f"mtad: configuration error: {exc}", file=sys.stderr)
        return 2
    except (NoState, StoreError) as exc:
        print(f"mtad: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `mtad queue show ID | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # as a shell reports SIGPIPE
    except KeyboardInterrupt:
        return 130
