"""`homegpt serve RUN_OR_FOLDER`: load the model, bind the port, run the OpenAI-compatible server (serve/app.py)."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys

from homegpt.cli.common import STEP_HELP, step_arg
from homegpt.errors import UserError


def _positive(name: str, value: int) -> int:
    if value <= 0:
        raise UserError(f"{name} must be a positive number, got {value}")
    return value


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port), or a one-line error saying what to change."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {port}")
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is already in use: choose another --port (0 = any free one)") \
                from None
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}): check --host and --port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def needs(*modules: str) -> None:
    """A one-line error naming the extra to install when a serving dependency is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"homegpt serve needs {', '.join(missing)}: pip install 'homegpt[serve]'")


def cmd_serve(args) -> int:
    from homegpt.serve.loading import load_served

    _positive("--max-batch", args.max_batch)
    _positive("--max-queue", args.max_queue)
    if args.threads is not None:
        _positive("--threads", args.threads)
    needs("fastapi", "uvicorn")
    api_key = args.api_key or os.environ.get("HOMEGPT_API_KEY") or None
    served = load_served(args.model, step=args.step, device=args.device, name=args.name)
    if served.chat.template is not None:
        needs("jinja2")  # to render the model's chat template
    sock = bind(args.host, args.port)

    import uvicorn

    from homegpt.serve.app import create_app

    app = create_app(served, args.max_batch, args.max_queue, api_key, tuple(args.cors or ()), args.threads)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"homegpt: serving {served.name} ({served.source}, step {served.step}, context {served.context}, "
          f"chat: {served.chat.kind}) at http://{shown}:{port}/  (OpenAI API at http://{shown}:{port}/v1)",
          flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print("homegpt: warning: listening beyond this machine without --api-key", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.log_level == "debug",
                            timeout_graceful_shutdown=3)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def register(sub) -> None:
    s = sub.add_parser("serve", help="an OpenAI-compatible API and a web playground for a run or an export folder")
    s.add_argument("model", metavar="RUN_OR_FOLDER", help="a run directory or a folder written by homegpt export")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    s.add_argument("--step", type=step_arg, default=None, help=STEP_HELP + " (runs only)")
    s.add_argument("--device", default="auto")
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 (default: the "
                   "HOMEGPT_API_KEY environment variable, else no key)")
    s.add_argument("--max-batch", type=int, default=16, help="rows decoded together at most (default 16)")
    s.add_argument("--max-queue", type=int, default=64, help="rows waiting at most; beyond: HTTP 503 (default 64)")
    s.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default on a CPU: one "
                   "per core but one, left to HTTP and the clients); 1 is often fastest for a small model")
    s.add_argument("--cors", action="append", metavar="ORIGIN", help="allow browser pages from ORIGIN to call the "
                   "API (repeatable; default: no CORS)")
    s.add_argument("--name", default=None, help="the model id clients use (default: the folder's name)")
    s.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default warning; debug also logs every request)")
    s.set_defaults(func=cmd_serve)
