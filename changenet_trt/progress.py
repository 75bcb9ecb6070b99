"""A small progress bar on stderr (no dependency).

On a terminal it redraws one line (at most 10 times a second) with done/total, rate and ETA;
when stderr is not a terminal (a log file, CI) it stays quiet until :meth:`Progress.close`,
which always prints one final line. :meth:`Progress.write` prints a message above the bar
(from any thread) without garbling it.

::

    with Progress(total=1000, label="eval", unit="pairs") as bar:
        for done in ...:
            bar.update(done)
"""

import sys
import threading
import time
from typing import IO, Optional

BAR_WIDTH = 28


def _duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return "{}:{:02d}:{:02d}".format(seconds // 3600, seconds // 60 % 60, seconds % 60)
    return "{}:{:02d}".format(seconds // 60, seconds % 60)


class Progress:
    """Progress of ``total`` items. ``enabled``: force the live bar on/off (default: stream is a TTY).

    ``quiet`` suppresses everything, including the final line.
    """

    def __init__(
        self,
        total: int,
        label: str = "",
        unit: str = "items",
        stream: Optional[IO[str]] = None,
        enabled: Optional[bool] = None,
        quiet: bool = False,
        min_interval: float = 0.1,
    ) -> None:
        self.total = max(int(total), 0)
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty()) if enabled is None and callable(isatty) else bool(enabled)
        self.quiet = quiet
        self.min_interval = min_interval
        self.done = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._drawn = False
        self._closed = False
        self._lock = threading.RLock()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        """Items per second so far."""
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    def _line(self) -> str:
        fraction = self.done / self.total if self.total else 1.0
        filled = int(round(BAR_WIDTH * min(fraction, 1.0)))
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        prefix = self.label + " " if self.label else ""
        return "{}[{}{}] {}/{} {} {:.1f}/s ETA {}".format(
            prefix, "#" * filled, "." * (BAR_WIDTH - filled), self.done, self.total, self.unit, rate, _duration(eta)
        )

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        self.stream.write("\r" + self._line() + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def update(self, done: int) -> None:
        """Set the number of items done (absolute)."""
        with self._lock:
            self.done = int(done)
            if self.live and not self.quiet and not self._closed:
                self._draw(force=self.done >= self.total)

    def advance(self, count: int = 1) -> None:
        """Add ``count`` items done."""
        with self._lock:
            self.update(self.done + count)

    def write(self, message: str) -> None:
        """Print ``message`` on its own line above the bar."""
        with self._lock:
            if self.quiet:
                return
            if self.live and self._drawn:
                self.stream.write("\r\x1b[K")
            self.stream.write(message + "\n")
            if self.live and self._drawn and not self._closed:
                self._draw(force=True)
            self.stream.flush()

    def close(self, message: Optional[str] = None) -> None:
        """End the bar with one final line (``message`` or a done/elapsed/rate summary)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.quiet:
                return
            text = message or "{}{} {} in {:.1f} s ({:.1f} {}/s)".format(
                self.label + ": " if self.label else "", self.done, self.unit, self.elapsed, self.rate, self.unit
            )
            if self.live and self._drawn:
                self.stream.write("\r\x1b[K")
            self.stream.write(text + "\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
