"""The SES v2 outbox: `SendEmail` with `Content.Raw` (the exact MIME bytes), the configuration set and the
message's tags (`pqlflow.channels.email.tags`: what SES's events about it need to become engagement events)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pqlflow.channels.email.errors import SendRejected
from pqlflow.kernel.aws import AwsClient


class SesOutbox:
    """SES v2 SendEmail with the raw MIME message and the configuration set (events, reputation)."""

    client = AwsClient("sesv2")

    def __init__(self, configuration_set: str, sender: str, client: Any = None) -> None:
        self.configuration_set = configuration_set
        self.sender = sender
        self.client = client

    def send(self, raw: bytes, *, to: str, tags: Mapping[str, str]) -> str:
        from botocore.exceptions import ClientError

        try:
            response = self.client.send_email(
                FromEmailAddress=self.sender,
                Destination={"ToAddresses": [to]},
                Content={"Raw": {"Data": raw}},
                ConfigurationSetName=self.configuration_set,
                EmailTags=[{"Name": name, "Value": value} for name, value in tags.items()],
            )
        except ClientError as exc:  # SES answered: the message was not accepted
            raise SendRejected(exc.response.get("Error", {}).get("Code", "ClientError")) from exc
        return response["MessageId"]
