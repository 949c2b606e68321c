"""``hpl-serve``: one of hpl's envs as an OpenEnv-compatible env server (see :mod:`hpl_data.serve`).

    hpl-serve --env webshop --split test --workers 2 --port 8000
"""

from __future__ import annotations

import argparse

from hpl_data.cli_common import CliError, CliParser, check_local_workers, positive_float, positive_int, run_cli
from hpl_data.cli_eval import parse_kv


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="hpl-serve", description="Serve an hpl env over OpenEnv's HTTP/WebSocket protocol, with "
                  "task lists and snapshot/restore/fork of sessions as extensions (/hpl/...).")
    p.add_argument("--env", required=True, help="webshop | alfworld | intercode-sql")
    p.add_argument("--split", default=None, help="where a reset without task_id draws its task (default: the "
                   "env's evaluation split)")
    p.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE", help="env constructor argument")
    p.add_argument("--workers", type=positive_int, default=2, help="env worker processes shared by all sessions")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (another than loopback needs --token)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--unix-socket", default=None, metavar="PATH", help="serve on this unix socket instead")
    p.add_argument("--token", default=None, help="bearer token required on every request and WebSocket")
    p.add_argument("--max-sessions", type=positive_int, default=256)
    p.add_argument("--session-ttl-s", type=positive_float, default=600.0, help="close sessions idle this long")
    p.add_argument("--max-action-chars", type=positive_int, default=16_384)
    p.add_argument("--max-request-bytes", type=positive_int, default=65_536)
    p.add_argument("--seed", type=int, default=0, help="seeds the task draws of resets without task_id or seed")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    return p


def parse_config(argv: list[str]):
    """The flags as a :class:`hpl_data.serve.ServeConfig`, checked (bad values end as one line)."""
    from hpl_data.serve.config import ServeConfig
    from hpl_envs.registry import canonical, profile

    args = build_parser().parse_args(argv)
    check_local_workers(args.workers)
    env = canonical(args.env)
    config = ServeConfig(env=env, split=args.split or profile(env).eval_splits[0], env_kwargs=parse_kv(args.env_arg),
                         workers=args.workers, host=args.host, port=args.port, unix_socket=args.unix_socket,
                         token=args.token, max_sessions=args.max_sessions, session_ttl_s=args.session_ttl_s,
                         max_action_chars=args.max_action_chars, max_request_bytes=args.max_request_bytes,
                         seed=args.seed)
    try:
        config.check()
    except ValueError as e:
        raise CliError(str(e)) from None
    return config, args.log_level


def _main(argv: list[str]) -> int:
    config, log_level = parse_config(argv)
    try:
        from hpl_data.serve.server import serve
    except ImportError as e:
        raise CliError(f"hpl-serve needs the serve extra ({e.name} is missing): pip install 'hpl[serve]'") from None
    where = config.unix_socket or f"http://{config.host}:{config.port}"
    print(f"hpl-serve: {config.env} ({config.split}) on {where}, {config.workers} workers", flush=True)
    serve(config, log_level)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("hpl-serve", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
