"""The local inbox `pqlflow dev` serves at /_pqlflow/: recent transitions, actions, emails, offers and tasks.

Jinja templates with autoescape on, in report.html's style (its CSS): every string the system was given is
escaped, never template code; an email's HTML part is shown in a sandboxed iframe (`srcdoc`, escaped once
more), its text part in <pre>, every header in a table; `emails/<n>.eml` is the raw MIME SES accepted.
"""

from __future__ import annotations

import re
import time

from jinja2 import DictLoader, Environment

from pqlflow.analysis.report import CSS
from pqlflow.local.devview import KEEP, DevFeed, SentEmail

INBOX_PATH = "/_pqlflow/"

_CSS = """
pre{white-space:pre-wrap;word-break:break-word;background:#f8fafc;border:1px solid #e2e8f0;border-radius:8px;
padding:12px;font-size:13px}
iframe{width:100%;height:560px;border:1px solid #e2e8f0;border-radius:8px;background:#fff}
td.t{white-space:nowrap;color:#64748b;font-variant-numeric:tabular-nums}
table.hdr th{width:200px;white-space:nowrap;vertical-align:top}
table.hdr code{word-break:break-all;white-space:pre-wrap}
"""

# The CSS is this module's own text (report.html's, plus a few rules), inside {% raw %}: never template code.
_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
{% if refresh %}<meta http-equiv="refresh" content="{{ refresh }}">{% endif %}
<title>{{ title }}</title><style>{% raw %}""" + CSS + _CSS + """{% endraw %}</style></head><body><main>
<header><h1>{{ title }}</h1><p class="sub">{{ sub }} · <a href="{{ home }}">refresh</a></p></header>
{% block body %}{% endblock %}
<footer>pqlflow dev · newest first · everything here is in memory and gone when it stops</footer>
</main></body></html>"""

_INBOX = """{% extends "page" %}{% block body %}
<div class="kpis">
<div class="kpi"><b>{{ totals.events }}</b><span>usage events ingested</span></div>
<div class="kpi hl"><b>{{ totals.pqls }}</b><span>PQLs</span></div>
<div class="kpi"><b>{{ totals.emails }}</b><span>emails</span></div>
<div class="kpi"><b>{{ totals.offers }}</b><span>offers</span></div>
<div class="kpi"><b>{{ totals.tasks }}</b><span>rep tasks</span></div>
</div>
<section id="emails"><h2>Emails</h2><p class="lead">As SES accepted them; open one to see it rendered.</p>
{% if emails %}<table><tr><th>sent</th><th>to</th><th>subject</th><th>template</th></tr>
{% for e in emails %}<tr><td class="t">{{ e.at | clock }}</td><td>{{ e.header("To") }}</td>
<td><a href="{{ home }}emails/{{ e.number }}">{{ e.header("Subject") }}</a></td>
<td>{{ e.header("X-Pqlflow-Template") }}</td></tr>{% endfor %}</table>
{% else %}<p class="na">No email yet.</p>{% endif %}</section>
<section id="transitions"><h2>Transitions</h2>
{% if transitions %}<table><tr><th>at</th><th>account</th><th>what</th><th>definition</th><th>touch</th>
<th class="n">score</th><th>top reason</th></tr>
{% for r in transitions %}<tr><td class="t">{{ r.at | clock }}</td><td>{{ r.cells.account }}</td>
<td><span class="pill {{ 'up' if r.cells.what == 'qualified' else 'flat' }}">{{ r.cells.what }}</span></td>
<td>{{ r.cells.definition }}</td><td>{{ r.cells.touch or '' }}</td>
<td class="n">{{ '' if r.cells.score is none else r.cells.score }}</td><td>{{ r.cells.reason }}</td></tr>
{% endfor %}</table>{% else %}<p class="na">No transition yet.</p>{% endif %}</section>
<section id="actions"><h2>Nurture actions</h2>
{% if actions %}<table><tr><th>at</th><th>account</th><th>channel</th><th>template / offer</th><th>outcome</th>
<th>why</th></tr>
{% for r in actions %}<tr><td class="t">{{ r.at | clock }}</td><td>{{ r.cells.account }}</td>
<td>{{ r.cells.channel }}</td><td>{{ r.cells.what }}</td>
<td><span class="pill {{ 'up' if r.cells.outcome == 'send' else 'flat' }}">{{ r.cells.outcome }}</span></td>
<td>{{ r.cells.why or '' }}{% if r.cells.send_after %} (until {{ r.cells.send_after }}){% endif %}</td></tr>
{% endfor %}</table>{% else %}<p class="na">No action yet.</p>{% endif %}</section>
<div class="grid2">
<section id="offers"><h2>Offers</h2>
{% if offers %}<table><tr><th>at</th><th>account</th><th>user</th><th>offer</th></tr>
{% for r in offers %}<tr><td class="t">{{ r.at | clock }}</td><td>{{ r.cells.account }}</td><td>{{ r.cells.user }}</td>
<td>{{ r.cells.offer }}</td></tr>{% endfor %}</table>{% else %}<p class="na">No offer yet.</p>{% endif %}</section>
<section id="tasks"><h2>Rep tasks</h2>
{% if tasks %}<table><tr><th>at</th><th>account</th><th>owner</th><th>task</th><th>delivered</th></tr>
{% for r in tasks %}<tr><td class="t">{{ r.at | clock }}</td><td>{{ r.cells.account }}</td><td>{{ r.cells.owner }}</td>
<td><b>{{ r.cells.title }}</b><br><span class="note">due {{ r.cells.due }}</span></td><td>{{ r.cells.via }}</td>
</tr>{% endfor %}</table>{% else %}<p class="na">No rep task yet.</p>{% endif %}</section>
</div>{% endblock %}"""

_EMAIL_VIEW = """{% extends "page" %}{% block body %}
<p><a href="{{ home }}">← inbox</a> · <a href="{{ home }}emails/{{ e.number }}.eml">raw message (.eml)</a></p>
<section><h2>{{ e.header("Subject") }}</h2>
<table class="hdr">{% for name, value in headers %}
<tr><th>{{ name }}</th><td><code>{{ value }}</code></td></tr>{% endfor %}
</table></section>
<section><h3>HTML part</h3>
{% if html %}<iframe sandbox title="the HTML part" srcdoc="{{ html }}"></iframe>
{% else %}<p class="na">No HTML part.</p>{% endif %}
<h3>Text part</h3>{% if text %}<pre>{{ text }}</pre>{% else %}<p class="na">No text part.</p>{% endif %}</section>
{% endblock %}"""

_jinja = Environment(loader=DictLoader({"page": _PAGE, "inbox": _INBOX, "email": _EMAIL_VIEW}), autoescape=True)


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


_jinja.filters["clock"] = _clock


def inbox_page(feed: DevFeed, refresh: int = 5) -> str:
    """The inbox: emails, transitions, actions, offers and tasks, newest first."""
    with feed.lock:
        lists = {name: list(reversed(getattr(feed, name)))
                 for name in ("emails", "transitions", "actions", "offers", "tasks")}
        totals = dict(feed.totals)
    return _jinja.get_template("inbox").render(
        title="pqlflow dev — local inbox", sub=f"refreshes every {refresh} s", refresh=refresh, home=INBOX_PATH,
        totals={k: totals.get(k, 0) for k in ("events", "pqls", "emails", "offers", "tasks")}, **lists)


def email_page(sent: SentEmail) -> str:
    """One email as sent: every header, the HTML part in a sandboxed iframe, the text part."""
    return _jinja.get_template("email").render(
        title=f"email {sent.number}", sub=f"sent {_clock(sent.at)}",
        refresh=None, home=INBOX_PATH, e=sent, headers=[(k, str(v)) for k, v in sent.message.items()],
        html=sent.part("html"), text=sent.part("plain"))


def serve_page(feed: DevFeed, path: str) -> tuple[int, str, bytes] | None:
    """(status, content type, body) for a page path under INBOX_PATH (`/` too), None for other paths."""
    if path in ("/", INBOX_PATH.rstrip("/"), INBOX_PATH):
        return 200, "text/html; charset=utf-8", inbox_page(feed).encode()
    found = re.fullmatch(re.escape(INBOX_PATH) + r"emails/(\d+)(\.eml)?", path)
    if found is None:
        return None if not path.startswith(INBOX_PATH) else (404, "text/plain; charset=utf-8", b"not found\n")
    sent = feed.email(int(found.group(1)))
    if sent is None:
        return 404, "text/plain; charset=utf-8", f"no such email (only the last {KEEP} are kept)\n".encode()
    if found.group(2):
        return 200, "message/rfc822", sent.raw
    return 200, "text/html; charset=utf-8", email_page(sent).encode()
