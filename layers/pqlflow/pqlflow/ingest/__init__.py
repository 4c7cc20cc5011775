"""Ingest: usage events in, validated and quarantined, folded into one small idempotent write per account."""
