"""`pqlflow email`: preview and check the nurture email templates, for the people who write the copy.

    pqlflow email preview TEMPLATE --context FILE [--out DIR]   writes TEMPLATE's .html, .txt and .eml
    pqlflow email check [--contexts DIR]                         renders every template with every context
    pqlflow email list                                           names the templates a Nurture Action can use

A context FILE is a `Nurture Action` detail as JSON (its `context` is the `PQL Qualified`); the
examples live in examples/email-contexts/. Templates come from --templates, else $TEMPLATES_DIR, else
the repository's templates/ folder. Nothing is sent: the unsubscribe link is signed with a preview key.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from pydantic import ValidationError

from pqlflow.channels.email.brand import load_brand
from pqlflow.channels.email.errors import MailError
from pqlflow.channels.email.message import Composed, compose, message_bytes
from pqlflow.channels.email.render import EmailTemplates, find_templates_dir
from pqlflow.contracts.emitted import NurtureAction
from pqlflow.kernel.errors import UsageError

PREVIEW_KEY = b"pqlflow-preview-key-not-for-sending-0000"
DEFAULT_CONTEXTS = Path("examples/email-contexts")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("email", help="preview and check the nurture email templates")
    sub = parser.add_subparsers(dest="email_command", metavar="ACTION", required=True)

    preview = sub.add_parser("preview", help="render one template with one context to .html, .txt and .eml")
    preview.add_argument("template", metavar="TEMPLATE", help="template name, e.g. upgrade_nudge")
    preview.add_argument("--context", required=True, type=Path, metavar="FILE", help="Nurture Action JSON")
    preview.add_argument("--out", type=Path, default=Path("out/email-preview"), metavar="DIR")
    _common(preview)
    preview.add_argument("--sender", default=None, help="From header (default: the product at example.com)")
    preview.add_argument("--unsubscribe-url", default="https://example.com/unsubscribe")
    preview.set_defaults(func=_preview)

    check = sub.add_parser("check", help="render every template with every context; exit 1 if any fails")
    check.add_argument("--contexts", type=Path, default=DEFAULT_CONTEXTS, metavar="DIR")
    _common(check)
    check.set_defaults(func=_check)

    names = sub.add_parser("list", help="list the templates")
    _common(names)
    names.set_defaults(func=_list)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--templates", type=Path, default=None, metavar="DIR", help="folder holding email/")


def _templates(args: argparse.Namespace) -> EmailTemplates:
    try:
        return EmailTemplates(find_templates_dir(args.templates or os.environ.get("TEMPLATES_DIR")))
    except MailError as exc:
        raise UsageError(f"{exc} (pass --templates DIR)") from exc


def read_action(path: Path) -> NurtureAction:
    """A Nurture Action from a JSON file; errors name the file, line or field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from exc
    if isinstance(data, dict) and "detail" in data and "detail-type" in data:
        data = data["detail"]  # a whole EventBridge event is fine too
    try:
        return NurtureAction.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise UsageError(f"{path}: {field}: {first['msg']}") from exc


def render_preview(
    templates: EmailTemplates,
    name: str,
    action: NurtureAction,
    *,
    sender: str | None = None,
    unsubscribe_url: str = "https://example.com/unsubscribe",
) -> Composed:
    """Render `name` for `action` as send_email would; the unsubscribe link is signed with a preview key."""
    brand = load_brand(templates.root)
    return compose(
        action,
        templates=templates,
        brand=brand,
        sender=sender or f"{brand.product} <nurture@example.com>",
        unsubscribe_url=unsubscribe_url,
        signing_key=PREVIEW_KEY,
        template=name,
    )


def _preview(args: argparse.Namespace) -> int:
    templates = _templates(args)
    action = read_action(args.context)
    try:
        composed = render_preview(
            templates, args.template, action, sender=args.sender, unsubscribe_url=args.unsubscribe_url
        )
    except MailError as exc:
        raise UsageError(f"{args.context}: {exc}") from exc
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.context.stem}.{args.template}"
    outputs = {
        args.out / f"{stem}.html": composed.rendered.html.encode("utf-8"),
        args.out
        / f"{stem}.txt": f"Subject: {composed.rendered.subject}\n\n{composed.rendered.text}".encode(),
        args.out / f"{stem}.eml": message_bytes(composed.message),
    }
    for path, data in outputs.items():
        path.write_bytes(data)
        print(path)
    return 0


def _check(args: argparse.Namespace) -> int:
    templates = _templates(args)
    contexts = sorted(args.contexts.glob("*.json"))
    if not contexts:
        raise UsageError(f"{args.contexts}: no *.json context files")
    failures = 0
    for path in contexts:
        action = read_action(path)
        for name in templates.names():
            try:
                render_preview(templates, name, action)
            except MailError as exc:
                failures += 1
                print(f"FAIL {name} with {path}: {exc}")
    names = templates.names()
    total = len(contexts) * len(names)
    print(f"{total - failures} of {total} renders ok ({len(names)} templates x {len(contexts)} contexts)")
    return 1 if failures else 0


def _list(args: argparse.Namespace) -> int:
    for name in _templates(args).names():
        print(name)
    return 0
