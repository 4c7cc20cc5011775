"""The PQL report: one self-contained HTML page (inline CSS and SVG, nothing fetched) and its plain-text twin.

Both render the same plain data, a JSON-able dict, so `pqlflow backtest` and `pqlflow replay` fill one
structure and get one report. `pqlflow.analysis.backtest.BacktestResult.to_dict()` produces it; the keys are:

    history      {files, lines, events, duplicates, bad_lines, bad: [{file, line, reason}], start, end}
    window_days  conversion window after qualification (days)
    speed        {seconds, events_per_second, cpu_seconds, bare_decode_seconds, ...}   (optional)
    definitions  one dict per definition (`pqlflow.analysis.backtest.metrics`), each with:
        definition {name, version, source, unit}; active, converted, pqls, tp, fp, fn, tn, precision,
        recall, lift, base_rate, pql_conversion_rate, non_pql_conversion_rate, censored_pqls,
        qualified_events, disqualified_events, touch {high, low},
        time_to_convert {n, median_days, p25_days, p75_days, mean_days, buckets: [{label, count}]},
        weekly [{week, new_subjects, pqls, qualified_events, converted, pqls_converted}],
        reasons [{code, kind, example, count}],
        signals [{label, signal, source, with, with_rate, without, without_rate, lift, coverage, ...}],
        sweeps [{label, signal, op, current, points: [{threshold, pqls, converted, conversion_rate,
                 precision, recall, lift, current}]}]
        worth (`pqlflow.analysis.worth.customer_worth`: PQL-sourced customers against the others; absent
        with --partitions), and, from replay only: nudged (int), channels [{channel, pqls, converted,
        conversion_rate, median_days}] where channel "holdout" is the control group, and steps
        (`pqlflow.analysis.worth.step_results`: per journey step and channel, with lift against the holdout).
    comparison   {groups: [{group, accounts, converted, conversion_rate}], a_earlier, b_earlier, same_time}
    source       "backtest" | "replay"

Missing optional parts are shown as "not available" with what would provide them.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from typing import Any

from pqlflow.analysis.worth import customer_table, step_table

# ---- formatting ---------------------------------------------------------------------------------


def pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value * 100:.{digits}f}%"


def num(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return "∞" if value > 0 else "−∞"
    if isinstance(value, float) and digits == 0 and value != int(value):
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return f"{value:,.{digits}f}"


def times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def days(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} days"


def _def_title(m: dict[str, Any]) -> str:
    d = m["definition"]
    return f"{d['name']} v{d['version']}"


# ---- text ---------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    """An aligned plain-text table (numbers right-aligned)."""
    right = right or [i > 0 for i in range(len(headers))]
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["─" * w for w in widths]), *(line(r) for r in rows)])


def render_text(data: dict[str, Any]) -> str:
    """The report as aligned text tables, for the terminal."""
    out: list[str] = []
    h = data.get("history", {})
    out.append(
        f"History: {num(h.get('lines'))} lines · {num(h.get('events'))} events · "
        f"{num(h.get('duplicates'))} duplicates · {num(h.get('bad_lines'))} bad lines · "
        f"{h.get('start') or '?'} → {h.get('end') or '?'}"
    )
    for b in h.get("bad", [])[:10]:
        out.append(f"  bad line {b['file']}:{b['line']}: {b['reason']}")
    if h.get("bad_lines", 0) > 10:
        out.append(f"  … and {h['bad_lines'] - 10:,} more (see --json)")
    window = data.get("window_days", 30)
    defs = data.get("definitions", [])
    if len(defs) >= 2:
        out.append("")
        out.append(_text_comparison(defs, data.get("comparison"), window))
    for m in defs:
        out.append("")
        out.append(_text_definition(m, window))
    speed = data.get("speed")
    if speed:
        out.append("")
        runs = len(data.get("definitions", []))
        line = (
            f"Speed ({runs} definition{'s' if runs != 1 else ''}): {num(h.get('lines'))} lines in "
            f"{speed['seconds']:.2f} s wall / "
            f"{speed.get('cpu_seconds', speed['seconds']):.2f} s CPU = "
            f"{num(speed['events_per_second'])} events/s ({speed.get('json', 'json')})"
        )
        if speed.get("bare_decode_seconds") is not None:
            line += (
                f"; bare JSON decoding of the same file: {speed['bare_decode_seconds']:.2f} s = "
                f"{num(speed.get('bare_decode_lines_per_second'))} lines/s"
            )
        out.append(line)
    return "\n".join(out) + "\n"


def _text_definition(m: dict[str, Any], window: float) -> str:
    out = [f"━━ {_def_title(m)} ({m['definition'].get('source') or ''}) ━━"]
    for w in m.get("warnings", []):
        out.append(f"warning: {w}")
    out.append(
        f"Subjects active: {num(m['active'])} · converted: {num(m['converted'])} · "
        f"PQLs: {num(m['pqls'])} ({num(m['qualified_events'])} qualifications, "
        f"{num(m['disqualified_events'])} disqualifications)"
    )
    out.append("")
    out.append(
        table(
            ["quality", "value"],
            [
                [f"PQL conversion rate (within {window:g} days)", pct(m["pql_conversion_rate"])],
                ["non-PQL conversion rate (any time)", pct(m["non_pql_conversion_rate"])],
                ["precision", pct(m["precision"])],
                ["recall", pct(m["recall"])],
                ["lift (precision ÷ base rate)", times(m["lift"])],
                ["base rate", pct(m["base_rate"])],
                ["PQLs still inside their window at the end", num(m["censored_pqls"])],
            ],
            [False, True],
        )
    )
    ttc = m["time_to_convert"]
    out.append("")
    out.append(
        f"Time from qualification to conversion ({num(ttc['n'])} PQLs converted): median "
        f"{days(ttc['median_days'])}, middle half {days(ttc['p25_days'])} – {days(ttc['p75_days'])}"
    )
    if ttc["n"]:
        out.append(table(["time to convert", "PQLs"], [[b["label"], num(b["count"])] for b in ttc["buckets"]]))
    out.append("")
    out.append(
        table(
            ["week of", "new subjects", "PQLs", "converted in window", "conversions"],
            [
                [
                    w["week"],
                    num(w["new_subjects"]),
                    num(w["pqls"]),
                    num(w["pqls_converted"]),
                    num(w["converted"]),
                ]
                for w in m["weekly"]
            ],
        )
    )
    out += _text_worth(m)
    if m["signals"]:
        out.append("")
        out.append(
            table(
                ["signal (at its threshold)", "coverage", "conv. with", "conv. without", "lift"],
                [
                    [
                        s["label"],
                        pct(s["coverage"]),
                        pct(s["with_rate"]),
                        pct(s["without_rate"]),
                        times(s["lift"]),
                    ]
                    for s in m["signals"]
                ],
            )
        )
    if m["reasons"]:
        out.append("")
        out.append(
            table(
                ["top reasons", "PQLs", "example"],
                [[r["code"], num(r["count"]), r["example"]] for r in m["reasons"]],
                [False, True, False],
            )
        )
    for sw in m["sweeps"]:
        out.append("")
        out.append(f"Threshold sweep: {sw['label']} (current {num(sw['current'])})")
        out.append(
            table(
                ["threshold", "PQLs", "converted", "conversion", "recall", "lift"],
                [
                    [
                        ("▸ " if p["current"] else "") + num(p["threshold"]),
                        num(p["pqls"]),
                        num(p["converted"]),
                        pct(p["conversion_rate"]),
                        pct(p["recall"]),
                        times(p["lift"]),
                    ]
                    for p in sw["points"]
                ],
            )
        )
    if m.get("bad_event_count"):
        out.append("")
        out.append(f"{m['bad_event_count']:,} events ingest would quarantine (bad gauge values):")
        out += [f"  {b}" for b in m["bad_events"][:10]]
    return "\n".join(out)


def _text_worth(m: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if m.get("worth"):
        headers, rows, notes = customer_table(m["worth"])
        out += ["", "What PQLs are worth as customers", table(["customer worth", *headers[1:]], rows),
                *(f"  {n}" for n in notes)]
    if m.get("steps") and m["steps"]["steps"]:
        headers, rows, notes = step_table(m["steps"])
        out += ["", "Per journey step and channel", table(headers, rows, [False, False, True, False, True, True,
                                                                           False]), *(f"  {n}" for n in notes)]
    return out


def _text_comparison(defs: list[dict[str, Any]], comparison: dict[str, Any] | None, window: float) -> str:
    a, b = defs[0], defs[1]
    rows = [
        ["PQLs", num(a["pqls"]), num(b["pqls"])],
        [
            f"PQL conversion (within {window:g} d)",
            pct(a["pql_conversion_rate"]),
            pct(b["pql_conversion_rate"]),
        ],
        ["non-PQL conversion", pct(a["non_pql_conversion_rate"]), pct(b["non_pql_conversion_rate"])],
        ["precision", pct(a["precision"]), pct(b["precision"])],
        ["recall", pct(a["recall"]), pct(b["recall"])],
        ["lift", times(a["lift"]), times(b["lift"])],
        [
            "median days to convert",
            num(a["time_to_convert"]["median_days"], 1),
            num(b["time_to_convert"]["median_days"], 1),
        ],
    ]
    out = ["━━ Comparison ━━", table(["", "A: " + _def_title(a), "B: " + _def_title(b)], rows)]
    if comparison:
        names = {
            "both": "qualified by both",
            "only_a": "only by A",
            "only_b": "only by B",
            "neither": "by neither",
        }
        out.append("")
        out.append(
            table(
                ["accounts", "count", "converted", "conversion"],
                [
                    [names[g["group"]], num(g["accounts"]), num(g["converted"]), pct(g["conversion_rate"])]
                    for g in comparison["groups"]
                ],
            )
        )
        out.append(
            f"Qualified by both: A first for {comparison['a_earlier']:,}, B first for "
            f"{comparison['b_earlier']:,}, same moment for {comparison['same_time']:,}."
        )
    return "\n".join(out)


def render_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


# ---- SVG charts ---------------------------------------------------------------------------------

INK = "#0f172a"
MUTED = "#64748b"
GRID = "#e2e8f0"
PRIMARY = "#4f46e5"
PRIMARY_SOFT = "#c7d2fe"
GOOD = "#0d9488"
WARN = "#d97706"
BAD = "#e11d48"
FULL = 980  # chart widths in CSS pixels of the page layout, so text in every chart is the same size
HALF = 440


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _nice_max(value: float, whole: bool = False) -> float:
    """A round axis maximum ≥ value; with `whole`, one whose quarter ticks are whole numbers."""
    if value <= 0:
        return 4.0 if whole else 1.0
    if whole and value <= 4:
        return 4.0
    exp = 10 ** math.floor(math.log10(value))
    for m in (1, 1.2, 1.6, 2, 2.4, 2.5, 3.2, 4, 5, 6, 8, 10):
        top = m * exp
        if value <= top and (not whole or (top / 4) == int(top / 4)):
            return top
    return 10 * exp if not whole else math.ceil(value / 4) * 4


def bar_chart(
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float], str]],
    *,
    width: int = FULL,
    height: int = 240,
    title: str = "",
    y_format: Any = num,
) -> str:
    """Grouped vertical bars: series = [(name, values, colour)]."""
    left, right, top, bottom = 48, 12, 14, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = _nice_max(max([v for _, vs, _ in series for v in vs] or [0]), whole=True)
    n = max(len(labels), 1)
    group_w = plot_w / n
    bar_w = max(2.0, min(28.0, group_w * 0.8 / max(len(series), 1)))
    parts = [f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="{_e(title)}">']
    for i in range(5):
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="ax">'
            f"{_e(y_format(top_value * i / 4))}</text>"
        )
    step = max(1, math.ceil(n / 12))
    for i, label in enumerate(labels):
        x0 = left + group_w * i + (group_w - bar_w * len(series)) / 2
        for k, (name, values, colour) in enumerate(series):
            v = values[i] if i < len(values) else 0
            h = plot_h * (v / top_value) if top_value else 0
            parts.append(
                f'<rect x="{x0 + k * bar_w:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 1:.1f}" '
                f'height="{h:.1f}" rx="2" fill="{colour}"><title>{_e(label)} · {_e(name)}: '
                f"{_e(y_format(v))}</title></rect>"
            )
        if i % step == 0:
            parts.append(
                f'<text x="{left + group_w * (i + 0.5):.1f}" y="{height - bottom + 16}" '
                f'text-anchor="middle" class="ax">{_e(label)}</text>'
            )
    parts.append(_legend([(name, colour) for name, _, colour in series], left, height - 10))
    parts.append("</svg>")
    return "".join(parts)


def _legend(items: Sequence[tuple[str, str]], x: float, y: float) -> str:
    out = []
    for name, colour in items:
        out.append(
            f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" rx="2" fill="{colour}"/>'
            f'<text x="{x + 14:.1f}" y="{y:.1f}" class="ax">{_e(name)}</text>'
        )
        x += 24 + 6.5 * len(name)
    return "".join(out)


def hbars(
    rows: Sequence[tuple[str, float, str, str]], *, width: int = FULL, label_w: int = 230, title: str = ""
) -> str:
    """Horizontal bars: rows = [(label, value, shown text, colour)]."""
    row_h = 30
    height = row_h * len(rows) + 8
    top_value = max([v for _, v, _, _ in rows] or [1]) or 1
    plot_w = width - label_w - 90
    parts = [f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="{_e(title)}">']
    for i, (label, value, shown, colour) in enumerate(rows):
        y = 4 + i * row_h
        w = max(2.0, plot_w * value / top_value) if value else 0
        parts.append(f'<text x="{label_w - 10}" y="{y + 19}" text-anchor="end" class="lb">{_e(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 4}" width="{plot_w}" height="20" rx="4" fill="#f1f5f9"/>')
        parts.append(f'<rect x="{label_w}" y="{y + 4}" width="{w:.1f}" height="20" rx="4" fill="{colour}"/>')
        parts.append(f'<text x="{label_w + w + 8:.1f}" y="{y + 19}" class="val">{_e(shown)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def sweep_chart(sw: dict[str, Any], *, width: int = FULL, height: int = 280) -> str:
    """PQL volume (bars) and conversion rate (line) at each threshold; the current one highlighted."""
    points = sw["points"]
    left, right, top, bottom = 52, 52, 16, 48
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(len(points), 1)
    vol_max = _nice_max(max([p["pqls"] for p in points] or [0]), whole=True)
    rates = [p["conversion_rate"] for p in points if p["conversion_rate"] is not None]
    rate_max = _nice_max(max(rates or [0]) * 100) / 100
    group_w = plot_w / n
    bar_w = min(34.0, group_w * 0.62)
    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="threshold sweep {_e(sw["label"])}">'
    ]
    for i in range(5):
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="ax">{_e(num(vol_max * i / 4))}</text>'
        )
        parts.append(
            f'<text x="{width - right + 6}" y="{y + 4:.1f}" class="ax" fill="{GOOD}">'
            f"{_e(pct(rate_max * i / 4, 0))}</text>"
        )
    line_pts = []
    for i, p in enumerate(points):
        cx = left + group_w * (i + 0.5)
        h = plot_h * p["pqls"] / vol_max if vol_max else 0
        colour = PRIMARY if p["current"] else PRIMARY_SOFT
        parts.append(
            f'<rect x="{cx - bar_w / 2:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" '
            f'height="{h:.1f}" rx="3" fill="{colour}"><title>threshold {_e(num(p["threshold"]))}: '
            f"{_e(num(p['pqls']))} PQLs, {_e(pct(p['conversion_rate']))} convert</title></rect>"
        )
        weight = ' font-weight="700"' if p["current"] else ""
        parts.append(
            f'<text x="{cx:.1f}" y="{height - bottom + 16}" text-anchor="middle" class="ax"{weight}>'
            f"{_e(num(p['threshold']))}</text>"
        )
        if p["current"]:
            parts.append(
                f'<text x="{cx:.1f}" y="{height - bottom + 30}" text-anchor="middle" class="ax" '
                f'fill="{PRIMARY}" font-weight="700">current</text>'
            )
        if p["conversion_rate"] is not None and rate_max:
            line_pts.append((cx, top + plot_h - plot_h * p["conversion_rate"] / rate_max))
    if line_pts:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in line_pts)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{GOOD}" stroke-width="2.5"/>')
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{GOOD}"/>' for x, y in line_pts]
    parts.append(_legend([("PQLs", PRIMARY_SOFT), ("conversion rate", GOOD)], left, height - 6))
    parts.append("</svg>")
    return "".join(parts)


# ---- HTML ---------------------------------------------------------------------------------------

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f8fafc;color:#0f172a;font:15px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",
Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1080px;margin:0 auto;padding:32px 28px 56px}
header{margin-bottom:24px}
h1{font-size:26px;margin:0 0 4px;letter-spacing:-.01em}
h2{font-size:18px;margin:0 0 4px}
h3{font-size:15px;margin:18px 0 6px}
.sub{color:#64748b;margin:0}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;margin:20px 0 8px}
.kpi{background:#fff;border:1px solid #e2e8f0;border-radius:12px;padding:14px 16px}
.kpi b{display:block;font-size:24px;letter-spacing:-.01em}
.kpi span{color:#64748b;font-size:12.5px}
.kpi.hl{border-color:#c7d2fe;background:#eef2ff}
section{background:#fff;border:1px solid #e2e8f0;border-radius:14px;padding:20px 22px;margin:16px 0}
.lead{color:#475569;margin:2px 0 12px;font-size:14px}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:16px}
@media (max-width:860px){.grid2{grid-template-columns:1fr}}
table{border-collapse:collapse;width:100%;font-size:13.5px}
th{font-weight:600;color:#475569;text-align:left;border-bottom:2px solid #e2e8f0;padding:7px 8px}
td{border-bottom:1px solid #f1f5f9;padding:7px 8px;vertical-align:middle}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr.cur td{background:#eef2ff;font-weight:600}
.pill{display:inline-block;border-radius:999px;padding:1px 9px;font-size:12px;font-weight:600}
.up{background:#ccfbf1;color:#115e59}.down{background:#ffe4e6;color:#9f1239}.flat{background:#f1f5f9;color:#475569}
.lift{display:inline-block;height:8px;border-radius:4px;background:#0d9488;vertical-align:middle;margin-right:6px}
.na{color:#94a3b8;font-style:italic}
svg text.ax{font-size:11px;fill:#64748b}
svg text.lb{font-size:12.5px;fill:#0f172a}
svg text.val{font-size:12px;fill:#334155;font-weight:600}
.note{font-size:12.5px;color:#64748b;margin:8px 0 0}
footer{color:#94a3b8;font-size:12px;margin-top:28px}
code{background:#f1f5f9;border-radius:4px;padding:1px 5px;font-size:12.5px}
.cmp td:nth-child(2),.cmp td:nth-child(3){font-weight:600}
"""


