"""The shipped email templates, found on disk and rendered in an immutable Jinja sandbox.

`EmailTemplates(root)` loads the templates shipped in the templates layer. Each template is a folder
`email/<name>/` with `subject.txt`, `body.html` and `body.txt`; folders starting with `_` hold the
shared layout and partials. `render(name, context)` renders subject, HTML (autoescaped) and text with
`StrictUndefined`: a template that uses a variable the context lacks raises `TemplateError` naming the
file and line, in tests and previews rather than in production.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pqlflow.channels.email.context import as_number, format_number
from pqlflow.channels.email.errors import MailError, TemplateError

EMAIL_DIR = "email"
TEMPLATE_PARTS = ("subject.txt", "body.html", "body.txt")
TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,63}$")
MAX_SUBJECT_CHARS = 150


@dataclass(frozen=True)
class RenderedEmail:
    template: str
    subject: str
    html: str
    text: str


def _format_percent(value: Any) -> str:
    number = as_number(value)
    return "" if number is None else f"{round(number * 100)}%"


LAMBDA_TEMPLATES_DIR = Path("/opt")
"""Where the templates layer lands in Lambda: its ContentUri is the repository's templates/ folder."""
# parents[5] is the checkout: this file is <repo>/layers/pqlflow/pqlflow/channels/email/render.py (depth matters).
REPO_TEMPLATES_DIR = Path(__file__).resolve().parents[5] / "templates"


def find_templates_dir(configured: str | Path | None = None) -> Path:
    """The folder holding `email/`: `configured` (TEMPLATES_DIR) if given, else the layer, else the repo's."""
    if configured:
        return Path(configured)
    for candidate in (LAMBDA_TEMPLATES_DIR, REPO_TEMPLATES_DIR):
        if (candidate / EMAIL_DIR).is_dir():
            return candidate
    raise MailError(
        f"no email templates: set TEMPLATES_DIR (looked in {LAMBDA_TEMPLATES_DIR}, {REPO_TEMPLATES_DIR})"
    )


class EmailTemplates:
    """The shipped email templates under `<root>/email/`, rendered in an immutable sandbox."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        if not (self.root / EMAIL_DIR).is_dir():
            raise MailError(f"{self.root}: no '{EMAIL_DIR}/' folder of email templates here")
        self.env = ImmutableSandboxedEnvironment(
            loader=jinja2.FileSystemLoader(str(self.root)),
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("html",), default_for_string=False, default=False
            ),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            auto_reload=False,
        )
        self._names: list[str] | None = None
        self.env.filters["number"] = format_number
        self.env.filters["percent"] = _format_percent

    def names(self) -> list[str]:
        """The templates a Nurture Action can name: folders holding subject, HTML and text parts."""
        if self._names is None:
            folder = self.root / EMAIL_DIR
            self._names = sorted(
                p.name
                for p in folder.iterdir()
                if p.is_dir()
                and TEMPLATE_NAME.match(p.name)
                and all((p / part).is_file() for part in TEMPLATE_PARTS)
            )
        return list(self._names)

    def check_name(self, name: str) -> str:
        if not TEMPLATE_NAME.match(name or "") or name not in self.names():
            raise MailError(
                f"no email template {name!r} in {self.root / EMAIL_DIR} (have: {', '.join(self.names())})"
            )
        return name

    def render(self, name: str, context: Mapping[str, Any]) -> RenderedEmail:
        self.check_name(name)
        subject = self._render(f"{EMAIL_DIR}/{name}/subject.txt", context)
        html = self._render(f"{EMAIL_DIR}/{name}/body.html", context)
        text = self._render(f"{EMAIL_DIR}/{name}/body.txt", context)
        subject = " ".join(subject.split())
        if not subject:
            raise TemplateError(f"{EMAIL_DIR}/{name}/subject.txt: renders an empty subject")
        if len(subject) > MAX_SUBJECT_CHARS:
            subject = subject[: MAX_SUBJECT_CHARS - 1].rstrip() + "…"
        return RenderedEmail(template=name, subject=subject, html=html, text=_tidy_text(text))

    def render_page(self, path: str, context: Mapping[str, Any]) -> str:
        """Render a web page template (e.g. `web/unsubscribe.html`) with the same sandbox and rules."""
        return self._render(path, context)

    def _render(self, path: str, context: Mapping[str, Any]) -> str:
        try:
            return self.env.get_template(path).render(context)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{exc.filename or path}:{exc.lineno}: {exc.message}") from exc
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(f"{path}: includes a template that does not exist: {exc.name}") from exc
        except (jinja2.UndefinedError, jinja2.exceptions.SecurityError, TypeError, ValueError) as exc:
            raise TemplateError(f"{_where(exc, self.root) or path}: {exc}") from exc


def _where(exc: BaseException, root: Path) -> str | None:
    """`file:line` of the innermost template frame in the traceback (Jinja maps frames to template lines)."""
    where = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename.startswith(str(root)):
            where = f"{Path(frame.filename).relative_to(root)}:{frame.lineno}"
    return where


def _tidy_text(text: str) -> str:
    lines = [line.rstrip() for line in text.splitlines()]
    tidy: list[str] = []
    for line in lines:
        if line == "" and tidy and tidy[-1] == "":
            continue
        tidy.append(line)
    return "\n".join(tidy).strip() + "\n"
