"""Nurture policy files: the shipped examples validate, and every error names the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pqlflow.cli import main
from pqlflow.kernel.errors import UsageError
from pqlflow.nurture.policy import load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples" / "policies").glob("*.yaml"))

MINIMAL = """\
name: tiny
version: 1
rules:
  - name: everyone
    then: {channel: email, template: upgrade_nudge}
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(UsageError) as caught:
        parse_policy(text, "policy.yaml")
    return str(caught.value).splitlines()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_policy_validates(path):
    # Given a shipped example policy
    # When it is loaded
    policy = load_policy(path)
    # Then it has rules and ends with a catch-all, so every qualification gets a decision
    assert policy.rules
    assert policy.rules[-1].when is None


def test_the_deployed_policy_is_the_documented_default():
    # Given the policy the route function ships with, and the documented default
    deployed = (ROOT / "functions" / "route" / "policy.yaml").read_text()
    documented = (ROOT / "examples" / "policies" / "default.yaml").read_text()
    # Then they are the same file (copy the example over after changing it)
    assert deployed == documented


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_policies_name_only_shipped_templates_and_catalog_offers(path):
    # Given the email templates and the offer catalog shipped with pqlflow
    templates = {p.name for p in (ROOT / "templates" / "email").iterdir() if not p.name.startswith("_")}
    offers = set(yaml.safe_load((ROOT / "examples" / "offers" / "catalog.yaml").read_text())["offers"])
    # When a shipped policy is loaded against them, it is valid: every template and offer it names exists
    policy = load_policy(path, templates=templates, offers=offers)
    named_templates = {t for r in policy.rules for s in r.steps for t in (s.template, s.also_email) if t}
    named_offers = {o for o in [*(s.offer for r in policy.rules for s in r.steps), policy.consent.fallback_offer]
                    if o}
    assert named_templates <= templates
    assert named_offers <= offers


def test_defaults_fill_in_what_a_minimal_policy_leaves_out():
    # Given a policy with only a name, version and one rule
    policy = parse_policy(MINIMAL)
    # Then holdout is off and caps and quiet hours have safe defaults
    assert policy.holdout.share == 0
    assert (policy.caps.account_days, policy.caps.user_days) == (7, 14)
    assert (policy.quiet_hours.start, policy.quiet_hours.end) == ("09:00", "18:00")
    assert policy.quiet_hours.days == ["mon", "tue", "wed", "thu", "fri"]


def test_unknown_key_names_its_line_and_path():
    # Given a rule whose `then` has a misspelled key on line 7
    text = MINIMAL + "  - name: second\n    then:\n      chanel: email\n"
    # When validated
    problems = errors_of(text)
    # Then the error names the file, line 8 and the key path
    assert any(p.startswith("policy.yaml:8: rules[1].then.chanel: unknown key") for p in problems), problems


def test_bad_operator_names_its_line_and_key():
    # Given a signal condition with an operator that does not exist
    text = """\
name: x
version: 1
rules:
  - name: big
    when:
      signal:
        name: seats
        op: "=>"
        value: 10
    then: {channel: email, template: t}
"""
    # When validated
    problems = errors_of(text)
    # Then the operator's own line and key are named, with the operators allowed
    assert len(problems) == 1
    assert problems[0].startswith("policy.yaml:8: rules[0].when.signal.op: ")
    assert "'>='" in problems[0]


def test_missing_required_key_names_the_mapping_it_belongs_to():
    # Given a policy without a version
    problems = errors_of("name: x\nrules:\n  - name: a\n    then: {channel: none}\n")
    # Then the error says version is missing at the top level
    assert problems == ["policy.yaml:1: version: missing (required at the top level)"]


def test_channel_needs_its_template_or_offer():
    # Given an email rule without a template and an offer rule without an offer
    text = """\
name: x
version: 1
rules:
  - name: mail
    then:
      channel: email
  - name: gift
    then:
      channel: offer
"""
    problems = errors_of(text)
    # Then both are reported, each on the line of its `then`
    assert problems == [
        "policy.yaml:5: rules[0].then: channel email needs a `template`",
        "policy.yaml:8: rules[1].then: channel offer needs an `offer` (an offer type of the catalog)",
    ]


def test_a_condition_with_two_tests_is_ambiguous():
    # Given a condition that mixes touch and reason in one mapping (should be all: [...])
    text = MINIMAL.replace("    then:", "    when: {touch: low, reason: {kind: limit}}\n    then:")
    problems = errors_of(text)
    # Then the error says a condition has exactly one test, and names both
    assert len(problems) == 1
    assert problems[0].startswith("policy.yaml:5: rules[0].when: a condition has exactly one of")
    assert problems[0].endswith("got touch, reason")


