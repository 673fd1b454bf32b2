"""Progress that tells the truth: the fraction done and the ETA follow whichever limit ends the
work (the step count or a wall-clock budget); one redrawn line on a terminal, plain lines
elsewhere (cluster logs, `| tee`): after the first unit (its pace gives the ETA), then every
`log_every` units."""
from __future__ import annotations

import sys
import time
from typing import IO, Callable, Dict, Optional


def format_seconds(seconds: float) -> str:
    """12.3 -> '00:12', 3725 -> '1:02:05'."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Progress of `total` units (steps, episodes), optionally also limited by `budget_seconds`.

    `update(done, elapsed, fields)` is called once per unit; `elapsed` is the work's own clock
    (seconds, including time before a resume).  Nothing is printed when `enabled` is False, nor
    before the work has run `quiet_seconds` (work that ends sooner shows nothing at all).
    """

    def __init__(self, desc: str, total: int, done: int = 0, elapsed: float = 0.0,
                 budget_seconds: Optional[float] = None, enabled: bool = True, log_every: int = 100,
                 stream: Optional[IO[str]] = None, unit: str = "step",
                 clock: Callable[[], float] = time.monotonic, quiet_seconds: float = 0.0) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.quiet_seconds = quiet_seconds
        self.budget = budget_seconds
        self.enabled = enabled
        self.log_every = max(1, log_every)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.clock = clock
        self._first = (done, elapsed)  # rate is measured over this process's own units
        self._done, self._elapsed, self._fields = done, elapsed, {}
        #: seconds of `elapsed` (this process's) spent on other work than units, and the seconds of such
        #: work still to come (a trainer's validations): out of the pace, added to the ETA
        self._paused, self._pauses_ahead = 0.0, 0.0
        self._start = clock() - elapsed  # for `advance`, which times the work itself
        self._last_draw = -1.0
        self._next_line = done + 1  # plain-line mode: the first unit (the pace, an ETA), then every log_every
        self._printed = done
        self._width = 0
        self._shown = quiet_seconds <= 0  # anything drawn yet (quiet work shows nothing until then)

    # -- what is shown ---------------------------------------------------------------------
    def fraction(self) -> float:
        by_steps = self._done / self.total if self.total else 1.0
        by_time = self._elapsed / self.budget if self.budget else 0.0
        return min(1.0, max(by_steps, by_time))

    def eta(self) -> tuple[Optional[float], str]:
        """(seconds left, which limit ends the work) — None while no rate is known yet."""
        done0, elapsed0 = self._first
        candidates = []
        if self._done > done0 and self._elapsed > elapsed0:
            rate = max(0.0, self._elapsed - elapsed0 - self._paused) / (self._done - done0)
            candidates.append((max(0.0, (self.total - self._done) * rate) + self._pauses_ahead, f"{self.unit}s"))
        if self.budget:
            candidates.append((max(0.0, self.budget - self._elapsed), "time budget"))
        if not candidates:
            return None, ""
        return min(candidates)

    def line(self) -> str:
        eta, limit = self.eta()
        eta_text = "ETA --:--" if eta is None else f"ETA {format_seconds(eta)} ({limit})"
        extras = "  ".join(f"{k} {v}" for k, v in self._fields.items())
        return (f"{self.desc} {100 * self.fraction():3.0f}%  {self.unit} {self._done}/{self.total}  "
                f"{format_seconds(self._elapsed)} elapsed  {eta_text}" + (f"  {extras}" if extras else ""))

    # -- updates ---------------------------------------------------------------------------
    def update(self, done: int, elapsed: float, fields: Optional[Dict[str, str]] = None,
               paused: Optional[float] = None, pauses_ahead: Optional[float] = None) -> None:
        """`done` units after `elapsed` seconds; `paused`: seconds of this process's `elapsed` spent on
        other work (left out of the per-unit pace), `pauses_ahead`: the seconds of such work still to
        come (added to the ETA of the units)."""
        self._done, self._elapsed = done, elapsed
        if paused is not None:
            self._paused = paused
        if pauses_ahead is not None:
            self._pauses_ahead = pauses_ahead
        if fields is not None:
            self._fields = fields
        if not self.enabled:
            return
        if not self._shown:
            if elapsed - self._first[1] < self.quiet_seconds:
                return
            self._shown = True
            if not self.tty:  # say at once what is taking this long
                self._print_line()
                self._next_line = (done // self.log_every + 1) * self.log_every
                return
        if self.tty:
            now = self.clock()
            if now - self._last_draw >= 0.1 or done >= self.total:
                self._redraw()
                self._last_draw = now
        elif done >= self._next_line:
            self._print_line()
            self._next_line = (done // self.log_every + 1) * self.log_every

    def advance(self, n: int = 1) -> None:
        """`n` more units done, timed by this object's clock (for work without a clock of its own)."""
        self.update(self._done + n, self.clock() - self._start)

    def close(self) -> None:
        """Finish the display: end the redrawn line, or print the final plain line."""
        if not self.enabled or not self._shown:
            return
        if self.tty:
            self._redraw()
            self.stream.write("\n")
            self.stream.flush()
        elif self._printed != self._done or self._done == self._first[0]:
            self._print_line()

    def note(self, text: str) -> None:
        """A line of its own (a notice) above the progress line, which is then drawn again."""
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r" + text.ljust(self._width) + "\n")
            self._width = 0
            self._redraw()
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _redraw(self) -> None:
        text = self.line()
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def _print_line(self) -> None:
        self._printed = self._done
        self.stream.write(self.line() + "\n")
        self.stream.flush()
