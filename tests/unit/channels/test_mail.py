"""Nurture email rendering: sandboxed templates, personalization, and the MIME message they become."""

from __future__ import annotations

import base64
import json
import re
from email import policy
from email.parser import BytesParser
from functools import cache
from pathlib import Path

import pytest
from pqlflow.channels.email import unsubscribe
from pqlflow.channels.email.brand import Brand, Feature, load_brand
from pqlflow.channels.email.context import build_context, choose_template, qualification_of, resolve_recipient
from pqlflow.channels.email.errors import MailError, NoRecipient, TemplateError
from pqlflow.channels.email.message import Composed, compose, message_bytes
from pqlflow.channels.email.render import EmailTemplates
from pqlflow.contracts.emitted import NurtureAction, Reason
from pqlflow.nurture import suppression

ROOT = Path(__file__).resolve().parents[3]
TEMPLATES = ROOT / "templates"
CONTEXTS = sorted((ROOT / "examples" / "email-contexts").glob("*.json"))
KEY = b"k" * 40
UNSUBSCRIBE = "https://api.example.com/unsubscribe"
SHIPPED = EmailTemplates(TEMPLATES).names()


def example(name: str) -> NurtureAction:
    return NurtureAction.model_validate(
        json.loads((ROOT / "examples" / "email-contexts" / f"{name}.json").read_text())
    )


@cache
def shipped(root: Path) -> tuple[EmailTemplates, Brand]:
    return EmailTemplates(root), load_brand(root)


def render(
    action: NurtureAction, template: str | None = None, templates_root: Path = TEMPLATES
) -> Composed:
    templates, brand = shipped(templates_root)
    return compose(
        action,
        templates=templates,
        brand=brand,
        sender="Northwind <hello@mail.example.com>",
        unsubscribe_url=UNSUBSCRIBE,
        signing_key=KEY,
        template=template,
    )


def parse(composed: Composed):
    return BytesParser(policy=policy.default).parsebytes(message_bytes(composed.message))


def test_the_five_seed_strategies_are_shipped():
    assert set(SHIPPED) >= {
        "upgrade_nudge",
        "limit_approaching",
        "demo_invite",
        "feature_content",
        "incentive_offer",
    }


@pytest.mark.parametrize("template", SHIPPED)
@pytest.mark.parametrize("context_file", CONTEXTS, ids=lambda p: p.stem)
def test_every_shipped_template_renders_with_every_example_context(template, context_file):
    # Given an example Nurture Action (its context is the PQL Qualified)
    action = NurtureAction.model_validate(json.loads(context_file.read_text()))
    # When the template renders it
    composed = render(action, template)
    # Then subject, HTML and text are all there, with the unsubscribe link and the postal address
    brand = shipped(TEMPLATES)[1]
    rendered = composed.rendered
    assert rendered.subject and "\n" not in rendered.subject
    assert rendered.html.lstrip().startswith("<!DOCTYPE html>")
    for body in (rendered.html, rendered.text):
        assert UNSUBSCRIBE + "?token=" in body
        assert brand.postal_address in body
        assert "None" not in body and "Undefined" not in body


def test_a_name_that_looks_like_template_code_renders_literally_and_html_is_escaped():
    # Given a recipient named `{{ 7*7 }} <script>alert(1)</script>` whose first name is `{{ 7*7 }}`
    action = example("hostile_traits")
    # When the upgrade nudge renders
    rendered = render(action, "upgrade_nudge").rendered
    # Then the name is shown as typed, never evaluated, and no markup from data reaches the HTML
    assert "Hi {{ 7*7 }}," in rendered.html
    assert "Hi {{ 7*7 }}," in rendered.text
    assert rendered.subject.startswith("{{ 7*7 }},")
    # (the signed unsubscribe token is random-looking base64 and may contain "49" by chance: leave it out)
    shown = re.sub(r"token=[\w.-]+", "token=", rendered.subject + rendered.text + rendered.html)
    assert "49" not in shown
    assert "<script>" not in rendered.html
    assert (
        "<img src=x" not in rendered.html and "&lt;img src=x onerror=alert(1)&gt; &amp; Sons" in rendered.html
    )
    assert "<h1>Injected</h1>" not in rendered.html
    assert "&lt;b&gt;2,000&lt;/b&gt; messages {{ config }}" in rendered.html