def _kpi(label: str, value: str, highlight: bool = False) -> str:
    return f'<div class="kpi{" hl" if highlight else ""}"><b>{_e(value)}</b><span>{_e(label)}</span></div>'


def _lift_pill(lift: float | None) -> str:
    if lift is None:
        return '<span class="pill flat">—</span>'
    cls = "up" if lift >= 1.2 else "down" if lift < 0.9 else "flat"
    return f'<span class="pill {cls}">{_e(times(lift))}</span>'


def render_html(data: dict[str, Any], title: str | None = None) -> str:
    """The whole report as one HTML page: inline CSS and SVG, no scripts, nothing fetched."""
    defs = data.get("definitions", [])
    h = data.get("history", {})
    window = data.get("window_days", 30)
    source = data.get("source", "backtest")
    main_def = defs[0] if defs else None
    heading = title or (f"PQL {source}: " + " vs ".join(_def_title(m) for m in defs) if defs else "PQL report")
    body = [
        f"<header><h1>{_e(heading)}</h1><p class=sub>{_e(h.get('start') or '?')} → {_e(h.get('end') or '?')}"
        f" · {num(h.get('events'))} events from {num(len(h.get('files', [])))} file(s) · "
        f"conversion window {num(window)} days after qualification</p></header>"
    ]
    if len(defs) >= 2:
        body.append(_html_comparison(defs, data.get("comparison"), window))
    for m in defs:
        body.append(_html_definition(m, window, data, show_title=len(defs) > 1, primary=m is main_def))
    body.append(_html_quality(data))
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{_e(heading)}</title><style>{CSS}</style></head><body><main>"
        + "".join(body)
        + "</main></body></html>\n"
    )


