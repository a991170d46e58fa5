"""Progress of long commands, on a terminal and in a log file alike.

On a terminal a live ``tqdm`` bar; anywhere else (SLURM, nohup, CI) a plain line on stderr every
``interval`` seconds (30 by default; ``--progress-interval`` or ``MEDALIGN_PROGRESS_INTERVAL``), and
once lines have been written, one when the work ends. Work done within one interval writes
nothing: a short command's output (or its one-line error) stays as it was::

    prep: 120/5000 studies (2.4%) · 3.1 studies/s · ETA 26m12s
    step 1200/30000 (4.0%) · 41.3 volumes/s · loss 2.31 · lr 2.0e-4 · ETA 5h12m

Rates and the ETA are measured from the first unit of work done here (start-up and a resumed run's
earlier steps do not count). Extra fields are computed only when a line is written.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

#: seconds between two plain progress lines when output is not a terminal
DEFAULT_INTERVAL_S = 30.0
_ENV = "MEDALIGN_PROGRESS_INTERVAL"


def set_interval(seconds: float) -> None:
    """Seconds between plain progress lines, for this process and the processes it starts (ranks, workers)."""
    if not seconds > 0:
        raise ValueError(f"progress interval must be above 0 seconds, got {seconds}")
    os.environ[_ENV] = repr(float(seconds))


def interval() -> float:
    """The configured seconds between plain progress lines."""
    try:
        value = float(os.environ.get(_ENV, DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``5h12m``, ``2d03h``; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_rate(per_second: float, unit: str) -> str:
    """``41.3 volumes/s``, or ``12.0 s/volume`` (``s/study``) when slower than one a second."""
    if per_second <= 0 or not math.isfinite(per_second):
        return f"? {unit}/s"
    if per_second >= 1:
        return f"{per_second:.1f} {unit}/s"
    one = unit[:-3] + "y" if unit.endswith("ies") else unit[:-1] if unit.endswith("s") else unit
    return f"{1 / per_second:.1f} s/{one}"


class Progress:
    """Counts ``done`` out of ``total`` and reports it: a bar on a terminal, lines elsewhere.

    ``what`` names the command (``prep``); empty, lines read ``step 3/10`` with ``unit`` first.
    ``rate_unit`` measures speed in other units than the count (steps counted, volumes per second:
    pass ``items`` to :meth:`update`). ``extra`` returns further fields (``["loss 2.31"]``); it is
    called only when a line or the bar's text is written. ``enabled=False`` reports nothing (ranks
    other than 0).
    """

    def __init__(self, what: str, total: int, unit: str, *, start: int = 0, rate_unit: str | None = None,
                 extra: Callable[[], list[str]] | None = None, stream: TextIO | None = None, live: bool | None = None,
                 every_s: float | None = None, enabled: bool = True) -> None:
        self.what, self.total, self.unit = what, max(0, int(total)), unit
        self.rate_unit = rate_unit or unit
        self.extra = extra
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.live = enabled and (self.stream.isatty() if live is None else live)
        self.every_s = interval() if every_s is None else every_s
        self.done = self._first_done = int(start)
        self._items = 0.0
        self._t0 = self._t_first = time.monotonic()
        self._first_seen = False
        self._last_line = self._t0
        self._last_extra = 0.0
        self._lines = 0
        self._opening: str | None = None
        self._bar = None
        if self.live:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, desc=what or unit, unit=unit, file=self.stream,
                             dynamic_ncols=True, leave=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close(finished=exc[0] is None)

    def start_line(self, note: str = "") -> None:
        """The count at the start with ``note`` (what the work is), written before the first line."""
        if self.enabled and not self.live:
            self._opening = f"{self._head()}{' · ' + note if note else ''}"

    def update(self, done: int | None = None, items: float | None = None) -> None:
        """Set the count to ``done`` (default: one more) with ``items`` rate units in this update."""
        if not self.enabled:
            return
        step = 1 if done is None else int(done) - self.done
        now = time.monotonic()
        if not self._first_seen:
            # the first unit carries start-up (warm-up, compilation): rates count from its end
            self._first_seen, self._t_first, self._first_done = True, now, self.done + step
            self.done += step
        else:
            self.done += step
            self._items += step if items is None else items
        if self._bar is not None:
            self._bar.update(step)
            if self.extra is not None and now - self._last_extra >= 1.0:
                self._last_extra = now
                self._bar.set_postfix_str(" · ".join(self._rate_fields() + self.extra()), refresh=False)
        elif now - self._last_line >= self.every_s:
            self._last_line = now
            self._write(self.line())

    def note(self, text: str) -> None:
        """One line of news (a validation's metrics), above the bar or in the log."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self._write(text)

    def rate(self) -> float:
        """Rate units per second since the first unit of work."""
        elapsed = time.monotonic() - self._t_first
        return self._items / elapsed if self._first_seen and elapsed > 0 and self._items > 0 else math.nan

    def eta_s(self) -> float:
        """Seconds left at the measured pace of the count."""
        elapsed = time.monotonic() - self._t_first
        counted = self.done - self._first_done
        if not self._first_seen or counted <= 0 or elapsed <= 0:
            return math.nan
        return (self.total - self.done) * elapsed / counted

    def line(self) -> str:
        """``step 1200/30000 (4.0%) · 41.3 volumes/s · loss 2.31 · ETA 5h12m``."""
        fields = [self._head()] + self._rate_fields() + (self.extra() if self.extra else [])
        eta = self.eta_s()
        return " · ".join(fields + ([f"ETA {format_duration(eta)}"] if math.isfinite(eta) else []))

    def close(self, finished: bool = True, ending: str = "done") -> None:
        """Close the bar, or write the last line (``done in ...``, or another ``ending``) when ``finished``."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif finished and self._lines:
            took = format_duration(time.monotonic() - self._t0)
            fields = [self._head()] + self._rate_fields() + (self.extra() if self.extra else [])
            self._write(" · ".join(fields + [f"{ending} in {took}"]))
        self.enabled = False

    def _head(self) -> str:
        pct = f" ({100 * self.done / self.total:.1f}%)" if self.total else ""
        if self.what:
            return f"{self.what}: {self.done}/{self.total} {self.unit}{pct}"
        return f"{self.unit} {self.done}/{self.total}{pct}"

    def _rate_fields(self) -> list[str]:
        rate = self.rate()
        return [format_rate(rate, self.rate_unit)] if math.isfinite(rate) else []

    def _write(self, text: str) -> None:
        if self._opening is not None:
            opening, self._opening = self._opening, None
            self._write(opening)
        self._lines += 1
        try:
            print(text, file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed or broken log stream never stops the work
            pass
