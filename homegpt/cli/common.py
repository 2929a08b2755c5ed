"""What every subcommand shares: the output contract, streamed text, stdin lines and the --step flag.

Output: with --json the last line on stdout is one JSON object (numpy scalars become numbers); without it,
lines of text. Progress and logs go to stderr, so `--json | jq` always works.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator

STARTED = time.perf_counter()  # when the command began (before torch loads): `homegpt demo` budgets from here
STEP_HELP = "checkpoint: latest (default), best (lowest held-out loss) or a step number"
CONFIG_FLAGS_HELP = ("Every config key is also a flag, after the arguments above: --lr 1e-3, --n-layer 6, "
                     "--max-steps 200 (or --key=value; dashes or underscores; a flag that is no key is refused, "
                     "naming the closest key). The keys and their defaults: docs/training.md, or the TrainConfig "
                     "fields in homegpt/train/config.py.")


def emit(result: dict, as_json: bool, lines: list[str], ensure_ascii: bool = True) -> None:
    """The one way a command reports: `result` as one JSON line, or `lines` as text."""
    if as_json:
        print(json.dumps(result, default=jsonable, ensure_ascii=ensure_ascii), flush=True)
    else:
        print("\n".join(lines), flush=True)


def jsonable(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write(s: str) -> None:
    """Streamed text on stdout, shown as it comes."""
    sys.stdout.write(s)
    sys.stdout.flush()


def stdin_lines(marker: str) -> Iterator[str]:
    """Lines of stdin (newline removed) until EOF, with `marker` on stderr before each when it is a terminal.
    Bytes that are not UTF-8 come through as lone surrogates (check_text refuses that line, not the session)."""
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")
    tty = sys.stdin.isatty()
    while True:
        if tty:
            sys.stderr.write(marker)
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            return
        yield line.rstrip("\n")


def step_arg(text: str) -> int | str:
    """A --step value: latest, best or a step number."""
    if text in ("latest", "best"):
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"use latest, best or a step number, not {text!r}")
    return int(text)
