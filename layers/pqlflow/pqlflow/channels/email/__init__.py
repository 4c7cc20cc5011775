"""The email channel: the personalized nurture email a `Nurture Action` asks for, its unsubscribe, SES feedback.

In the order send_email uses them: `brand` (the copy config, brand.yaml), `context` (the data the
templates see), `render` (the sandboxed templates), `message` (the MIME message with RFC 8058 one-click
headers), `sender` (at most once per action, through the `ledger` marker item and the SES v2 `outbox`);
`errors` is what can go wrong on the way. `unsubscribe` signs and checks the links' tokens and
`unsubscribe_endpoint` serves the links; `ses_events` turns SES bounces and complaints into suppressions.
"""
