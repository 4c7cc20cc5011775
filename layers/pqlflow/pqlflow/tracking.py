"""What ingest keeps for the definition in force: gauges, property filters, unit, conversions."""

from __future__ import annotations

from pqlflow.settings import IngestSettings
from pqlflow.usage import TrackingSpec


def tracking_spec(settings: IngestSettings) -> TrackingSpec:
    """The tracking spec of the definition in force, on top of the function's own configuration."""
    return TrackingSpec(conversions=settings.conversions, retention_days=settings.RETENTION_DAYS)
