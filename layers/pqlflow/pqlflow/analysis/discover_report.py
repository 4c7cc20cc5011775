"""`pqlflow discover`'s output: aligned text, JSON, and one self-contained HTML page in report.html's style.

All three render `DiscoverResult.to_dict()`: `history`, `window_days`, `conversions`, `snapshots`, `split`,
`learn` / `heldout` ({accounts, snapshots, converting_snapshots}), `signals` (ranked, best first: condition,
coverage, with_rate, without_rate, lift, lift_ci, heldout_precision, heldout_recall, heldout_lift, note…)
and `proposal` ({yaml, conditions, heldout_backtest: `backtest.metrics` of the proposal on the held-out
cohorts}). The page uses `pqlflow.analysis.report`'s CSS and helpers, so both reports look alike.
"""

from __future__ import annotations

from typing import Any

from pqlflow.analysis.report import CSS, _e, _kpi, _lift_pill, num, pct, render_json, table, times

__all__ = ["render_html", "render_json", "render_text"]


def _ci(s: dict[str, Any]) -> str:
    low, high = s["lift_ci"]
    return "—" if low is None or high is None else f"{low:.2f}–{high:.2f}"


def _shown(s: dict[str, Any]) -> str:
    return s["condition"] + (f"  ({s['note']})" if s["note"] else "")


def render_text(data: dict[str, Any], top: int = 25) -> str:
    h = data["history"]
    learn, held = data["learn"], data["heldout"]
    out = [
        f"History: {num(h['lines'])} lines · {num(h['events'])} events · {num(h['duplicates'])} duplicates · "
        f"{num(h['bad_lines'])} bad lines · {h['start']} → {h['end']}",
    ]
    for b in h["bad"][:10]:
        out.append(f"  bad line {b['file']}:{b['line']}: {b['reason']}")
    if h["bad_lines"] > 10:
        out.append(f"  … and {h['bad_lines'] - 10:,} more (see --json)")
    out += [
        f"Label: {' / '.join(data['conversions'])} within {num(data['window_days'])} days after each snapshot "
        f"(every {data['snapshot_every_days']} days, {data['snapshots'][0]} … {data['snapshots'][-1]}); "
        "signals use only events before it",
        f"Learn: accounts first seen before {data['split']}: {num(learn['accounts'])} accounts, "
        f"{num(learn['snapshots'])} snapshots, {num(learn['converting_snapshots'])} converting · "
        f"held out: {num(held['accounts'])} accounts, {num(held['snapshots'])} snapshots, "
        f"{num(held['converting_snapshots'])} converting · {num(data['candidates'])} candidate signals",
        "",
        "What predicts converting (best threshold per signal, chosen on the learn cohorts; ranked by the lift "
        "we can be sure of × the share of converters reached)",
    ]
    rows = []
    for i, s in enumerate(data["signals"][:top], 1):
        rows.append([
            str(i), _shown(s), pct(s["coverage"]), pct(s["with_rate"]), pct(s["without_rate"]),
            times(s["lift"]), _ci(s), pct(s["heldout_precision"]), pct(s["heldout_recall"]),
            times(s["heldout_lift"]),
        ])
    out.append(table(
        ["#", "signal at its best threshold", "coverage", "conv. with", "conv. without", "lift", "95% CI",
         "held-out precision", "recall", "lift"],
        rows, [True, False, *([True] * 8)],
    ))
    if len(data["signals"]) > top:
        out.append(f"… {len(data['signals']) - top} more in --json")
    out.append("")
    out.append(_text_proposal(data))
    return "\n".join(out) + "\n"


def _text_proposal(data: dict[str, Any]) -> str:
    p = data["proposal"]
    if not data["learn"]["converting_snapshots"]:
        return "Proposal: none — no snapshot of the learn cohorts converted within the window: nothing to learn."
    if not p["yaml"]:
        return "Proposal: none — no signal the definition language can express beat the base rate with confidence."
    lines = ["Proposed definition (any of):", *(f"  - {c}" for c in p["conditions"])]
    b = p["heldout_backtest"]
    if b:
        lines.append(
            f"Backtest on the held-out cohorts ({num(b['active'])} accounts, {num(b['converted'])} converted): "
            f"{num(b['pqls'])} PQLs, precision {pct(b['precision'])}, recall {pct(b['recall'])}, "
            f"lift {times(b['lift'])} over a base rate of {pct(b['base_rate'])}"
        )
    lines += ["", p["yaml"].rstrip()]
    return "\n".join(lines)


