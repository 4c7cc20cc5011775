"""Logger, Metrics and Tracer for every pqlflow function, created once here (Powertools for AWS Lambda).

The service name comes from POWERTOOLS_SERVICE_NAME, which the SAM template sets per function.
`tracer` is created on first use: importing the X-Ray SDK costs hundreds of milliseconds of cold
start, so a function that does not trace (ingest) never pays for it.
"""

from typing import Any

from aws_lambda_powertools import Logger, Metrics

logger = Logger()
metrics = Metrics(namespace="pqlflow")
_tracer: Any = None


def __getattr__(name: str) -> Any:
    global _tracer
    if name == "tracer":
        if _tracer is None:
            from aws_lambda_powertools import Tracer

            _tracer = Tracer(auto_patch=False)
        return _tracer
    raise AttributeError(name)
