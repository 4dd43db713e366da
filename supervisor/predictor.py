"""How much memory the next load of a component will need, and where memory is heading.
Pure functions over plain data; time arrives as an argument.

Peak prediction (`predict`):
- no history: the configured `estimated_mb`, with no confidence;
- each run counts by its need (`RunRecord.need_mb`): its peak less the file-backed pages it
  mapped and did not keep touching once ready (read once, they are clean and re-readable);
- with history: the recency-weighted mean of past needs (carried one run ahead on a steady
  rise: `run_drift`; a lone one-off run far above the others left out once the run after
  it was bumped: `_lone_peak`) (weights halve every
  HALF_LIFE_RUNS runs) plus a spread term, times a safety margin that shrinks as runs
  accumulate (MARGIN_FIRST at one run, falling as 1/sqrt(n) to MARGIN_FLOOR);
- with declared `inputs` (file sizes): when past runs saw different input sizes, the peak is
  fitted as `fixed + per_byte * size` (least squares, recency-weighted) and evaluated at the
  current size, so a model that grows from 1 GB to 4 GB is predicted from the relation, not
  from a stale history;
- without history but with declared `inputs`: the estimate plus the inputs' size (the
  program, and each input byte read or mapped once), not the estimate alone;
- the margin is calibrated once there are enough runs (`calibrated_margin`: split conformal
  at the stated coverage, never under MARGIN_FLOOR); until then it follows the run count
  (a rise carried ahead excepted: its spread is the scatter around the line, the noise
  itself, so it gets that spread or MARGIN_FLOOR, not both), and the prediction is never
  below what one of the last RECENT_TOP_RUNS runs needed;
- after a real under-prediction (the last run peaked more than BUMP_TOLERANCE above what
  was predicted for it), the next prediction is at least max(actual + 100 MB, actual x 1.2),
  as Kubernetes VPA records an OOM; a run a little over its prediction is no OOM, and the
  bump lasts as long as the overrun is the newest run.

Trend (`theil_sen`, `time_to_reach`): the median of pairwise slopes, robust to the spikes a
sawtooth makes; a steady leak is growth over LEAK_WINDOW_S with a small spread.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import msgspec

from .model import RunRecord

HALF_LIFE_RUNS = 4.0
MARGIN_FIRST = 0.25
MARGIN_FLOOR = 0.05
SPREAD_WEIGHT = 1.5
OOM_BUMP_MB = 100.0
OOM_BUMP_FACTOR = 1.2
BUMP_TOLERANCE = 0.10  # a run more than this above its prediction counts as an overrun
COVERAGE = 0.95  # the share of runs a calibrated prediction should cover ([memory] prediction_coverage)
MIN_CALIBRATION = 5  # walk-forward ratios needed before the margin is calibrated
SETTLED_RUNS = 5  # runs before a center is settled: trend and one-off detection need 5
LEAK_WINDOW_S = 120.0
LEAK_MIN_MB_PER_MIN = 1.0


class Prediction(msgspec.Struct, frozen=True):
    peak_mb: float
    confidence: float  # 0 (a guess) .. 1 (many consistent runs)
    runs: int
    margin: float  # the safety factor applied
    basis: str  # "estimate", "history", "inputs", "history+bump"
    detail: str  # human words with the evidence


def _weights(n: int) -> list[float]:
    """Newest run last; weight halves every HALF_LIFE_RUNS runs back."""
    return [0.5 ** ((n - 1 - i) / HALF_LIFE_RUNS) for i in range(n)]


def margin_for(runs: int) -> float:
    if runs <= 0:
        return MARGIN_FIRST
    return max(MARGIN_FLOOR, MARGIN_FIRST / math.sqrt(runs))


def predict(
    runs: Sequence[RunRecord], estimated_mb: float, inputs_bytes: int | None = None, coverage: float = COVERAGE
) -> Prediction:
    if not runs:
        if inputs_bytes:
            inputs_mb = inputs_bytes / 1048576
            detail = f"no history: the estimate {estimated_mb:g} MB plus its inputs' {inputs_mb:.0f} MB"
            return Prediction(round(estimated_mb + inputs_mb, 1), 0.0, 0, 0.0, "estimate+inputs", detail)
        return Prediction(
            float(estimated_mb), 0.0, 0, 0.0, "estimate", f"no history: the configured estimate {estimated_mb:g} MB"
        )
    n = len(runs)
    center, basis, mean, spread = _center(runs, inputs_bytes)
    base = center + SPREAD_WEIGHT * spread
    calibrated = calibrated_margin(runs, coverage)
    if calibrated is not None:  # the margin over the center that covered `coverage` of past runs
        margin, peak = calibrated, center * (1.0 + calibrated)
    elif basis == "history+trend":  # the spread is the scatter around the carried line: padding
        peak = max(base, center * (1.0 + MARGIN_FLOOR))  # it by the run-count margin too counted the noise twice
        margin = peak / center - 1.0
    else:
        margin = margin_for(n)
        peak = base * (1.0 + margin)
    last = runs[-1]
    detail = f"from {n} run{'s' if n != 1 else ''}: weighted mean {mean:.0f} MB, spread {spread:.0f} MB"
    if basis == "inputs" and inputs_bytes is not None:
        detail = f"from {n} runs, fitted to input size {inputs_bytes / 1048576:.0f} MB: {base:.0f} MB"
    # Until calibrated, never below what a recent run needed; then the stated coverage rules.
    if calibrated is None and (seen := recent_top_need(runs, inputs_bytes)) > peak:
        peak = seen
        detail += f"; raised to the {seen:.0f} MB a recent run needed"
    if last.predicted_mb is not None and last.need_mb > last.predicted_mb * (1.0 + BUMP_TOLERANCE):
        bumped = max(last.need_mb + OOM_BUMP_MB, last.need_mb * OOM_BUMP_FACTOR)
        if bumped > peak:
            peak, basis = bumped, basis + "+bump"
            detail += f"; last run needed {last.need_mb:.0f} MB, over its prediction {last.predicted_mb:.0f} MB"
    if n == 1:
        detail += "; rests on one run (`ironcliw forget NAME` clears a misleading one)"
    confidence = min(1.0, n / 10.0) * (1.0 / (1.0 + spread / max(mean, 1.0)))
    how = f"calibrated for {coverage:.0%} of runs" if calibrated is not None else "by run count"
    return Prediction(
        round(peak, 1), round(confidence, 2), n, round(margin, 3), basis, detail + f", margin {margin:.0%} ({how})"
    )


def _center(runs: Sequence[RunRecord], inputs_bytes: int | None) -> tuple[float, str, float, float]:
    """(the central estimate: the weighted mean, or the input fit at this size; basis; the
    weighted mean; the spread around the center)."""
    w = _weights(len(runs))
    peaks = [r.need_mb for r in runs]
    lone = _lone_peak(peaks)
    if lone is not None:  # one run far above all others: the bump answered it; it is not the spread
        w[lone] = 0.0
    total_w = sum(w)
    mean = sum(wi * p for wi, p in zip(w, peaks, strict=True)) / total_w
    spread = math.sqrt(sum(wi * (p - mean) ** 2 for wi, p in zip(w, peaks, strict=True)) / total_w)
    fitted = _fit_inputs(runs, w, inputs_bytes)
    if fitted is not None:
        return fitted[0], "inputs", mean, fitted[1]
    drift = run_drift(peaks)
    if drift > 0:  # a steady rise run after run: the mean lags it, so carry it one run ahead,
        # with the spread around that line (the rise itself is not noise)
        recent = peaks[-8:]
        line = [peaks[-1] - drift * (len(recent) - 1 - i) for i in range(len(recent))]
        around = math.sqrt(sum((v - f) ** 2 for v, f in zip(recent, line, strict=True)) / len(recent))
        return max(mean, peaks[-1] + drift), "history+trend", mean, around
    return mean, "history", mean, spread


LONE_PEAK_FACTOR = 1.5
RECENT_TOP_RUNS = 20


def recent_top_need(runs: Sequence[RunRecord], inputs_bytes: int | None, window: int = RECENT_TOP_RUNS) -> float:
    """The largest need among the last `window` runs (five half-lives: older runs weigh under
    3 % in the mean), leaving out a lone one-off peak and runs on larger inputs than `inputs_bytes`."""
    needs = [r.need_mb for r in runs]
    lone = _lone_peak(needs)
    start = len(runs) - window
    return max(
        (
            r.need_mb
            for i, r in enumerate(runs)
            if i >= start and i != lone and (inputs_bytes is None or (r.inputs_bytes or 0) <= inputs_bytes)
        ),
        default=0.0,
    )


def _lone_peak(values: Sequence[float]) -> int | None:
    """The index of a single run at least LONE_PEAK_FACTOR above every other one, among at
    least 5 and not the newest (the bump covers the run right after it): a one-off, which
    would otherwise inflate the spread, and so every prediction, for many runs. Two such runs
    are a mode, not a one-off."""
    if len(values) < 5:
        return None
    top = max(range(len(values) - 1), key=values.__getitem__)
    rest = max(v for i, v in enumerate(values) if i != top)
    return top if values[top] >= LONE_PEAK_FACTOR * rest else None


def run_drift(values: Sequence[float], window: int = 8) -> float:
    """MB per run of a steady rise over the last `window` runs: the Theil-Sen slope when at
    least 80 % of the pairs rise (growing data, a slow creep), else 0 (noise, two modes)."""
    recent = list(values[-window:])
    if len(recent) < 5:
        return 0.0
    slopes = [(b - a) / (j - i) for i, a in enumerate(recent) for j, b in enumerate(recent) if j > i]
    if sum(1 for x in slopes if x > 0) < 0.8 * len(slopes):
        return 0.0
    return max(0.0, sorted(slopes)[len(slopes) // 2])


def calibrated_margin(runs: Sequence[RunRecord], coverage: float) -> float | None:
    """The margin that would have covered `coverage` of the past runs (split conformal):
    each run is predicted walk-forward from the runs before it, and the margin is the
    ceil((m + 1) x coverage)-th smallest of the m ratios actual / center, less one. None
    while there are too few ratios for that rank (the run-count schedule then).

    Only runs predicted from SETTLED_RUNS runs or more count: before that the center has no
    trend and no one-off detection, so its misses (a rise not yet seen as one) say nothing
    of today's center and, as the largest ratios, would set the margin for dozens of runs.
    A lone one-off peak (`_lone_peak`) does not count either: the bump after it answered it,
    and its ratio alone would triple every later prediction; a second such run is a mode and counts."""
    lone = _lone_peak([r.need_mb for r in runs])
    ratios = []
    for i in range(SETTLED_RUNS, len(runs)):
        center = _center(runs[:i], runs[i].inputs_bytes)[0]
        if center > 0 and i != lone:
            ratios.append(runs[i].need_mb / center)
    rank = math.ceil((len(ratios) + 1) * coverage)
    if len(ratios) < MIN_CALIBRATION or rank > len(ratios):
        return None
    return max(MARGIN_FLOOR, sorted(ratios)[rank - 1] - 1.0)


def _fit_inputs(runs: Sequence[RunRecord], w: list[float], inputs_bytes: int | None) -> tuple[float, float] | None:
    """peak = fixed + per_byte * size, weighted least squares: (the fit at `inputs_bytes`, the
    residual spread); None when it cannot be fitted."""
    if inputs_bytes is None:
        return None
    points = [
        (wi, float(r.inputs_bytes), r.need_mb) for wi, r in zip(w, runs, strict=True) if r.inputs_bytes is not None
    ]
    sizes = {x for _, x, _ in points}
    if not points:
        return None
    if len(sizes) < 2:
        # One size seen: fixed and per-byte cost cannot be told apart. Larger inputs are
        # scaled as if all of the peak grew with them (an upper bound); smaller ones are not.
        (seen,) = sizes
        if seen > 0 and inputs_bytes > seen:
            return max(y for _, _, y in points) * inputs_bytes / seen, 0.0
        return None
    sw = sum(wi for wi, _, _ in points)
    mx = sum(wi * x for wi, x, _ in points) / sw
    my = sum(wi * y for wi, _, y in points) / sw
    sxx = sum(wi * (x - mx) ** 2 for wi, x, _ in points)
    if sxx == 0:
        return None
    slope = sum(wi * (x - mx) * (y - my) for wi, x, y in points) / sxx
    slope = max(0.0, slope)  # memory does not shrink as inputs grow
    fixed = my - slope * mx
    residual = math.sqrt(sum(wi * (y - (fixed + slope * x)) ** 2 for wi, x, y in points) / sw)
    return max(0.0, fixed + slope * inputs_bytes), residual


# --- trend ----------------------------------------------------------------------------------


def theil_sen(points: Sequence[tuple[float, float]], max_points: int = 30) -> float | None:
    """Median of pairwise slopes (units of value per unit of time); None with under 3 points."""
    if len(points) > max_points:  # thin evenly: the estimator is O(n^2)
        step = len(points) / max_points
        points = [points[int(i * step)] for i in range(max_points)]
    if len(points) < 3:
        return None
    slopes = sorted(
        (b[1] - a[1]) / (b[0] - a[0]) for i, a in enumerate(points) for b in points[i + 1 :] if b[0] != a[0]
    )
    if not slopes:
        return None
    mid = len(slopes) // 2
    return slopes[mid] if len(slopes) % 2 else (slopes[mid - 1] + slopes[mid]) / 2


def time_to_reach(current: float, target: float, slope: float | None) -> float | None:
    """Seconds until `current` reaches `target` at `slope` per second; None if never."""
    if slope is None or slope <= 0 or current >= target:
        return 0.0 if current >= target else None
    return (target - current) / slope


class Trend(msgspec.Struct, frozen=True):
    slope_mb_per_min: float | None
    leak: bool
    detail: str


def max_drawdown(values: Sequence[float]) -> float:
    """The largest fall from a running maximum: what a leak never shows and a sawtooth always does."""
    top = float("-inf")
    worst = 0.0
    for v in values:
        top = max(top, v)
        worst = max(worst, top - v)
    return worst


def leak_possible(points_mb: Sequence[tuple[float, float]], idle: bool) -> bool:
    """False when `trend` cannot call these points a leak, found in one pass instead of its
    O(n^2) slopes (the leak check runs over every component every LEAK_CHECK_EVERY_S). No
    pair of points rises faster than their whole spread over the closest two in time, and
    the median of the pairs' slopes is no steeper than the steepest pair."""
    if not idle or len(points_mb) < 3 or points_mb[-1][0] - points_mb[0][0] < LEAK_WINDOW_S:
        return False
    times = [t for t, _ in points_mb]
    values = [v for _, v in points_mb]
    closest = min((b - a for a, b in itertools.pairwise(times) if b > a), default=0.0)
    return closest > 0 and (max(values) - min(values)) / closest * 60 >= LEAK_MIN_MB_PER_MIN


