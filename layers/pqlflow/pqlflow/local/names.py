"""Local physical names, ARNs and URLs of template resources, and parsing them back.

Every local resource lives in region us-east-1, account 123456789012. Resources without an explicit
name are called `<stack>-<LogicalId>` (deterministic, unlike CloudFormation's random suffix).
"""

from __future__ import annotations

from dataclasses import dataclass

from pqlflow.local.model import ACCOUNT, REGION


def table_arn(name: str) -> str:
    return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"


def stream_arn_placeholder(table_name: str) -> str:
    """What `!GetAtt Table.StreamArn` resolves to before the table exists (the runtime knows the real one)."""
    return f"{table_arn(table_name)}/stream/local"


def queue_arn(name: str) -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"


def queue_url(name: str) -> str:
    return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name}"


def bus_arn(name: str) -> str:
    return f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/{name}"


def rule_arn(name: str, bus: str = "default") -> str:
    path = name if bus == "default" else f"{bus}/{name}"
    return f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{path}"


def function_arn(name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"


def generic_arn(service: str, name: str) -> str:
    return f"arn:aws:{service}:{REGION}:{ACCOUNT}:{name}"


@dataclass(frozen=True)
class Arn:
    service: str
    resource: str

    @property
    def name(self) -> str:
        """The resource's own name: a queue, function, bus or table name."""
        if self.service == "lambda" and self.resource.startswith("function:"):
            return self.resource.split(":")[1]
        if self.service == "dynamodb" and self.resource.startswith("table/"):
            return self.resource.split("/")[1]
        if self.service == "events" and self.resource.startswith("event-bus/"):
            return self.resource.split("/", 1)[1]
        return self.resource.rsplit(":", 1)[-1]


def parse_arn(value: str) -> Arn | None:
    """The service and resource of an ARN, or None if `value` is not an ARN."""
    parts = value.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn":
        return None
    return Arn(service=parts[2], resource=parts[5])


def bus_name(value: str) -> str:
    """An EventBusName property (a name or an ARN) as a bus name."""
    arn = parse_arn(value)
    return arn.name if arn else value
