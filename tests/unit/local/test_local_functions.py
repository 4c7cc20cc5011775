"""A template function run in-process: its handler sees its own environment, and logs as itself."""

from __future__ import annotations

import io
import json
from pathlib import Path

from pqlflow.kernel.observability import logger
from pqlflow.local.functions import FunctionHost
from pqlflow.local.model import Function

HANDLER = '''
from pqlflow.kernel.observability import logger, metrics


def handler(event, context):
    logger.info("handled")
    metrics.add_metric(name="Handled", unit="Count", value=1)
    emitted = metrics.serialize_metric_set()
    metrics.clear_metrics()  # as @metrics.log_metrics does after every invocation
    return emitted.get("service")
'''


def host(tmp_path: Path, logical_id: str, service: str) -> FunctionHost:
    code = tmp_path / logical_id
    code.mkdir()
    (code / "app.py").write_text(HANDLER)
    function = Function(
        logical_id=logical_id,
        name=f"stack-{logical_id}",
        arn=f"arn:aws:lambda:us-east-1:123456789012:function:stack-{logical_id}",
        code_uri=code,
        handler="app.handler",
        environment={"POWERTOOLS_SERVICE_NAME": service},
    )
    return FunctionHost(function)


def test_each_function_logs_and_counts_under_its_own_service_name(tmp_path: Path) -> None:
    # Given two functions of one template, run in one process as the local runtime runs them (on Lambda
    # each has a process of its own, where Powertools reads POWERTOOLS_SERVICE_NAME once, at import)
    ingest, qualify = host(tmp_path, "IngestFunction", "ingest"), host(tmp_path, "QualifyFunction", "qualify")
    out = io.StringIO()
    stream = logger.registered_handler.setStream(out)
    try:
        # When each is invoked, the second after the first, then the first again
        services = [fn.invoke({}) for fn in (ingest, qualify, ingest)]
    finally:
        logger.registered_handler.setStream(stream)
    # Then every log line and metric names the function that wrote it
    logged = [json.loads(line)["service"] for line in out.getvalue().splitlines() if '"handled"' in line]
    assert logged == ["ingest", "qualify", "ingest"]
    assert services == ["ingest", "qualify", "ingest"]
