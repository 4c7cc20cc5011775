"""The Segment-compatible HTTP collection API: Segment's and RudderStack's SDKs send usage events here.

`keys` (write keys: the secret's document, Basic auth, browser-safe keys and their origins), `messages`
(a Segment HTTP API request body → Segment messages on the bus, Segment's timestamp and batch rules,
derived messageIds, validated by the usage-event contract), `service` (one request: authenticate,
decode, validate, put on the bus, quarantine the rejected, answer as Segment does), `api` (the HTTP API
routes). It sits above ingest only to reuse ingest's quarantine (`pqlflow.ingest.quarantine`, the store's
BatchWriteItem) so that a message collect rejects is kept exactly as ingest keeps one.
"""
