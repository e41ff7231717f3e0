"""Line charts drawn on the server as SVG: no script, no network, one circle per point."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

__all__ = ["line_chart"]

WIDTH, HEIGHT, PAD, RIGHT = 600, 240, 44, 130  # RIGHT: room for the legend
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")


def line_chart(
    title: str,
    series: Mapping[str, Sequence[tuple[float, float | None]]],
    *,
    y_label: str,
    limit: float | None = None,
    limit_label: str = "",
) -> str:
    """An SVG line chart of ``series`` (name -> ``(x, y)`` points; ``None`` y is skipped).

    Every point is a ``<circle class="point">`` with a ``<title>`` naming it;
    ``limit`` draws a dashed horizontal line (a budget).
    """
    points = [(x, y) for s in series.values() for x, y in s if y is not None]
    xs = [x for x, _ in points] or [1.0]
    ys = [y for _, y in points] + ([limit] if limit is not None else [])
    x0, x1 = min(xs), max(xs)
    y0, y1 = min([0.0, *ys]), max([1e-9, *ys])
    if x1 == x0:
        x1 = x0 + 1

    def sx(x: float) -> float:
        return PAD + (x - x0) / (x1 - x0) * (WIDTH - PAD - RIGHT)

    def sy(y: float) -> float:
        return HEIGHT - PAD - (y - y0) / (y1 - y0) * (HEIGHT - 2 * PAD)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" aria-label="{escape(title)}">',
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" '
        f'font-weight="bold">{escape(title)}</text>',
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - RIGHT}" '
        f'y2="{HEIGHT - PAD}" stroke="#555"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#555"/>',
        f'<text x="{PAD - 6}" y="{sy(y1) + 4:.1f}" text-anchor="end" '
        f'font-size="10">{y1:.3g}</text>',
        f'<text x="{PAD - 6}" y="{sy(y0) + 4:.1f}" text-anchor="end" '
        f'font-size="10">{y0:.3g}</text>',
        f'<text x="12" y="{HEIGHT / 2}" font-size="11" transform="rotate(-90 12 {HEIGHT / 2})" '
        f'text-anchor="middle">{escape(y_label)}</text>',
        f'<text x="{(WIDTH - RIGHT + PAD) / 2}" y="{HEIGHT - 8}" text-anchor="middle" '
        'font-size="11">round</text>',
    ]
    for x in sorted(set(xs)):
        parts.append(
            f'<text x="{sx(x):.1f}" y="{HEIGHT - PAD + 14}" text-anchor="middle" '
            f'font-size="10">{x:g}</text>'
        )
    if limit is not None:
        parts.append(
            f'<line class="limit" x1="{PAD}" y1="{sy(limit):.1f}" x2="{WIDTH - RIGHT}" '
            f'y2="{sy(limit):.1f}" stroke="#999" stroke-dasharray="5,4"/>'
            f'<text x="{WIDTH - RIGHT}" y="{sy(limit) - 4:.1f}" text-anchor="end" '
            f'font-size="10">{escape(limit_label)}</text>'
        )
    for i, (name, values) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        shown = [(x, y) for x, y in values if y is not None]
        if len(shown) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in shown)
            parts.append(f'<polyline fill="none" stroke="{colour}" points="{path}"/>')
        for x, y in shown:
            parts.append(
                f'<circle class="point" data-series="{escape(name)}" cx="{sx(x):.1f}" '
                f'cy="{sy(y):.1f}" r="3.5" fill="{colour}"><title>{escape(name)} round {x:g}: '
                f"{y:.4g}</title></circle>"
            )
        parts.append(
            f'<text x="{WIDTH - RIGHT + 8}" y="{PAD + 14 * i}" font-size="10" '
            f'fill="{colour}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
