"""Progress that suits its reader: a live bar on a terminal, a plain line now and then in a log file.

tqdm redraws its bar with a carriage return many times a second; written to a file (`> train.log 2>&1`, CI,
Slurm, nohup) that is one line per update, hundreds of kilobytes of them. So when stderr is not a terminal,
`progress_bar` gives a LogBar instead: the same calls, but it prints one line every HOMEGPT_LOG_SECONDS
(default 30) and one at the end, with where it is, its postfix (loss, tokens/s, ...), its rate and ETA.
Messages written through the bar (training's line per evaluation) are printed as they come and count as
the interval's line.
"""

from __future__ import annotations

import os
import sys
import time

LOG_SECONDS = 30.0


def progress_bar(*, total: float | None = None, initial: float = 0, unit: str = "it", desc: str = "",
                 disable: bool | None = False, unit_scale: bool = False, unit_divisor: int = 1000):
    """tqdm on a terminal, a LogBar elsewhere (disable: neither prints)."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit=unit, desc=desc, disable=disable, unit_scale=unit_scale,
                    unit_divisor=unit_divisor, file=sys.stderr, dynamic_ncols=True)
    seconds = float(os.environ.get("HOMEGPT_LOG_SECONDS", LOG_SECONDS))
    return LogBar(total, initial, unit, desc, bool(disable), unit_divisor if unit_scale else 0, seconds)


class LogBar:
    """tqdm's interface (update, n, total, set_postfix, write, close) as a few plain lines on stderr."""

    def __init__(self, total: float | None, initial: float, unit: str, desc: str, disable: bool,
                 divisor: int, seconds: float) -> None:
        """divisor: 1000 or 1024 to write amounts as k, M, G of the unit (tokens, bytes); 0 to write them whole."""
        self.total, self.n, self.unit, self.desc = total, initial, unit, desc
        self.disable, self.divisor, self.seconds = disable, divisor, seconds
        self.start_n, self.t0 = initial, time.monotonic()
        self.last, self.postfix, self.closed = self.t0, "", False

    def update(self, n: float = 1) -> None:
        self.n += n
        self.refresh()

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if refresh:
            self.refresh()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s
        if refresh:
            self.refresh()

    def refresh(self) -> None:
        if time.monotonic() - self.last >= self.seconds:
            self._print(self.line())

    def write(self, message: str, file=None) -> None:
        self._print(message)

    def close(self) -> None:
        if not self.closed and self.n != self.start_n:
            self._print(self.line())
        self.closed = True

    def line(self) -> str:
        """'train: step 120/400 (30%) | loss 3.210, tok_s 1,234 | 2.1 step/s, 58 s, ETA 2m13s'."""
        elapsed = time.monotonic() - self.t0
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        if self.divisor:  # bytes: 12.3 MB/45.0 MB
            where = self._amount(self.n) + (f"/{self._amount(self.total)}" if self.total else "")
        else:  # steps: step 120/400
            where = f"{self.unit} {self._amount(self.n)}" + (f"/{self._amount(self.total)}" if self.total else "")
        if self.total:
            where += f" ({min(1.0, self.n / self.total):.0%})"
        parts = [f"{self.desc}: {where}" if self.desc else where]
        if self.postfix:
            parts.append(self.postfix)
        speed = f"{self._amount(rate)}/s" if self.divisor else f"{self._amount(rate)} {self.unit}/s"
        eta = f", ETA {_duration((self.total - self.n) / rate)}" if self.total and rate > 0 else ""
        parts.append(f"{speed}, {_duration(elapsed)}{eta}")
        return " | ".join(parts)

    def _amount(self, x: float) -> str:
        if not self.divisor:
            return f"{x:,.0f}" if x >= 10 or float(x).is_integer() else f"{x:.2f}"
        for scale, prefix in ((self.divisor**3, "G"), (self.divisor**2, "M"), (self.divisor, "k")):
            if abs(x) >= scale:
                return f"{x / scale:.1f} {prefix}{self.unit}"
        return f"{x:.0f} {self.unit}"

    def _print(self, text: str) -> None:
        self.last = time.monotonic()
        if not self.disable:
            print(text, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    return f"{minutes}m{s:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
