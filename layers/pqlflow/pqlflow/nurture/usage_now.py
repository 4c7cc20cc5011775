"""The qualification as of now: a journey step's conditions read the signals and traits when it comes due.

Step 0 is decided on the `PQL Qualified` event itself. A later step comes days later, so its `signal`
and `trait` conditions ("still under 5 active users", "plan is still free") must see the account as it
is then: `UsageNow.refresh` reads the subject's usage item (one eventually consistent GetItem, plus its
cold item when the state needs it, as qualify reads it) and the definition in force (cached), evaluates
the signals, and returns the qualification with today's `signals` and `account_traits`. A subject
without a usage item (expired) keeps the qualification's own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pqlflow.contracts.emitted import PqlQualified
from pqlflow.kernel.aws import AwsClient

if TYPE_CHECKING:
    from pqlflow.ingest.store import UsageReader
    from pqlflow.qualify.store import DefinitionStore


class UsageNow:
    """Imports the usage decoding and the evaluator on the first step it reads (most route invocations are
    qualifications and engagement, which never need them: 75 ms less cold start)."""

    client = AwsClient("dynamodb")

    def __init__(self, table: str, client: Any = None, definitions: DefinitionStore | None = None):
        self.table = table
        self.client = client
        self._reader: UsageReader | None = None
        self._definitions = definitions

    @property
    def reader(self) -> UsageReader:
        if self._reader is None:
            from pqlflow.ingest.store import UsageReader

            self._reader = UsageReader(self.table)
        return self._reader

    @property
    def definitions(self) -> DefinitionStore:
        if self._definitions is None:
            from pqlflow.qualify.store import DefinitionStore

            self._definitions = DefinitionStore(self.table)
        return self._definitions

    def refresh(self, q: PqlQualified, now: float) -> PqlQualified:
        return self.read(q, now)[0]

    def read(self, q: PqlQualified, now: float) -> tuple[PqlQualified, str | None]:
        """The qualification as of `now`, and when the account converted (ISO 8601), if it has: a
        conversion routed before its qualification (EventBridge does not keep order) stops the journey
        at its next step all the same."""
        from pqlflow.ingest.cold import StaleCold
        from pqlflow.ingest.item import usage_key
        from pqlflow.qualify.evaluation import evaluate

        self.reader.client = self.definitions.client = self.client  # one client for the three readers
        item = self.client.get_item(TableName=self.table, Key=usage_key(q.account_id, q.user_id)).get("Item")
        if item is None:
            return q, None
        try:
            usage = self.reader.decode(item)
        except StaleCold:  # a compaction moved on between the two reads: read the item again, consistently
            item = self.client.get_item(TableName=self.table, Key=usage_key(q.account_id, q.user_id),
                                        ConsistentRead=True)["Item"]
            usage = self.reader.decode(item)
        evaluation = evaluate(self.definitions.active(), usage, int(now * 1000), was_qualified=True, explain=False,
                              reasons=False)
        signals = {k: (float(v) if isinstance(v, int) and not isinstance(v, bool) else v)
                   for k, v in evaluation.signals.items()}
        traits = {k: usage.trait(k) for k in usage.traits}
        converted = None
        if usage.converted_at_ms is not None:
            converted = datetime.fromtimestamp(usage.converted_at_ms / 1000, UTC).isoformat().replace("+00:00", "Z")
        return q.model_copy(update={"signals": signals, "account_traits": traits}), converted
