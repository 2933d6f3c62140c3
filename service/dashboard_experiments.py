"""The dashboard's Experiments pages: the experiments' list and one experiment's report.

Both call the API's own route functions (``GET /admin/experiments``' listing, ``GET /experiments/{id}``'s
report), so the page shows what the JSON says; this module only draws each metric's 95% intervals.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup, escape
from sqlalchemy.orm import Session

from service.api.routes import experiments as experiments_routes
from service.svg import COLOURS

METRICS = (("ctr", "CTR"), ("hit_rate", "Hit-rate@k"), ("mrr", "MRR"), ("gain", "Gain"), ("conversion", "Conversions"))
WIDTH, ROW, LEFT, RIGHT = 360, 28, 100, 16  # narrow: at 390 px the chart is drawn near its own size, its text readable


def experiments_page(session: Session) -> dict[str, Any]:
    listed = experiments_routes.list_experiments(session)
    return {"experiments": [e.model_dump() for e in reversed(listed)]}  # the newest first


def experiment_page(session: Session, experiment_id: str) -> dict[str, Any]:
    """The report of ``GET /experiments/{id}`` (an ``ApiError`` 404 for an unknown id) and one interval chart per metric."""
    report = experiments_routes.experiment_results(session, experiment_id)
    charts = {key: interval_chart(f"{name}: value and 95% interval per arm", report["arms"], key) for key, name in METRICS}
    return {"report": report, "metrics": METRICS, "charts": charts}


def interval_chart(label: str, arms: list[dict[str, Any]], metric: str) -> Markup:
    """One row per arm: a line from the interval's low to its high and a dot at the value (none when unmeasured)."""
    measured = [a[metric] for a in arms if a[metric]["value"] is not None]
    high = max([e["high"] for e in measured if e["high"] is not None] + [e["value"] for e in measured] + [0.0]) or 1.0
    scale = (WIDTH - LEFT - RIGHT) / high
    height = ROW * len(arms) + 24
    body = [f'<line x1="{LEFT}" x2="{LEFT}" y1="4" y2="{height - 20}" stroke="#a0aec0"/>',
            f'<text x="{LEFT}" y="{height - 6}" font-size="11" fill="#555">0</text>',
            f'<text x="{WIDTH - RIGHT}" y="{height - 6}" font-size="11" fill="#555" text-anchor="end">{high:.3g}</text>']
    for n, arm in enumerate(arms):
        y, estimate, colour = ROW * n + 18, arm[metric], COLOURS[n % len(COLOURS)]
        body.append(f'<text x="{LEFT - 8}" y="{y + 4}" font-size="12" text-anchor="end">{escape(arm["name"])}</text>')
        if estimate["value"] is None:
            body.append(f'<text x="{LEFT + 8}" y="{y + 4}" font-size="11" fill="#555">no impressions</text>')
            continue
        if estimate["low"] is not None and estimate["high"] is not None:
            body.append(f'<line x1="{LEFT + estimate["low"] * scale:.1f}" x2="{LEFT + estimate["high"] * scale:.1f}" '
                        f'y1="{y}" y2="{y}" stroke="{colour}" stroke-width="3"/>')
        body.append(f'<circle cx="{LEFT + estimate["value"] * scale:.1f}" cy="{y}" r="5" fill="{colour}"/>')
    return Markup(f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" aria-label="{escape(label)}" '
                  f'xmlns="http://www.w3.org/2000/svg"><title>{escape(label)}</title>' + "".join(body) + "</svg>")
