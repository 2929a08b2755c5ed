"""The `homegpt` command: a thin layer over the Python API, one module per pipeline stage.

Each module here has a `register(sub)` that adds its subcommands; `build_parser` calls them in the order of
the pipeline. Bad input raises UserError anywhere below; here it becomes one line on stderr and exit code 2.
With --json, the last line on stdout is one JSON object; progress and logs go to stderr. Nothing here imports
torch: the handlers import what they need when they run, so `homegpt --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from homegpt import __version__
from homegpt.cli import chat, data, demo, plan, serve, share, train
from homegpt.cli import eval as evaluate  # not `eval`: that is a builtin
from homegpt.errors import UserError

EXIT_USAGE = 2
STAGES = (demo, data, train, evaluate, share, chat, serve, plan)  # the order `homegpt --help` lists them in


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(EXIT_USAGE, f"homegpt: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="homegpt", description="Create your own GPT from scratch.")
    p.add_argument("--version", action="version", version=f"homegpt {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for stage in STAGES:
        stage.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args, rest = parser.parse_known_args(argv)
    try:
        if getattr(args, "takes_overrides", False):
            return args.func(args, rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args.func(args)
    except UserError as e:
        print(f"homegpt: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("homegpt: interrupted", file=sys.stderr)
        return 130
