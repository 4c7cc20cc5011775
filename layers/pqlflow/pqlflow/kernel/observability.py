"""Logger, Metrics and Tracer for every pqlflow function, created once here (Powertools for AWS Lambda),
and the rules that keep personal data out of their logs.

The service name comes from POWERTOOLS_SERVICE_NAME, which the SAM template sets per function, and the
level from POWERTOOLS_LOG_LEVEL (the template's LogLevel). `tracer` is created on first use: importing
the X-Ray SDK costs hundreds of milliseconds of cold start, so a function that does not trace (ingest)
never pays for it.

No log line at INFO or above carries an email address, a name or any other user trait:

- log lines carry ids and counts only; an id that may hold an address goes through `log_id` (a B2C
  account is `user:<userId>`, and user ids are often email addresses);
- an error is logged as its type (`error_type`), never its message or traceback: messages of pydantic
  errors, SES refusals ("...failed the check: ana@example.com") and Jinja errors can quote the data;
- the handler decorator never logs the event, whatever POWERTOOLS_LOGGER_LOG_EVENT says (the events
  carry the users' traits; Powertools would log them at INFO);
- boto3, botocore, urllib3 and the X-Ray SDK log at WARNING at the lowest, whatever the level of the
  root logger (Lambda sets it from its own log-level setting; a DEBUG there would otherwise turn on
  botocore's wire dumps, which carry whole items, traits included, at every call).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from aws_lambda_powertools import Logger, Metrics

# Libraries that log request and response bodies at DEBUG (botocore.endpoint, botocore.parsers, ...).
QUIET_LIBRARIES = ("boto3", "botocore", "s3transfer", "urllib3", "aws_xray_sdk")
QUIET_LEVEL = logging.WARNING


class _Logger(Logger):
    """Powertools' Logger whose handler decorator never logs the incoming event."""

    def inject_lambda_context(
        self,
        lambda_handler: Any = None,
        log_event: bool | None = None,
        correlation_id_path: str | None = None,
        clear_state: bool | None = False,
        flush_buffer_on_uncaught_error: bool = False,
    ) -> Any:
        # An explicit choice wins over POWERTOOLS_LOGGER_LOG_EVENT in Powertools: always "no".
        return super().inject_lambda_context(
            lambda_handler,
            log_event=False,
            correlation_id_path=correlation_id_path,
            clear_state=clear_state,
            flush_buffer_on_uncaught_error=flush_buffer_on_uncaught_error,
        )


def quiet_libraries() -> None:
    """Keep the AWS SDK's and HTTP libraries' loggers at WARNING or above (their DEBUG is a wire dump)."""
    for name in QUIET_LIBRARIES:
        library = logging.getLogger(name)
        # An explicit level, not an inherited one: the root logger's level may change after this import.
        if library.level < QUIET_LEVEL:  # NOTSET (0) included
            library.setLevel(QUIET_LEVEL)


def log_id(value: str | None) -> str | None:
    """An identifier as a log line may show it: unchanged, unless it holds an email address; then
    `sha256:` and the first 16 hex digits of its sha256 (compute the same to find it in the logs)."""
    if value is None or "@" not in value:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def error_type(exc: BaseException) -> str:
    """What a log line may say about an error: its type (messages can quote personal data)."""
    return type(exc).__name__


quiet_libraries()
logger = _Logger()
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
