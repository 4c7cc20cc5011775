"""boto3 clients for adapters: created on first use, never at import time.

    class UsageStore:
        client = AwsClient("dynamodb")

        def __init__(self, table, client=None):
            self.client = client          # None: boto3.client("dynamodb") on first use

boto3 itself is imported only then, so a module that defines an adapter stays cheap to import, and
tests pass a moto-backed or fake client instead of patching.
"""

from __future__ import annotations

from typing import Any


class AwsClient:
    """A descriptor holding an adapter's boto3 client for one service."""

    def __init__(self, service: str):
        self.service = service
        self.attr = f"_{service}_client"

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = f"_{name}"

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        client = obj.__dict__.get(self.attr)
        if client is None:
            import boto3

            client = obj.__dict__[self.attr] = boto3.client(self.service)
        return client

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.attr] = value
