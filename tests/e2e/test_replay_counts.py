"""summary.json's AWS request counts are exactly the calls the handlers made (counted here independently)."""

from __future__ import annotations

import sys
from collections import Counter

import botocore.client

from tests.e2e.conftest import REPO, crafted, read_jsonl, run

FUNCTIONS = str(REPO / "functions")


def _from_a_handler() -> bool:
    """True when a function's code (a functions/*/app.py frame) is on the stack: the call is the handler's."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(FUNCTIONS):
            return True
        frame = frame.f_back
    return False


def test_request_counts_match_the_calls_handlers_made(tmp_path, monkeypatch, definition_file, policy_file):
    # Given a spy on every botocore API call, counting those made from inside a function's code
    seen: Counter[tuple[str, str]] = Counter()
    original = botocore.client.BaseClient._make_api_call

    def spy(self, operation_name, api_params):
        if _from_a_handler():
            seen[(self.meta.service_model.service_name, operation_name)] += 1
        return original(self, operation_name, api_params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", spy)
    history = crafted().write(tmp_path / "h.jsonl")
    # When the crafted history is replayed (without the pricing run, whose handler calls are its own)
    summary = run(history, tmp_path / "out", definition_file, policy_file, price_sample=0)
    # Then summary.json's requests are exactly what the spy saw, service by service and operation by operation
    counted = {svc: dict(sorted(ops.items())) for svc, ops in summary["aws_requests"].items()}
    expected: dict[str, dict[str, int]] = {}
    for (svc, op), n in sorted(seen.items()):
        expected.setdefault(svc, {})[op] = n
    assert counted == expected
    # And they agree with what the user sees in the outputs
    by_fn = summary["aws_requests_by_function"]
    emails = list((tmp_path / "out" / "emails").glob("*.eml"))
    assert by_fn["SendEmailFunction"]["sesv2"]["SendEmail"] == len(emails) == 2
    transitions = read_jsonl(tmp_path / "out" / "transitions.jsonl")
    assert by_fn["QualifyFunction"]["events"]["PutEvents"] == len(transitions)
    assert by_fn["RouteFunction"]["dynamodb"]["TransactWriteItems"] == summary["counts"]["qualified"]
    assert summary["cost"]["lines"]["ses"]["units"] == 2
