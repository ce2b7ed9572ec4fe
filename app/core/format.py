"""How numbers read on screen (ui.md "Numbers"): one place, so every page says it the same way."""

from __future__ import annotations

import math

_DASH = "\u2014"
_UP = "\u25b2"
_DOWN = "\u25bc"


def _trim(text: str) -> str:
    """ "12.0" -> "12", "1.50" -> "1.5"."""
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _compact(value: float, decimals: int = 1) -> str:
    """950 -> "950", 12_400 -> "12.4k", 3_100_000 -> "3.1M", 999_960 -> "1M" (rounding promotes)."""
    sign = "-" if value < 0 else ""
    v = abs(value)
    if round(v) < 1000:
        return f"{sign}{round(v)}"
    for scale, suffix in ((1e3, "k"), (1e6, "M"), (1e9, "B"), (1e12, "T")):
        shown = round(v / scale, decimals)
        if shown < 1000 or suffix == "T":
            return f"{sign}{_trim(f'{shown:.{decimals}f}')}{suffix}"
    raise AssertionError("unreachable")


def fmt_latency_ms(ms: float | None) -> str:
    """850 -> "850 ms", 1420 -> "1.42 s" (switch at 1 s), 2.5 -> "2.5 ms", 75_000 -> "1 min 15 s"."""
    if ms is None or math.isnan(ms):
        return _DASH
    if ms < 0:
        return "-" + fmt_latency_ms(-ms)
    if ms < 10 and round(ms, 1) < 10:
        return f"{_trim(f'{ms:.1f}')} ms"
    if round(ms) < 1000:
        return f"{round(ms)} ms"
    s = ms / 1000
    if round(s, 2) < 10:
        return f"{s:.2f} s"
    if round(s, 1) < 60:
        return f"{s:.1f} s"
    total = round(s)
    minutes, seconds = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def fmt_usd(usd: float | None) -> str:
    """0.0042 -> "$0.0042" (two significant digits under a cent), 12.4 -> "$12.40", 1200 -> "$1.2k".

    ``None`` is a price we do not know: "cost unknown", never "$0.00".
    """
    if usd is None or math.isnan(usd):
        return "cost unknown"
    if usd < 0:
        return "-" + fmt_usd(-usd)
    if usd == 0:
        return "$0.00"
    if usd < 0.01:
        digits = 1 - math.floor(math.log10(usd))  # two significant digits
        if round(usd, digits) < 0.01:
            return f"${_trim(f'{usd:.{digits}f}')}"
    if round(usd, 2) < 1000:
        return f"${usd:.2f}"
    return f"${_compact(usd)}"


def fmt_tokens(n: float | None) -> str:
    """950 -> "950", 12_400 -> "12.4k", 3_100_000 -> "3.1M"."""
    if n is None:
        return _DASH
    return _compact(n)


def fmt_count(n: float | None) -> str:
    """Any count (requests, events), compact like tokens."""
    return fmt_tokens(n)


def fmt_rate(per_unit: float | None, unit: str = "s") -> str:
    """Requests (or tokens) per unit: 12.4 -> "12.4/s", 0.25 -> "0.25/s", 1500 -> "1.5k/min" (unit "min").

    ui.md: ``/s`` for live charts, ``/min`` for history.
    """
    if per_unit is None or math.isnan(per_unit):
        return _DASH
    v = abs(per_unit)
    sign = "-" if per_unit < 0 else ""
    if v == 0:
        text = "0"
    elif v < 1:
        text = _trim(f"{v:.2f}") if round(v, 2) > 0 else f"{v:.1g}"
    elif v < 100:
        text = _trim(f"{v:.1f}")
    else:
        text = _compact(v)
    return f"{sign}{text}/{unit}"


def fmt_percent(ratio: float | None, decimals: int = 0) -> str:
    """0.8 -> "80%", 0.004 -> "0.4%" (small non-zero shares keep a decimal rather than read 0%)."""
    if ratio is None or math.isnan(ratio):
        return _DASH
    pct = ratio * 100
    if decimals == 0 and pct != 0 and abs(pct) < 1:
        return f"{_trim(f'{pct:.1f}')}%"
    return f"{pct:.{decimals}f}%"


def fmt_change(
    current: float | None, previous: float | None, higher_is_good: bool | None
) -> tuple[str, bool | None]:
    """Change against the previous period: ("▲ 12%", good?) or ("▼ 3%", good?).

    ``good`` says how to colour it: ``None`` when there is no change, no baseline, or the metric
    is neutral (``higher_is_good=None``).
    """
    if current is None or previous is None or math.isnan(current) or math.isnan(previous):
        return _DASH, None
    if previous == 0:
        if current == 0:
            return "0%", None
        return ("new", None)
    change = (current - previous) / abs(previous) * 100
    mag = abs(change)
    if round(mag, 1) == 0:
        return "0%", None
    text = _trim(f"{mag:.1f}") if mag < 1 else f"{round(mag):,}"
    arrow = _UP if change > 0 else _DOWN
    good = None if higher_is_good is None else (change > 0) == higher_is_good
    return f"{arrow} {text}%", good


def fmt_relative_time(seconds_ago: float) -> str:
    """12 -> "12 s ago", 250 -> "4 min ago", 7300 -> "2 h ago", 200_000 -> "2 d ago"; negative -> "in 4 min"."""
    if math.isnan(seconds_ago):
        return _DASH
    future = seconds_ago < 0
    s = abs(seconds_ago)
    if s < 1:
        return "just now"
    if s < 60:
        text = f"{math.floor(s)} s"
    elif s < 3600:
        text = f"{math.floor(s / 60)} min"
    elif s < 86400:
        text = f"{math.floor(s / 3600)} h"
    else:
        text = f"{math.floor(s / 86400)} d"
    return f"in {text}" if future else f"{text} ago"