def trend(points_mb: Sequence[tuple[float, float]], idle: bool) -> Trend:
    """Slope over the points (time s, MB). A leak: while idle, growth of at least
    LEAK_MIN_MB_PER_MIN sustained over LEAK_WINDOW_S, in both halves of the window, without a
    fall larger than noise (a sawtooth that frees what it took is not a leak)."""
    slope = theil_sen(points_mb)
    if slope is None:
        return Trend(None, False, "not enough samples")
    per_min = slope * 60
    span = points_mb[-1][0] - points_mb[0][0]
    leak = False
    if idle and span >= LEAK_WINDOW_S and per_min >= LEAK_MIN_MB_PER_MIN:
        half = len(points_mb) // 2
        first, second = theil_sen(points_mb[: half + 1]), theil_sen(points_mb[half:])
        rise = per_min * span / 60
        sustained = first is not None and second is not None and min(first, second) * 60 >= 0.3 * per_min
        leak = sustained and max_drawdown([v for _, v in points_mb]) < max(2.0, 0.1 * rise)
    word = "leak" if leak else ("growing" if per_min > 0.5 else "shrinking" if per_min < -0.5 else "flat")
    return Trend(round(per_min, 2), leak, f"{word}: {per_min:+.1f} MB/min over {span:.0f} s")