def test_duplicate_keys_are_errors_not_silently_overwritten():
    problems = errors_of("name: x\nversion: 1\nversion: 2\nrules: []\n")
    assert problems == ["policy.yaml:3: version: duplicate key (first on line 2)"]


def test_yaml_syntax_error_names_the_line():
    problems = errors_of("name: x\nversion: 1\nrules: [ {name: a\n")
    assert len(problems) == 1 and problems[0].startswith("policy.yaml:4: YAML syntax:")


def test_bad_timezone_and_share_are_named():
    text = MINIMAL + "holdout:\n  share: 0.9\nquiet_hours:\n  default_timezone: Mars/Olympus\n"
    problems = errors_of(text)
    assert problems[0].startswith("policy.yaml:7: holdout.share: ")
    assert problems[1].startswith("policy.yaml:9: quiet_hours.default_timezone: unknown IANA time zone")


def test_unquoted_times_are_read_as_times_not_base_60_numbers():
    # Given quiet hours written without quotes (YAML 1.1 reads 18:00 as 1080)
    policy = parse_policy(MINIMAL + "quiet_hours:\n  start: 08:30\n  end: 18:00\n")
    # Then they are the times the author meant
    assert (policy.quiet_hours.start, policy.quiet_hours.end) == ("08:30", "18:00")


def test_norway_stays_a_country():
    # Given a trait comparison with the value NO (a boolean in YAML 1.1)
    text = MINIMAL.replace("    then:", "    when: {trait: {name: country, value: NO}}\n    then:")
    policy = parse_policy(text)
    # Then it compares with the string "NO"
    assert policy.rules[0].when.trait.value == "NO"


def test_python_tags_are_refused_never_constructed():
    # Given a YAML tag that would build a Python object under an unsafe loader
    text = MINIMAL.replace("name: tiny", "name: !!python/object/apply:os.system [echo hi]")
    problems = errors_of(text)
    assert len(problems) == 1 and problems[0].startswith("policy.yaml:1: name: unsupported YAML value type")


def test_cli_validate_exits_zero_for_good_files(capsys):
    # When validating the examples through the CLI
    code = main(["policy", "validate", *map(str, EXAMPLES)])
    # Then it exits 0 and says ok for each
    assert code == 0
    assert capsys.readouterr().out.count(": ok: policy") == len(EXAMPLES)


def test_cli_validate_exits_non_zero_and_names_line_and_key(tmp_path, capsys):
    # Given a policy with a negative cap
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL + "caps:\n  account_days: -3\n")
    # When validating it
    code = main(["policy", "validate", str(bad)])
    # Then the exit status is non-zero and stderr names the file, line and key
    assert code == 2
    assert f"{bad}:7: caps.account_days:" in capsys.readouterr().err


def test_cli_validate_names_a_missing_file(tmp_path, capsys):
    code = main(["policy", "validate", str(tmp_path / "nope.yaml")])
    assert code == 2
    assert "no such policy file" in capsys.readouterr().err


# --- journeys -----------------------------------------------------------------------------------------

JOURNEY = """\
name: journeys
version: 1
rules:
  - name: nurture
    then:
      - {channel: email, template: upgrade_nudge}
      - name: offer
        after_days: 3
        when:
          not: {engaged: {step: 0, event: email_clicked}}
        channel: offer
        offer: extended-trial
      - name: demo
        after_days: 7
        channel: email
        template: demo_invite
"""


def test_a_journey_parses_into_its_steps_in_order():
    rule = parse_policy(JOURNEY).rules[0]
    assert [(s.name, s.after_days, s.channel) for s in rule.steps] == [
        (None, 0, "email"), ("offer", 3, "offer"), ("demo", 7, "email")]
    assert rule.step_index("demo") == 2 and rule.step_index(5) is None


def test_a_negative_delay_names_its_step_and_line():
    assert errors_of(JOURNEY.replace("after_days: 7", "after_days: -7")) == [
        "policy.yaml:14: rules[0].then[2].after_days: Input should be greater than or equal to 0"]


def test_steps_out_of_order_name_the_later_step():
    assert errors_of(JOURNEY.replace("after_days: 7", "after_days: 2")) == [
        "policy.yaml:14: rules[0].then[2].after_days: step 2 runs at day 2, not after step 1 (day 3): steps run "
        "in order, each later than the one before"]


def test_a_step_waiting_on_itself_or_a_later_step_is_a_loop():
    (error,) = errors_of(JOURNEY.replace("engaged: {step: 0,", "engaged: {step: demo,"))
    assert error.startswith("policy.yaml:10: rules[0].then[1].when.not.engaged.step: step 1 waits on engagement "
                            "with step 2, which runs after it: a loop")


