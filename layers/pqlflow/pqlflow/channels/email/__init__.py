"""The email channel: templates and rendering, MIME with one-click unsubscribe, the SES outbox."""
