"""What ingest keeps for the definition in force: its gauges, property filters, unit and counted names.

The active definition is read through the same cached `DefinitionStore` the qualify function uses
(one GetItem per cache period per warm instance), so publishing a definition that names a new gauge
or filter makes ingest start keeping it within DEFINITION_CACHE_SECONDS. Imported lazily: the
definition language is not needed to import the ingest handler.
"""

from __future__ import annotations

from typing import Any

from pqlflow.ingest.usage import TrackingSpec
from pqlflow.kernel.settings import IngestSettings

_store: Any = None


def tracking_spec(settings: IngestSettings, store: Any = None) -> TrackingSpec:
    """The tracking spec of the definition in force, on top of the function's own configuration."""
    global _store
    base = TrackingSpec(conversions=settings.conversions, retention_days=settings.RETENTION_DAYS)
    if store is None:
        if _store is None:
            from pqlflow.qualify.store import DefinitionStore

            _store = DefinitionStore(settings.TABLE_NAME, cache_seconds=settings.DEFINITION_CACHE_SECONDS)
        store = _store
    return store.active().tracking_spec(base)