def test_a_script_tag_in_the_name_is_escaped_in_the_html_part():
    # Given a recipient whose name is a script tag
    action = example("storage_hd_videos")
    users = action.context["users"]
    users[0]["traits"] = {**users[0]["traits"], "first_name": "<script>alert('x')</script>"}
    # When it renders
    rendered = render(action).rendered
    # Then the HTML shows it as text
    assert "Hi &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;," in rendered.html
    assert "<script>" not in rendered.html


def write_templates(root: Path, body_html: str) -> Path:
    (root / "email" / "probe").mkdir(parents=True)
    (root / "email" / "probe" / "subject.txt").write_text("Hello {{ recipient.greeting }}")
    (root / "email" / "probe" / "body.html").write_text(body_html)
    (root / "email" / "probe" / "body.txt").write_text("{{ links.unsubscribe }}")
    (root / "brand.yaml").write_text((TEMPLATES / "brand.yaml").read_text())
    return root


def test_a_template_that_uses_a_missing_variable_fails_naming_file_and_line(tmp_path):
    # Given a template whose second line uses a variable the context does not have
    root = write_templates(tmp_path, "<p>{{ recipient.greeting }}</p>\n<p>{{ recipient.nickname }}</p>\n")
    # When it renders
    with pytest.raises(TemplateError) as err:
        render(example("crm_contacts_80pct"), "probe", templates_root=root)
    # Then the error is raised (not a blank in production) and names where to fix it
    assert "email/probe/body.html:2" in str(err.value)
    assert "nickname" in str(err.value)


def test_an_undefined_top_level_name_fails_too(tmp_path):
    root = write_templates(tmp_path, "{{ customer_name }}")
    with pytest.raises(TemplateError, match="customer_name"):
        render(example("crm_contacts_80pct"), "probe", templates_root=root)


