"""Progress that a user sees at once and that keeps moving, on a terminal or in a log.

- On a terminal, :class:`Meter` is a tqdm bar with rate and ETA.
- When stderr is not a terminal (a log file, CI, ``nohup``), it prints one line every
  ``interval`` seconds (``$GENSEEK_PROGRESS_INTERVAL_S``, default 15) from a timer thread, so
  a long run is never silent even while one batch takes minutes: done/total, percentage,
  elapsed time, rate and ETA.
- Stage lines (reading a corpus, loading a model, starting Java) go through the
  ``genseek.progress`` logger; :func:`stage_lines` prints them on stderr as they happen.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import IO, Any

STAGE_LOGGER = "genseek.progress"
DEFAULT_INTERVAL_S = 15.0


def interval_s() -> float:
    """Seconds between progress lines when stderr is not a terminal."""
    try:
        value = float(os.environ.get("GENSEEK_PROGRESS_INTERVAL_S", DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


def duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h01m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Meter:
    """Counts ``done`` of ``total`` ``unit``s; ``initial`` were done by an earlier run (they
    count in done/total but not in the rate)."""

    def __init__(self, total: int | None, desc: str, unit: str = "doc", enabled: bool = True,
                 initial: int = 0, stream: IO[str] | None = None,
                 interval: float | None = None) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.initial = initial
        self.n = initial
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self._bar: Any = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if not enabled:
            return
        if is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial,
                             dynamic_ncols=True, smoothing=0.1, file=self.stream)
        else:
            self._interval = interval if interval is not None else interval_s()
            self._ticker = threading.Thread(target=self._tick, name=f"genseek-progress-{desc}",
                                            daemon=True)
            self._ticker.start()

    # -- counting ------------------------------------------------------------------------

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            if self._bar is not None:
                self._bar.update(n)

    def set(self, done: int, total: int | None = None) -> None:
        """Set the count (and the total) outright."""
        with self._lock:
            if total is not None:
                self.total = total
                if self._bar is not None:
                    self._bar.total = total
            delta, self.n = done - self.n, done
            if self._bar is not None:
                self._bar.update(delta)

    def write(self, message: str) -> None:
        """A line that does not break the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    # -- the line printed to logs ----------------------------------------------------------

    def line(self) -> str:
        elapsed = time.monotonic() - self._start
        with self._lock:
            done, total = self.n, self.total
        units = f"{self.unit[:-1]}ies" if self.unit.endswith("y") else f"{self.unit}s"
        parts = [f"{done:,}/{total:,} {units}" if total else f"{done:,} {units}"]
        if total:
            parts[0] += f" ({100.0 * done / total:.0f}%)"
        parts.append(f"{duration(elapsed)} elapsed")
        fresh = done - self.initial
        if elapsed > 0 and fresh > 0:
            rate = fresh / elapsed
            parts.append(f"{rate:,.1f} {units}/s")
            if total and done < total:
                parts.append(f"ETA {duration((total - done) / rate)}")
        return f"genseek: {self.desc}: " + ", ".join(parts)

    def _tick(self) -> None:
        while not self._stop.wait(self._interval):
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._ticker is not None:
            self._stop.set()
            self._ticker.join()
            self._ticker = None
            print(self.line(), file=self.stream, flush=True)  # where it ended
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _StageFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"genseek: {record.getMessage()}"


def stage_lines(enabled: bool, stream: IO[str] | None = None) -> logging.Handler | None:
    """Print the ``genseek.progress`` stage lines on ``stream`` (stderr) as they happen;
    returns the handler (None when disabled, and then they are not printed)."""
    logger = logging.getLogger(STAGE_LOGGER)
    if not enabled:
        return None
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_StageFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler


def stage(message: str, *args: Any) -> None:
    """Announce a stage (e.g. ``stage("reading %s", path)``)."""
    logging.getLogger(STAGE_LOGGER).info(message, *args)
