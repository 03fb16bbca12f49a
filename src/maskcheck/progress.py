"""A progress bar on standard error for long runs on a terminal. It is drawn on one line and erased at the end."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

# A run shorter than this shows no bar at all, so quick runs and tests print nothing extra.
DELAY_SECONDS = 1.0
REDRAW_SECONDS = 0.1
BAR_WIDTH = 30


class Progress:
    """Counts checked files and draws `maskcheck: [#####     ] 120/500 files` once the run passes DELAY_SECONDS.

    The bar is drawn only when `enabled` and the stream is a terminal, so redirected output and CI logs never get
    carriage returns.
    """

    def __init__(self, total: int, enabled: bool, stream: Optional[TextIO] = None) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and _is_terminal(self.stream)
        self.done = 0
        self.started = time.monotonic()
        self.drawn_at: Optional[float] = None
        self.width = 0

    def advance(self, count: int = 1) -> None:
        self.done += count
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.started < DELAY_SECONDS:
            return
        if self.drawn_at is not None and now - self.drawn_at < REDRAW_SECONDS and self.done < self.total:
            return
        self.drawn_at = now
        self._draw()

    def finish(self) -> None:
        """Erase the bar, so that the summary line starts on a clean line."""
        if self.drawn_at is not None:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.drawn_at = None

    def _draw(self) -> None:
        fraction = self.done / self.total if self.total else 1.0
        filled = int(BAR_WIDTH * fraction)
        line = f"maskcheck: [{'#' * filled}{' ' * (BAR_WIDTH - filled)}] {self.done}/{self.total} files"
        self.width = max(self.width, len(line))
        self.stream.write("\r" + line)
        self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
