"""`pqlflow email preview | check | list`: what copy writers run, with clear errors for wrong input."""

from __future__ import annotations

from email import policy
from email.parser import BytesParser
from pathlib import Path

from pqlflow.cli import main

ROOT = Path(__file__).resolve().parents[3]
CONTEXTS = ROOT / "examples" / "email-contexts"
CONTEXT = CONTEXTS / "crm_contacts_80pct.json"
TEMPLATES = ROOT / "templates"


def preview(template: str, context: Path, *options: str) -> int:
    """`pqlflow email preview` of `template` from the repository's templates."""
    return main(["email", "preview", template, "--context", str(context), *options, "--templates", str(TEMPLATES)])


def check_examples(templates: Path) -> int:
    """`pqlflow email check` of every example context against `templates`."""
    return main(["email", "check", "--contexts", str(CONTEXTS), "--templates", str(templates)])


def test_preview_writes_html_text_and_eml_and_prints_their_paths(tmp_path, capsys):
    # When a copy writer previews the limit notice for the CRM example
    code = preview("limit_approaching", CONTEXT, "--out", str(tmp_path))
    # Then three files are written and their paths printed
    printed = capsys.readouterr().out.split()
    assert code == 0
    assert [Path(p).suffix for p in printed] == [".html", ".txt", ".eml"]
    html, text, eml = (Path(p) for p in printed)
    assert "8,000" in html.read_text() and "<!DOCTYPE html>" in html.read_text()
    assert text.read_text().startswith("Subject: Fieldstone Logistics has used 80% of its contacts")
    msg = BytesParser(policy=policy.default).parsebytes(eml.read_bytes())
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_an_unknown_template_exits_2_and_lists_the_real_ones(tmp_path, capsys):
    code = preview("upgrade_nudg", CONTEXT, "--out", str(tmp_path))
    err = capsys.readouterr().err
    assert code == 2
    assert "upgrade_nudg" in err and "upgrade_nudge" in err


def test_a_broken_context_file_exits_2_naming_the_line(tmp_path, capsys):
    bad = tmp_path / "ctx.json"
    bad.write_text('{\n  "action_id": "a",\n  oops\n}\n')
    code = preview("upgrade_nudge", bad)
    assert code == 2
    assert f"{bad}:3:" in capsys.readouterr().err


def test_a_context_missing_a_field_exits_2_naming_the_field(tmp_path, capsys):
    bad = tmp_path / "ctx.json"
    bad.write_text('{"action_id": "a", "transition_id": "t", "account_id": "acc", "channel": "email"}')
    code = preview("upgrade_nudge", bad)
    assert code == 2
    assert "touch" in capsys.readouterr().err


def test_check_renders_every_template_with_every_example(capsys):
    code = check_examples(TEMPLATES)
    out = capsys.readouterr().out
    assert code == 0
    assert "FAIL" not in out and "renders ok" in out


def test_check_fails_when_a_template_breaks(tmp_path, capsys):
    # Given a copy of the templates where one uses a variable that does not exist
    broken = tmp_path / "templates"
    for path in TEMPLATES.rglob("*"):
        if path.is_file():
            (broken / path.relative_to(TEMPLATES)).parent.mkdir(parents=True, exist_ok=True)
            (broken / path.relative_to(TEMPLATES)).write_bytes(path.read_bytes())
    subject = broken / "email" / "demo_invite" / "subject.txt"
    subject.write_text("{{ recipient.nick_name }}")
    # When checked, Then it fails naming the template
    code = check_examples(broken)
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL demo_invite" in out and "nick_name" in out


def test_list_names_the_templates(capsys):
    assert main(["email", "list", "--templates", str(TEMPLATES)]) == 0
    assert "upgrade_nudge" in capsys.readouterr().out.split()