def _html_definition(m: dict[str, Any], window: float, data: dict[str, Any], *, show_title: bool, primary: bool) -> str:
    out = []
    if show_title:
        out.append(f"<h2 style='margin-top:28px'>{_e(_def_title(m))}</h2>")
    for w in m.get("warnings", []):
        out.append(f"<p class=note>⚠ {_e(w)}</p>")
    ttc = m["time_to_convert"]
    out.append(
        '<div class="kpis">'
        + "".join(
            [
                _kpi("PQLs", num(m["pqls"]), True),
                _kpi(f"PQL conversion within {num(window)} d", pct(m["pql_conversion_rate"]), True),
                _kpi("non-PQL conversion", pct(m["non_pql_conversion_rate"])),
                _kpi("lift over base rate", times(m["lift"])),
                _kpi("recall (converters caught)", pct(m["recall"])),
                _kpi("median time to convert", days(ttc["median_days"])),
            ]
        )
        + "</div>"
    )
    # volume over time
    weekly = m["weekly"]
    labels = [w["week"][5:] for w in weekly]
    none = (
        ""
        if m["pqls"]
        else (
            "<p class=note>No account qualified under this definition in this history: "
            "see the threshold sweep below for where the bar could be.</p>"
        )
    )
    out.append(
        "<section><h2>PQL volume over time</h2><p class=lead>New PQLs per week (first qualification), "
        f"and how many of them converted within {num(window)} days.</p>{none}"
        + bar_chart(
            labels,
            [
                ("PQLs", [w["pqls"] for w in weekly], PRIMARY),
                ("converted in window", [w["pqls_converted"] for w in weekly], GOOD),
            ],
            title="PQLs per week",
        )
        + "</section>"
    )
    # funnel and channels
    funnel = [
        ("Active accounts" if m["definition"].get("unit") != "user" else "Active users", m["active"], MUTED),
        ("Qualified (PQL)", m["pqls"], PRIMARY),
    ]
    if m.get("nudged") is not None:
        funnel.append(("Nudged", m["nudged"], WARN))
    funnel.append((f"Converted within {num(window)} d", m["tp"], GOOD))
    top = funnel[0][1] or 1
    funnel_svg = hbars(
        [(label, v, f"{num(v)} · {pct(v / top)}", c) for label, v, c in funnel],
        width=HALF,
        label_w=170,
        title="funnel",
    )
    note = (
        ""
        if m.get("nudged") is not None
        else (
            "<p class=note>Nudges come from <code>pqlflow replay</code>, which runs the nurture policy; "
            "a backtest "
            "stops at qualification.</p>"
        )
    )
    out.append(
        "<div class=grid2><section><h2>Funnel</h2><p class=lead>From active to paying.</p>"
        f"{funnel_svg}{note}</section>" + _html_ttc(ttc) + "</div>"
    )
    out.append(_html_channels(m))
    out.append(_html_worth(m))
    # reasons
    if m["reasons"]:
        rows = [
            (
                r["example"] if len(r["example"]) < 48 else r["example"][:46] + "…",
                r["count"],
                f"{num(r['count'])} · {pct(r['count'] / m['pqls'] if m['pqls'] else None, 0)}",
                PRIMARY,
            )
            for r in m["reasons"][:8]
        ]
        out.append(
            "<section><h2>Top reasons</h2><p class=lead>What the PQLs had when they qualified (an example "
            "reason text per rule; one PQL can have several).</p>"
            + hbars(rows, label_w=330, title="top reasons")
            + "</section>"
        )
    out.append(_html_signals(m))
    for sw in m["sweeps"]:
        out.append(_html_sweep(sw, window))
    return "".join(out)


