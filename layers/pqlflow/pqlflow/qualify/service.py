"""The qualify function's work: its settings, the qualifier wired from them, and a stream batch's tally.

`QualifyBatch.record_handler` is the Powertools record handler: it runs `Qualifier.process`
(`pqlflow.qualify.transitions`) on one stream record's images, counts the result and logs the transitions
published; the handler turns the counts into the batch's metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from pydantic import BaseModel, ConfigDict, Field

from pqlflow.contracts.bus import EventPublisher
from pqlflow.ingest.store import UsageReader
from pqlflow.kernel.observability import logger
from pqlflow.kernel.settings import from_environ
from pqlflow.qualify.store import DefinitionStore
from pqlflow.qualify.transitions import PqlStateStore, Qualifier

# Record results reported as metrics on every batch (zero included): result → metric name.
RESULT_METRICS = (
    ("qualified", "PqlQualified"),
    ("disqualified", "PqlDisqualified"),
    ("converted", "AccountConverted"),
    ("churned", "AccountChurned"),
    ("re_emitted", "TransitionsReEmitted"),
)


class QualifySettings(BaseModel):
    """The qualify function's environment."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    TABLE_NAME: str = Field(min_length=1)
    EVENT_BUS_NAME: str = Field(min_length=1)
    DEFINITION_CACHE_SECONDS: float = Field(default=60, ge=0, le=3600)


def build(settings: QualifySettings | None = None) -> Qualifier:
    """The qualifier with its real adapters (clients are created on first use)."""
    settings = settings or from_environ(QualifySettings)
    return Qualifier(
        definitions=DefinitionStore(settings.TABLE_NAME, cache_seconds=settings.DEFINITION_CACHE_SECONDS),
        states=PqlStateStore(settings.TABLE_NAME),
        publisher=EventPublisher(settings.EVENT_BUS_NAME),
        decode=UsageReader(settings.TABLE_NAME).decode,
    )


@dataclass
class QualifyBatch:
    """One stream batch through the qualifier: each record's result counted, published transitions logged."""

    qualifier: Qualifier
    counts: dict[str, int] = field(default_factory=dict)  # result → records

    def record_handler(self, record: DynamoDBRecord) -> None:
        outcome = self.qualifier.process(record.raw_event.get("dynamodb", {}))
        self.counts[outcome.result] = self.counts.get(outcome.result, 0) + 1
        if outcome.published:
            # ids only: never personal data in logs
            logger.info(
                "transition",
                extra={
                    "result": outcome.result,
                    "published": outcome.published,
                    "definition_version": outcome.definition_version,
                    "event_id": record.event_id,
                },
            )