def render_html(data: dict[str, Any]) -> str:
    """The discovery as one page: inline CSS, no scripts, nothing fetched."""
    h = data["history"]
    learn, held = data["learn"], data["heldout"]
    p = data["proposal"]
    b = p["heldout_backtest"] or {}
    heading = "PQL discover: what predicts upgrading"
    body = [
        f"<header><h1>{_e(heading)}</h1><p class=sub>{_e(h['start'])} → {_e(h['end'])} · "
        f"{num(h['events'])} events from {num(len(h['files']))} file(s) · label: "
        f"{_e(' / '.join(data['conversions']))} within {num(data['window_days'])} days after each snapshot</p>"
        "</header>",
        "<div class=kpis>"
        + _kpi("candidate signals", num(data["candidates"]))
        + _kpi("learn accounts (earlier cohorts)", num(learn["accounts"]))
        + _kpi("held-out accounts (later cohorts)", num(held["accounts"]))
        + _kpi("held-out PQLs of the proposal", num(b.get("pqls")), True)
        + _kpi("their precision", pct(b.get("precision")))
        + _kpi("their lift", times(b.get("lift")))
        + "</div>",
    ]
    rows = []
    for i, s in enumerate(data["signals"], 1):
        note = f"<br><span class=na>{_e(s['note'])}</span>" if s["note"] else ""
        rows.append(
            f"<tr><td class=n>{i}</td><td><code>{_e(s['condition'])}</code>{note}</td>"
            f"<td class=n>{pct(s['coverage'])}</td><td class=n>{pct(s['with_rate'])}</td>"
            f"<td class=n>{pct(s['without_rate'])}</td><td>{_lift_pill(s['lift'])}</td>"
            f"<td class=n style='white-space:nowrap'>{_e(_ci(s))}</td><td class=n>{pct(s['heldout_precision'])}</td>"
            f"<td class=n>{pct(s['heldout_recall'])}</td><td>{_lift_pill(s['heldout_lift'])}</td></tr>"
        )
    body.append(
        "<section><h2>Which behaviours go with upgrading</h2><p class=lead>Every snapshot is an account "
        f"at a moment (every {data['snapshot_every_days']} days); its signals count only events before that "
        "moment, and it converts if it upgrades within the window after it. The threshold of each signal is "
        f"chosen on the accounts first seen before {_e(data['split'])} ({num(learn['snapshots'])} snapshots): "
        "coverage, conversion with and without it, and the lift over the overall conversion rate with a 95% "
        "interval are theirs. Precision, recall and lift at that threshold on the later, held-out accounts "
        f"({num(held['snapshots'])} snapshots) check it.</p>"
        "<table><tr><th class=n>#</th><th>signal at its best threshold</th><th class=n>coverage</th>"
        "<th class=n>conversion with</th><th class=n>conversion without</th><th>lift</th>"
        "<th class=n>95% interval</th><th class=n>held-out precision</th><th class=n>held-out recall</th>"
        f"<th>held-out lift</th></tr>{''.join(rows)}</table></section>"
    )
    if p["yaml"]:
        items = "".join(f"<li><code>{_e(c)}</code></li>" for c in p["conditions"])
        scored = ""
        if b:
            scored = (
                f"<p class=lead>Backtested on the held-out accounts ({num(b['active'])}, {num(b['converted'])} "
                f"converted): {num(b['pqls'])} PQLs, precision {pct(b['precision'])}, recall "
                f"{pct(b['recall'])}, lift {times(b['lift'])} over a base rate of {pct(b['base_rate'])}.</p>"
            )
        body.append(
            "<section><h2>Proposed definition</h2><p class=lead>Any of:</p><ul>" + items + "</ul>" + scored
            + f"<pre><code>{_e(p['yaml'])}</code></pre></section>"
        )
    else:
        body.append("<section><h2>Proposed definition</h2><p class=na>None: no expressible signal beat the "
                    "base rate with confidence.</p></section>")
    return _PAGE.format(title=_e(heading), css=CSS, body="".join(body))


_PAGE = (
    "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
    '<meta name=viewport content="width=device-width,initial-scale=1">'
    "<title>{title}</title><style>{css}</style></head><body><main>{body}</main></body></html>\n"
)