def _html_ttc(ttc: dict[str, Any]) -> str:
    if not ttc["n"]:
        return (
            "<section><h2>Time to conversion</h2><p class=na>No PQL converted after qualifying in this "
            "history.</p></section>"
        )
    chart = bar_chart(
        [b["label"] for b in ttc["buckets"]],
        [("PQLs", [b["count"] for b in ttc["buckets"]], GOOD)],
        width=HALF,
        height=230,
        title="time to conversion",
    )
    return (
        f"<section><h2>Time to conversion</h2><p class=lead>Median <b>{_e(days(ttc['median_days']))}</b> "
        f"from qualification to paying; the middle half between {_e(days(ttc['p25_days']))} and "
        f"{_e(days(ttc['p75_days']))} ({num(ttc['n'])} PQLs).</p>{chart}</section>"
    )


def _html_channels(m: dict[str, Any]) -> str:
    channels = m.get("channels")
    if not channels:
        return (
            "<section><h2>Conversion by channel and against the holdout</h2><p class=na>Not available in a "
            "backtest: run <code>pqlflow replay</code> with a nurture policy to see email, in-app offer and "
            "rep-task results next to the holdout group.</p></section>"
        )
    rows = "".join(
        f"<tr><td>{_e(c['channel'])}</td><td class=n>{num(c['pqls'])}</td>"
        f"<td class=n>{num(c['converted'])}</td>"
        f"<td class=n>{pct(c['conversion_rate'])}</td><td class=n>{days(c.get('median_days'))}</td></tr>"
        for c in channels
    )
    bars = hbars(
        [
            (
                c["channel"],
                c["conversion_rate"] or 0,
                pct(c["conversion_rate"]),
                MUTED if c["channel"] == "holdout" else PRIMARY,
            )
            for c in channels
        ],
        width=HALF,
        label_w=120,
        title="conversion by channel",
    )
    return (
        "<section><h2>Conversion by channel and against the holdout</h2><div class=grid2><div><table><tr>"
        "<th>channel</th><th class=n>PQLs</th><th class=n>converted</th><th class=n>conversion</th>"
        f"<th class=n>median time</th></tr>{rows}</table></div><div>{bars}</div></div></section>"
    )


