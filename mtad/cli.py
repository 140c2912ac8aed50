"""``mtad`` command line: run, check-config, passwd, queue."""

from __future__ import annotations

import argparse
import getpass
import json
import sqlite3
import sys
import time
from pathlib import Path

from mtad import config as config_mod
from mtad.config import Config
from mtad.errors import ConfigError


def _load(args: argparse.Namespace) -> tuple[Config, dict | None]:
    if getattr(args, "config", None):
        return config_mod.load(args.config), None
    from mtad.demo import embedded_default
    return embedded_default(getattr(args, "state_dir", None) or "./mtad-state")


def cmd_run(args: argparse.Namespace) -> int:
    from mtad import logsetup
    from mtad.app import run
    cfg, demo = _load(args)
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
        print(f"  (kept in {cfg.state_path / 'demo-credentials.json'})", file=sys.stderr, flush=True)
    return run(cfg, Path(args.config).resolve() if args.config else None)


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.file)
    print(config_mod.effective(cfg), end="")
    print(f"# {args.file}: OK", file=sys.stderr)
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    from mtad.passwords import hash_password
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


def _db(cfg: Config) -> sqlite3.Connection:
    path = cfg.store_path
    if not path.exists():
        raise ConfigError("store.path", f"no store at {path} (has mtad run yet?)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def cmd_queue_list(args: argparse.Namespace) -> int:
    from mtad import spool
    cfg, _ = _load(args)
    with _db(cfg) as conn:
        rows = spool.list_queue(conn, args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'QUEUE ID':<20} {'KIND':<8} {'STATE':<9} {'ATT':>3} {'NEXT ATTEMPT':<19} {'DESTINATION':<24} SENDER -> RECIPIENTS")
    for r in rows:
        print(f"{r['queue_id']:<20} {r['kind']:<8} {r['state']:<9} {r['attempts']:>3} {_when(r['next_attempt_at']):<19} "
              f"{r['destination'][:24]:<24} <{r['sender']}> -> {', '.join(r['recipients'])}")
    print(f"-- {len(rows)} pending")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtad", description="SMTP MTA and inbound mail router")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", help="YAML configuration file (default: the embedded default)")
        p.add_argument("--state-dir", help="state folder for the embedded default (default ./mtad-state)")

    p = sub.add_parser("run", help="run the daemon")
    with_config(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("check-config", help="validate a config file and print the effective configuration")
    p.add_argument("file")
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("passwd", help="print a password hash for the config file")
    p.add_argument("--stdin", action="store_true", help="read the password from standard input")
    p.set_defaults(func=cmd_passwd)
    q = sub.add_parser("queue", help="inspect and manage the queue").add_subparsers(dest="queue_command",
                                                                                    required=True)
    p = q.add_parser("list", help="list pending deliveries and forwards")
    with_config(p)
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_queue_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"mtad: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