def test_a_condition_on_engagement_a_step_cannot_report_can_never_run():
    (error,) = errors_of(JOURNEY.replace("email_clicked", "offer_viewed"))
    assert error.startswith("policy.yaml:10: rules[0].then[1].when.not.engaged.event: step 0 is on channel email: "
                            "it never reports offer_viewed")


def test_the_first_step_takes_no_delay_and_engaged_is_only_for_steps():
    delayed = JOURNEY.replace("- {channel: email, template: upgrade_nudge}",
                              "- {channel: email, template: upgrade_nudge, after_days: 1}")
    assert errors_of(delayed)[0].startswith("policy.yaml:6: rules[0].then[0].after_days: the first step runs at "
                                            "the qualification")
    in_rule = MINIMAL.replace("    then:", "    when: {engaged: {step: 0, event: email_opened}}\n    then:")
    assert errors_of(in_rule)[0].startswith("policy.yaml:5: rules[0].when.engaged: `engaged` is for journey steps")


def test_unknown_templates_and_offers_are_named_with_their_line():
    with pytest.raises(UsageError) as caught:
        parse_policy(JOURNEY, "policy.yaml", templates={"upgrade_nudge"}, offers={"pro-discount-20"})
    assert str(caught.value).splitlines() == [
        "policy.yaml:12: rules[0].then[1].offer: no offer 'extended-trial' in the catalog (have: pro-discount-20)",
        "policy.yaml:16: rules[0].then[2].template: no email template 'demo_invite' (have: upgrade_nudge)",
    ]


def test_cli_validate_checks_templates_and_offers_and_exits_non_zero(tmp_path, capsys, monkeypatch):
    # Given a policy naming an offer the shipped catalog lacks, validated from the repository root
    monkeypatch.chdir(ROOT)
    path = tmp_path / "policy.yaml"
    path.write_text(JOURNEY.replace("extended-trial", "free-pony"))
    # When it is validated
    code = main(["policy", "validate", str(path)])
    # Then the exit status is non-zero and the error names file, line, key and value
    assert code != 0
    err = capsys.readouterr().err
    assert f"{path}:12: rules[0].then[1].offer: no offer 'free-pony' in the catalog" in err


SALES_JOURNEY = """\
name: sales
version: 1
rules:
  - name: sales
    when: {touch: high}
    then:
      - channel: rep_task
        also_email: upgrade_nudge
      - name: demo-if-opened
        after_days: 7
        when:
          engaged: {step: 0, event: email_opened}
        channel: email
        template: demo_invite
"""


def test_engaged_on_the_email_a_rep_task_brings_along_is_a_valid_condition():
    # Given a rep task step that also emails, and a later step waiting on that email being opened
    # When the policy is validated
    rule = parse_policy(SALES_JOURNEY, "policy.yaml").rules[0]
    # Then it is accepted: the companion email reports its opens under the rep task's step
    assert [s.channel for s in rule.steps] == ["rep_task", "email"]
    # And a rep task without the companion email still cannot report an open
    (error,) = errors_of(SALES_JOURNEY.replace("        also_email: upgrade_nudge\n", ""))
    assert error.startswith("policy.yaml:11: rules[0].then[1].when.engaged.event: step 0 is on channel rep_task: "
                            "it never reports email_opened")


def test_engaged_on_the_fallback_offer_of_an_email_step_is_a_valid_condition():
    # Given a policy whose suppressed-address fallback turns an email step into an offer
    text = JOURNEY.replace("name: journeys\nversion: 1\n", "name: journeys\nversion: 1\nconsent: "
                           "{email_suppressed: offer, fallback_offer: extended-trial}\n") \
        .replace("email_clicked", "offer_viewed")
    # When a later step waits on that offer being viewed, the policy is valid
    assert parse_policy(text, "policy.yaml").rules[0].steps[1].when is not None


@pytest.mark.parametrize(("value", "message"), [
    ("true", "Input should be a valid number"), ('"5"', "Input should be a valid number"),
    ("'5'", "Input should be a valid number"), (".nan", "Input should be a finite number"),
])
def test_after_days_is_a_number_of_days_not_a_boolean_a_string_or_nan(value, message):
    # Given a step whose delay is written as a boolean (read as 1 day), a quoted number or not a number
    # When the policy is validated
    errors = errors_of(JOURNEY.replace("after_days: 3", f"after_days: {value}"))
    # Then the delay is refused as what it is, naming its line and key
    assert errors == [f"policy.yaml:8: rules[0].then[1].after_days: {message}"]


def test_after_days_takes_whole_and_fractional_days():
    # Given delays written as an integer and as a fraction of a day, the policy is valid
    rule = parse_policy(JOURNEY.replace("after_days: 3", "after_days: 2.5")).rules[0]
    assert [s.after_days for s in rule.steps] == [0, 2.5, 7]