def _html_table(headers: list[str], rows: list[list[str]], numeric: Sequence[bool]) -> str:
    head = "".join(f"<th{' class=n' if n else ''}>{_e(h)}</th>" for h, n in zip(headers, numeric, strict=True))
    body = "".join(
        "<tr>" + "".join(f"<td{' class=n' if n else ''}>{_e(c)}</td>" for c, n in zip(r, numeric, strict=True))
        + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _html_worth(m: dict[str, Any]) -> str:
    out = []
    if m.get("worth"):
        headers, rows, notes = customer_table(m["worth"])
        out.append(
            "<section><h2>What PQLs are worth as customers</h2><p class=lead>PQL-sourced customers against "
            "the others: conversion, revenue, retention and lifetime value so far.</p>"
            + _html_table(headers, rows, [False, True, True])
            + "".join(f"<p class=note>{_e(n)}</p>" for n in notes) + "</section>")
    else:
        out.append("<section><h2>What PQLs are worth as customers</h2><p class=na>Not available: the history "
                   "was run one partition at a time (<code>--partitions</code>), or its backtest could not run "
                   "(see the warning above). Run it in memory to see revenue, retention and lifetime value."
                   "</p></section>")
    steps = m.get("steps")
    if steps is not None:
        if steps["steps"]:
            headers, rows, notes = step_table(steps)
            out.append(
                "<section><h2>Per journey step and channel</h2><p class=lead>What each step sent, how recipients "
                "engaged, and conversion after it against the holdout.</p>"
                + _html_table(headers, rows, [False, False, True, False, True, True, True])
                + "".join(f"<p class=note>{_e(n)}</p>" for n in notes) + "</section>")
        else:
            out.append("<section><h2>Per journey step and channel</h2><p class=na>No nurture action was sent in "
                       "this replay.</p></section>")
    return "".join(out)


def _html_signals(m: dict[str, Any]) -> str:
    if not m["signals"]:
        return ""
    best = max([s["lift"] or 0 for s in m["signals"]] or [1]) or 1
    rows = []
    for s in m["signals"]:
        width = 90 * (s["lift"] or 0) / best
        rows.append(
            f"<tr><td><code>{_e(s['label'])}</code></td><td class=n>{pct(s['coverage'])}</td>"
            f"<td class=n>{pct(s['with_rate'])}</td><td class=n>{pct(s['without_rate'])}</td>"
            f"<td><span class=lift style='width:{width:.0f}px'></span>{_lift_pill(s['lift'])}</td></tr>"
        )
    return (
        "<section><h2>Which behaviors go with upgrading</h2><p class=lead>"
        "Each condition of the definition at "
        "its threshold: the share of accounts that reached it before converting (coverage), how often those "
        "that did and did not went on to pay, and the lift over the overall conversion rate.</p>"
        "<table><tr><th>condition</th><th class=n>coverage</th><th class=n>conversion with</th>"
        f"<th class=n>conversion without</th><th>lift</th></tr>{''.join(rows)}</table></section>"
    )


def _html_sweep(sw: dict[str, Any], window: float) -> str:
    rows = "".join(
        f"<tr class='{'cur' if p['current'] else ''}'><td class=n>{num(p['threshold'])}</td>"
        f"<td class=n>{num(p['pqls'])}</td><td class=n>{num(p['converted'])}</td>"
        f"<td class=n>{pct(p['conversion_rate'])}</td>"
        f"<td class=n>{pct(p['recall'])}</td><td class=n>{times(p['lift'])}</td></tr>"
        for p in sw["points"]
    )
    return (
        f"<section><h2>Threshold sweep · {_e(sw['label'])}</h2><p class=lead>"
        "Raise the bar and fewer accounts "
        f"qualify, usually converting more often; lower it and you catch more converters (recall) at a lower "
        f"rate. Conversion means paying within {num(window)} days of qualifying; the current threshold is "
        f"{_e(num(sw['current']))}.</p>{sweep_chart(sw)}<table style='margin-top:10px'>"
        "<tr><th class=n>threshold</th><th class=n>PQLs</th><th class=n>converted</th>"
        "<th class=n>conversion</th>"
        f"<th class=n>recall</th><th class=n>lift</th></tr>{rows}</table></section>"
    )


def _html_comparison(defs: list[dict[str, Any]], comparison: dict[str, Any] | None, window: float) -> str:
    a, b = defs[0], defs[1]

    def row(label: str, x: str, y: str) -> str:
        return f"<tr><td>{_e(label)}</td><td class=n>{_e(x)}</td><td class=n>{_e(y)}</td></tr>"

    rows = "".join(
        [
            row("PQLs", num(a["pqls"]), num(b["pqls"])),
            row(
                f"PQL conversion within {num(window)} days",
                pct(a["pql_conversion_rate"]),
                pct(b["pql_conversion_rate"]),
            ),
            row("non-PQL conversion", pct(a["non_pql_conversion_rate"]), pct(b["non_pql_conversion_rate"])),
            row("precision", pct(a["precision"]), pct(b["precision"])),
            row("recall", pct(a["recall"]), pct(b["recall"])),
            row("lift", times(a["lift"]), times(b["lift"])),
            row(
                "median time to convert",
                days(a["time_to_convert"]["median_days"]),
                days(b["time_to_convert"]["median_days"]),
            ),
        ]
    )
    out = (
        "<section><h2>Side by side</h2><p class=lead>Both definitions on the same history.</p>"
        "<div class=grid2>"
        f"<div><table class=cmp><tr><th></th><th class=n>A · {_e(_def_title(a))}</th><th class=n>B · "
        f"{_e(_def_title(b))}</th></tr>{rows}</table></div><div>"
    )
    if comparison:
        names = {
            "both": "qualified by both",
            "only_a": "only by A",
            "only_b": "only by B",
            "neither": "by neither",
        }
        colours = {"both": PRIMARY, "only_a": "#818cf8", "only_b": WARN, "neither": MUTED}
        out += hbars(
            [
                (
                    f"{names[g['group']]} ({num(g['accounts'])})",
                    g["conversion_rate"] or 0,
                    f"{pct(g['conversion_rate'])} convert",
                    colours[g["group"]],
                )
                for g in comparison["groups"]
            ],
            width=HALF,
            label_w=180,
            title="overlap",
        )
        out += (
            f"<p class=note>Accounts both qualify: A first for {num(comparison['a_earlier'])}, B first for "
            f"{num(comparison['b_earlier'])}, at the same moment for {num(comparison['same_time'])}.</p>"
        )
    return out + "</div></div></section>"


def _html_quality(data: dict[str, Any]) -> str:
    h = data.get("history", {})
    speed = data.get("speed") or {}
    bad = h.get("bad", [])
    items = "".join(f"<tr><td>{_e(b['file'])}:{num(b['line'])}</td><td>{_e(b['reason'])}</td></tr>" for b in bad[:20])
    more = (
        f"<p class=note>… and {num(h['bad_lines'] - 20)} more (<code>--json</code> lists them).</p>"
        if h.get("bad_lines", 0) > 20
        else ""
    )
    table_html = (
        f"<table><tr><th>line</th><th>why it was skipped</th></tr>{items}</table>{more}"
        if bad
        else "<p class=note>Every line was a valid event.</p>"
    )
    speed_html = ""
    if speed:
        speed_html = (
            f"<p class=note>Ran in {speed['seconds']:.2f} s ({num(speed['events_per_second'])} events/s, "
            f"JSON via {_e(speed.get('json', 'json'))})"
            + (
                f"; bare JSON decoding of the same file took {speed['bare_decode_seconds']:.2f} s"
                if speed.get("bare_decode_seconds") is not None
                else ""
            )
            + ".</p>"
        )
    return (
        f"<section><h2>Data quality</h2><p class=lead>{num(h.get('lines'))} lines read · "
        f"{num(h.get('events'))} distinct events · {num(h.get('duplicates'))} duplicates dropped (same "
        f"messageId) · {num(h.get('bad_lines'))} bad lines. Events are sorted by their timestamp before "
        f"they are replayed.</p>{table_html}{speed_html}</section>"
        "<footer>Generated by pqlflow. Self-contained: no scripts, fonts or images are fetched.</footer>"
    )