def test_templates_run_in_a_sandbox(tmp_path):
    # Given a template that reaches for Python internals
    root = write_templates(tmp_path, "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    # When it renders, Then the sandbox refuses
    with pytest.raises(TemplateError):
        render(example("crm_contacts_80pct"), "probe", templates_root=root)


def test_the_message_is_rfc5322_multipart_alternative_with_one_click_unsubscribe():
    # Given a rendered nudge
    composed = render(example("crm_contacts_80pct"))
    # When its bytes are parsed as a mail client would
    msg = parse(composed)
    # Then it is multipart/alternative with a text and an HTML part, in that order
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert "8,000 of 10,000 contacts" in msg.get_body(("plain",)).get_content()
    assert "8,000" in msg.get_body(("html",)).get_content()
    # And it carries RFC 5322 headers and the RFC 8058 pair
    assert msg["From"] == "Northwind <hello@mail.example.com>"
    assert msg["To"].addresses[0].addr_spec == "priya@fieldstone.example"
    assert msg["Subject"] == composed.rendered.subject
    assert msg["Date"] and msg["Message-ID"].endswith("@mail.example.com>")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = msg["List-Unsubscribe"]
    assert link.startswith(f"<{UNSUBSCRIBE}?token=v1.") and link.endswith(">")
    # And the token in it unsubscribes exactly this recipient
    token = link[1:-1].split("token=", 1)[1]
    who = unsubscribe.verify([KEY], token)
    assert who.address_hash == suppression.address_hash("priya@fieldstone.example")
    assert who.account_id == "acc_fieldstone"


def test_the_message_uses_crlf_line_endings_for_ses_raw():
    raw = message_bytes(render(example("storage_hd_videos")).message)
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")


def test_a_name_with_a_line_break_cannot_inject_headers():
    # Given a first name carrying a header injection attempt
    action = example("crm_contacts_80pct")
    action.context["users"][0]["traits"]["first_name"] = "Priya\r\nBcc: attacker@example.net"
    action.context["users"][0]["traits"]["name"] = "Priya\nBcc: attacker@example.net"
    # When the message is built and parsed
    msg = parse(render(action, "upgrade_nudge"))
    # Then there is no Bcc header and the subject is one line
    assert msg["Bcc"] is None
    assert "\n" not in msg["Subject"]
    assert msg["To"].addresses[0].addr_spec == "priya@fieldstone.example"


def test_the_token_in_the_link_carries_no_readable_address():
    composed = render(example("storage_hd_videos"))
    token = composed.message["List-Unsubscribe"][1:-1].split("token=", 1)[1]
    payload = base64.urlsafe_b64decode(token.split(".")[1] + "==").decode()
    assert "@" not in payload and "sofia" not in payload.lower().replace("u_sofia", "")


def test_context_personalizes_from_the_qualification():
    # Given a team whose storage nears its quota and whose recipient uploads HD video most
    action = example("storage_hd_videos")
    q = qualification_of(action)
    recipient = resolve_recipient(action, q)
    # When the context is built
    ctx = build_context(
        action,
        template="upgrade_nudge",
        recipient=recipient,
        brand=load_brand(TEMPLATES),
        unsubscribe_url="u",
    )
    # Then it knows the first name, the top feature, usage against the limit and who else is active
    assert ctx["recipient"]["first_name"] == "Sofia"
    assert ctx["usage"]["feature"]["key"] == "hd_video_uploads"
    assert ctx["usage"]["feature"]["count"] == 1240
    limit = ctx["usage"]["limit"]
    assert (limit["used"], limit["limit"], limit["percent"]) == (1780, 2000, 89)
    assert ctx["usage"]["team"]["names"] == ["Erik", "Noor", "Léa"]
    assert ctx["account"]["name"] == "Northlight Studio"
    assert [r["code"] for r in ctx["qualification"]["reasons"]][0] == "hd_uploads_500"
    assert ctx["links"]["upgrade"].endswith("utm_source=pqlflow&utm_medium=email&utm_campaign=upgrade_nudge")


def test_the_rendered_nudge_reads_like_a_person_wrote_it():
    # Given a team that uploads HD videos and has used 89% of its storage quota
    rendered = render(example("storage_hd_videos")).rendered
    # Then the subject is about the limit they are about to hit, and the body about the videos they keep
    assert rendered.subject == "Sofia, you've used 89% of your storage"
    assert "Northlight Studio now has 1,240 HD videos in Northwind, and has used 89% of its storage." in rendered.text
    assert "Erik, Noor and Léa on your team are active too." in rendered.text
    assert "faster" in rendered.text  # the premium pitch for the feature they use most


def test_the_limit_notice_says_how_much_is_used_and_left():
    rendered = render(example("crm_contacts_80pct")).rendered
    assert rendered.subject == "Fieldstone Logistics has used 80% of its contacts"
    assert "8,000 of 10,000 contacts used (80%, 2,000 left) on the Starter plan." in rendered.text


def test_each_incentive_kind_shows_its_offer():
    discount = render(example("incentive_discount")).rendered
    trial = render(example("incentive_extended_trial")).rendered
    feature = render(example("incentive_premium_feature")).rendered
    assert "20% off Pro" in discount.subject and "GROW20" in discount.html
    assert "14 more days" in trial.subject and "offer=trial-extension-14" in trial.html
    assert "Advanced analytics" in feature.subject


def test_an_offer_without_copy_is_an_error_not_a_wrong_offer():
    action = example("incentive_discount").model_copy(update={"offer": "unlock-sso"})
    with pytest.raises(MailError, match="unlock-sso"):
        render(action)


def test_without_a_template_the_strongest_reason_picks_one():
    assert (
        choose_template(example("crm_contacts_80pct").model_copy(update={"template": None}))
        == "limit_approaching"
    )
    assert choose_template(example("b2c_minimal")) == "upgrade_nudge"


def test_a_recipient_without_an_email_address_is_no_recipient():
    action = example("b2c_minimal")
    action.context["users"][0]["traits"] = {"name": "No Address"}
    with pytest.raises(NoRecipient):
        render(action)


def test_an_unknown_template_name_is_an_error_listing_the_shipped_ones():
    with pytest.raises(MailError, match="upgrade_nudge"):
        render(example("b2c_minimal"), "../../etc/passwd")


def test_social_proof_is_stable_for_an_account_and_about_its_feature():
    first = render(example("storage_hd_videos")).rendered.text
    again = render(example("storage_hd_videos")).rendered.text
    assert first == again
    assert "Brightframe Films" in first  # the testimonial tagged with HD video


def test_a_brand_file_with_a_typo_names_the_field(tmp_path):
    (tmp_path / "brand.yaml").write_text(
        (TEMPLATES / "brand.yaml").read_text().replace("postal_address:", "postal_adress:")
    )
    with pytest.raises(MailError, match="postal_ad"):
        load_brand(tmp_path)


def test_the_postal_address_can_come_from_configuration():
    brand = load_brand(TEMPLATES, {"postal_address": "Acme, 1 Real Street, Berlin"})
    assert brand.postal_address == "Acme, 1 Real Street, Berlin"


@pytest.mark.parametrize("state", ["confirm", "done", "expired", "invalid"])
def test_the_unsubscribe_page_renders_every_state(state):
    templates, brand = shipped(TEMPLATES)
    page = templates.render_page(
        "web/unsubscribe.html",
        {"state": state, "action": "/unsubscribe?token=a&b", "brand": brand.model_dump()},
    )
    assert page.startswith("<!DOCTYPE html>") and brand.postal_address in page
    assert ('action="/unsubscribe?token=a&amp;b"' in page) == (state == "confirm")


def limit_of(action: NurtureAction, brand: Brand | None = None) -> dict:
    q = qualification_of(action)
    ctx = build_context(
        action,
        template="limit_approaching",
        recipient=resolve_recipient(action, q),
        brand=brand or shipped(TEMPLATES)[1],
        unsubscribe_url="u",
    )
    return ctx["usage"]["limit"]


def test_a_ratio_reason_is_read_as_usage_of_the_plan_limit():
    # Given the CRM definition's reason: contact_use = 0.8 (contacts 8,000 / trait contacts_limit 10,000)
    limit = limit_of(example("crm_contacts_80pct"))
    # Then the email knows the numbers behind the percentage
    assert (limit["key"], limit["used"], limit["limit"], limit["remaining"], limit["percent"]) == (
        "contacts",
        8000,
        10000,
        2000,
        80,
    )


def test_a_ratio_whose_parts_cannot_be_found_still_shows_the_percentage():
    action = example("crm_contacts_80pct")
    del action.context["account_traits"]["contacts_limit"]
    limit = limit_of(action)
    assert (limit["used"], limit["limit"], limit["percent"], limit["label"]) == (
        None,
        None,
        80,
        "contact limit",
    )
    assert "80% of your contact limit used" in render(action, "limit_approaching").rendered.text


def test_brand_yaml_can_name_the_parts_of_a_ratio():
    # Given a brand file that says contact_use is `seats_used` over the trait `seat_cap`
    action = example("crm_contacts_80pct")
    action.context["signals"]["seats_used"] = 40.0
    action.context["account_traits"]["seat_cap"] = 50
    brand = shipped(TEMPLATES)[1].model_copy(deep=True)
    brand.features["contact_use"] = Feature(label="seats", of="seats_used", limit_trait="seat_cap")
    # Then those are used, not the guess
    limit = limit_of(action, brand)
    assert (limit["used"], limit["limit"], limit["percent"]) == (40, 50, 80)


def test_a_count_limit_reached_says_so():
    limit = limit_of(example("chat_message_limit_reached"))
    assert (limit["used"], limit["limit"], limit["reached"]) == (2000, 2000, True)
    assert render(example("chat_message_limit_reached")).rendered.subject == (
        "Harbor & Co has reached its messages limit"
    )


def test_a_lead_score_and_pricing_page_views_are_not_quoted_back_to_the_reader():
    # Given a scoring qualification whose reasons include the score and pricing page views
    action = example("incentive_discount")
    extra = {
        "code": "p",
        "text": "looked at pricing 4 times",
        "kind": "usage",
        "signal": "pricing_views",
        "value": 4,
    }
    action = action.model_copy(update={"reasons": [*action.reasons, Reason(**extra)]})
    # When the email renders
    rendered = render(action).rendered
    # Then usage the reader knows about is there, the score and the pricing visits are not
    assert "3 integrations connected" in rendered.text
    assert "Lead score" not in rendered.text + rendered.html
    assert "pricing 4 times" not in rendered.text + rendered.html


def _encoded_word(text: str, encoding: str = "b") -> str:
    if encoding == "b":
        return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="
    return "=?utf-8?q?" + "".join(f"={b:02X}" for b in text.encode()) + "?="


def _headers(composed: Composed) -> bytes:
    return message_bytes(composed.message).split(b"\r\n\r\n", 1)[0]


@pytest.mark.parametrize(
    "name",
    [
        "Priya\x00",
        "Pri\x00ya Shah",
        "Priya\x1b[31m Shah",
        "Priya\x7f Shah",
        "Priya\u202e hahS",  # right-to-left override: the name would read backwards
        "Pri\u200bya\ufeff Shah",  # zero-width space and byte-order mark
        "Priya\x85Shah",  # C1 control (NEL)
    ],
)
def test_control_and_invisible_characters_never_reach_the_headers(name):
    # Given a recipient whose name traits carry NUL, escape sequences or invisible formatting
    action = example("crm_contacts_80pct")
    action.context["users"][0]["traits"]["first_name"] = name
    action.context["users"][0]["traits"]["name"] = name
    # When the message is built
    composed = render(action, "upgrade_nudge")
    msg = parse(composed)
    # Then the headers carry none of them, the name reads as letters, and the address is the recipient's
    display = msg["To"].addresses[0].display_name
    assert display.isprintable() and display.startswith("Pri")
    for bad in ("\x00", "\x1b", "\x7f", "\u202e", "\u200b", "\ufeff", "\x85"):
        assert bad not in str(msg["To"]) and bad not in str(msg["Subject"])
    assert b"\x00" not in _headers(composed)
    assert [a.addr_spec for a in msg["To"].addresses] == ["priya@fieldstone.example"]


@pytest.mark.parametrize(
    "name",
    [
        _encoded_word("Bcc: attacker@example.net"),
        _encoded_word("Bcc: attacker@example.net", "q"),
        "Priya " + _encoded_word("Bcc: attacker@example.net"),
        "Priya" + _encoded_word("Bcc: attacker@example.net"),  # no space before it: decoded by lenient clients
        "=?" + _encoded_word("Bcc: attacker@example.net") + "?=",  # nested: what is left after one pass
        "=?utf-8?b?" + base64.b64encode(b"Bcc: attacker@example.net").decode(),  # no end marker
    ],
)
def test_an_encoded_word_in_a_name_is_not_decoded_by_mail_clients(name):
    # Given a name that is RFC 2047 syntax decoding to "Bcc: ..." (mail clients decode encoded-words in
    # display names and subjects)
    action = example("crm_contacts_80pct")
    action.context["users"][0]["traits"]["first_name"] = name
    action.context["users"][0]["traits"]["name"] = name
    action.context["account_traits"]["name"] = name
    # When the message is built and read back as a client would
    composed = render(action, "upgrade_nudge")
    msg = parse(composed)
    # Then no header decodes to the attacker's text, and the only recipient is Priya
    for header in ("To", "Subject"):
        assert "attacker" not in str(msg[header]) and "Bcc" not in str(msg[header]), header
    assert b"=?utf-8?b?QmNj" not in _headers(composed) and b"=?utf-8?q?=42" not in _headers(composed)
    assert msg["Bcc"] is None and msg["Cc"] is None
    assert [a.addr_spec for a in msg["To"].addresses] == ["priya@fieldstone.example"]


def test_a_name_in_any_script_is_kept():
    # Given names with accents, other scripts and joiners (ZWJ/ZWNJ are part of some scripts and emoji)
    action = example("crm_contacts_80pct")
    name = "Zoë Ångström-Nguyễn می‌خواهم"
    action.context["users"][0]["traits"]["name"] = name
    action.context["users"][0]["traits"]["first_name"] = "Zoë"
    # When the message is built / Then the display name reads exactly as given
    msg = parse(render(action, "upgrade_nudge"))
    assert msg["To"].addresses[0].display_name == name
    assert str(msg["Subject"]).startswith("Zoë") or "Zoë" in msg.get_body(("plain",)).get_content()


@pytest.mark.parametrize(
    "address", ["pri\x00ya@fieldstone.example", "priya@fieldstone.example\x00", "pri\u202eya@x.example"]
)
def test_an_address_with_a_control_character_is_no_recipient_not_another_address(address):
    # Given an email trait with NUL or an invisible character in it
    action = example("crm_contacts_80pct")
    action.context["users"][0]["traits"]["email"] = address
    # When the recipient is resolved / Then there is none: the address is never "cleaned" into another one
    with pytest.raises(NoRecipient):
        resolve_recipient(action, qualification_of(action))


def test_buying_intent_is_never_quoted_back_to_the_reader():
    # Given a qualification with a buying-intent reason on a signal no brand setting names
    action = example("incentive_discount")
    intent = Reason(code="i", text="upgrade page views: 6", kind="intent", signal="upgrade_page_views", value=6)
    action = action.model_copy(update={"reasons": [*action.reasons, intent]})
    # When the email renders with the default brand
    rendered = render(action).rendered
    # Then the reader's own usage is shown and the intent is not
    assert "3 integrations connected" in rendered.text
    assert "upgrade page views" not in (rendered.text + rendered.html).lower()


# ---- headlines by what matters to the reader, counts that agree ----------------------------------------


def _nudge_with(reasons: list[Reason]) -> Composed:
    """The demo-shaped upgrade nudge, with its reasons replaced, composed and parsed back."""
    from tests.support.demo_account import demo_qualification, email_action

    q = demo_qualification()
    q = q.model_copy(update={"reasons": reasons})
    return render(email_action(q))


def test_the_headline_is_about_a_paid_feature_before_a_bigger_count():
    # Given 400 sign-ins and 2 uses of a paid feature
    composed = _nudge_with(
        [
            Reason(code="s", text="400 sign-ins", kind="usage", signal="sign_ins", value=400, label="sign-ins"),
            Reason(code="p", text="2 custom reports built", kind="paid_feature", signal="custom_reports", value=2),
        ]
    )
    msg = parse(composed)
    # Then the subject and the lead are about the paid feature
    assert msg["Subject"] == "Clara, you've been trying Pro features"
    text = msg.get_body(("plain",)).get_content()
    assert "We noticed Bold Bridge Labs has been trying what Pro adds: 2 custom reports built." in text


def test_a_limit_beats_the_team_and_the_team_beats_usage():
    team = Reason(code="t", text="6 invites sent", kind="team", signal="invites", value=6)
    usage = Reason(code="u", text="90 sign-ins", kind="usage", signal="sign_ins", value=90)
    limit = Reason(
        code="l", text="9,000 of 10,000 contacts", kind="limit", signal="contacts", value=9000, threshold=10000
    )
    assert parse(_nudge_with([usage, team]))["Subject"] == "Clara, Bold Bridge Labs is growing on Northwind"
    assert parse(_nudge_with([usage, team, limit]))["Subject"] == "Clara, you've used 90% of your contacts"


def test_a_known_feature_of_one_reads_in_the_singular():
    # Given a recipient whose top feature is HD video, with one upload (and neither a limit nor team growth)
    action = example("storage_hd_videos")
    action.context["signals"]["hd_video_uploads"] = 1
    action = action.model_copy(update={"reasons": [r for r in action.reasons if r.kind == "usage"]})
    # When the nudge renders / Then it says "1 HD video", not "1 HD videos"
    rendered = render(action).rendered
    assert rendered.subject == "Sofia, 1 HD video and counting"
    assert "Northlight Studio now has 1 HD video in Northwind." in rendered.text
