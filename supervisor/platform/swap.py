"""Swap-out as a rate: the kernels count pages swapped out since boot (Linux `pswpout` in
/proc/vmstat, macOS `swapouts` in vm_statistics64); what signals pressure is how fast that
count moves, sustained over a few seconds (PSI averages stalls over 10 s for the same reason:
one burst is not a trend)."""

from __future__ import annotations

from collections import deque

from ..model import MIB

WINDOW_S = 10.0
MIN_SPAN_S = 1.0  # a rate over less than this is noise


class SwapWindow:
    """Feed (time, bytes swapped out so far); get the rate over the last WINDOW_S seconds."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._points: deque[tuple[float, int]] = deque()

    def rate_mb_s(self, now: float, swapped_out_bytes: int) -> float:
        points = self._points
        if points and swapped_out_bytes < points[-1][1]:  # a counter that went back: start over
            points.clear()
        points.append((now, swapped_out_bytes))
        while len(points) > 2 and now - points[1][0] >= self.window_s:
            points.popleft()
        then, before = points[0]
        span = now - then
        if span < MIN_SPAN_S:
            return 0.0
        return (swapped_out_bytes - before) / MIB / span
