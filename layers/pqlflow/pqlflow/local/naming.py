"""Local physical names of a template's resources, and what `!Ref` / `!GetAtt` of each resolves to.

Resources named in the template (TableName, QueueName, Name, FunctionName, ...) keep that name; the
others are called `<stack>-<LogicalId>`. `Ref` of a queue is its URL, of a topic or layer its ARN, of
anything else its name; `GetAtt X.Arn` is the local ARN (see `pqlflow.local.names`). Used by
`pqlflow.local.template`; pure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pqlflow.kernel.errors import UsageError
from pqlflow.local import names
from pqlflow.local.model import ACCOUNT, REGION

FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")
_NAME_PROPERTY = {
    "AWS::DynamoDB::Table": "TableName",
    "AWS::Serverless::SimpleTable": "TableName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::Events::EventBus": "Name",
    "AWS::Events::Rule": "Name",
    "AWS::Serverless::Function": "FunctionName",
    "AWS::Lambda::Function": "FunctionName",
    "AWS::Scheduler::Schedule": "Name",
    "AWS::Scheduler::ScheduleGroup": "Name",
    "AWS::SNS::Topic": "TopicName",
    "AWS::IAM::Role": "RoleName",
}


class ResourceNames:
    """Names, Ref values and attributes of the resources of one template (computed once each)."""

    def __init__(self, resources: Mapping[str, Mapping[str, Any]], stack: str, file: str) -> None:
        self.resources = resources
        self.stack = stack
        self.file = file
        # Names may themselves use intrinsics (`!Sub "${AWS::StackName}-table"`): set by the template reader.
        self.resolve: Callable[[Any, str], Any] = lambda value, where: value
        self._names: dict[str, str] = {}
        self._naming: set[str] = set()

    def name_of(self, logical_id: str, where: str) -> str:
        if logical_id in self._names:
            return self._names[logical_id]
        resource = self.resources.get(logical_id)
        if resource is None:
            raise UsageError(f"{self.file}: {where}: no parameter or resource named {logical_id!r}")
        if logical_id in self._naming:
            raise UsageError(f"{self.file}: Resources.{logical_id}: its name refers to itself")
        self._naming.add(logical_id)
        try:
            kind = resource.get("Type", "")
            props = resource.get("Properties") or {}
            prop = _NAME_PROPERTY.get(kind)
            name = None
            if prop and prop in props:
                name = self.resolve(props[prop], f"Resources.{logical_id}.Properties.{prop}")
            if kind == "AWS::Lambda::Function" or kind == "AWS::Serverless::Function":
                name = name or f"{self.stack}-{logical_id}"
            elif kind == "AWS::SQS::Queue" and not name:
                fifo = bool(self.resolve(props.get("FifoQueue", False), logical_id))
                name = f"{self.stack}-{logical_id}" + (".fifo" if fifo else "")
            elif kind == "AWS::Serverless::HttpApi":
                name = logical_id.lower()[:10]
            name = str(name or f"{self.stack}-{logical_id}")
        finally:
            self._naming.discard(logical_id)
        self._names[logical_id] = name
        return name

    def implicit(self, logical_id: str) -> bool:
        """SAM-generated resources templates may refer to (implicit API, function roles)."""
        if logical_id == "ServerlessHttpApi":
            return True
        return logical_id.endswith("Role") and self.resources.get(logical_id[:-4], {}).get("Type") in FUNCTION_TYPES

    def ref(self, logical_id: str, where: str) -> str:
        if logical_id not in self.resources and self.implicit(logical_id):
            return f"{self.stack}-{logical_id}"
        name = self.name_of(logical_id, where)
        kind = self.resources[logical_id].get("Type", "")
        if kind == "AWS::SQS::Queue":
            return names.queue_url(name)
        if kind in ("AWS::SNS::Topic", "AWS::Serverless::LayerVersion", "AWS::Lambda::LayerVersion"):
            return self.arn(logical_id, where)
        return name

    def get_att(self, logical_id: str, attribute: str, where: str) -> Any:
        if logical_id not in self.resources and self.implicit(logical_id):
            return names.generic_arn("iam", f"role/{self.stack}-{logical_id}")
        name = self.name_of(logical_id, where)
        kind = self.resources[logical_id].get("Type", "")
        if attribute == "Arn":
            return self.arn(logical_id, where)
        if kind in ("AWS::DynamoDB::Table", "AWS::Serverless::SimpleTable") and attribute == "StreamArn":
            return names.stream_arn_placeholder(name)
        if kind == "AWS::SQS::Queue" and attribute == "QueueName":
            return name
        if kind == "AWS::SQS::Queue" and attribute == "QueueUrl":
            return names.queue_url(name)
        if kind == "AWS::Events::EventBus" and attribute == "Name":
            return name
        if kind == "AWS::Serverless::HttpApi" and attribute == "ApiEndpoint":
            return f"https://{name}.execute-api.{REGION}.amazonaws.com"
        return f"{name}-{attribute}"

    def arn(self, logical_id: str, where: str) -> str:
        name = self.name_of(logical_id, where)
        kind = self.resources[logical_id].get("Type", "")
        if kind in ("AWS::DynamoDB::Table", "AWS::Serverless::SimpleTable"):
            return names.table_arn(name)
        if kind == "AWS::SQS::Queue":
            return names.queue_arn(name)
        if kind == "AWS::Events::EventBus":
            return names.bus_arn(name)
        if kind == "AWS::Events::Rule":
            bus = (self.resources[logical_id].get("Properties") or {}).get("EventBusName", "default")
            return names.rule_arn(name, names.bus_name(str(self.resolve(bus, where))))
        if kind in FUNCTION_TYPES:
            return names.function_arn(name)
        if kind == "AWS::IAM::Role":
            return f"arn:aws:iam::{ACCOUNT}:role/{name}"
        if kind.endswith("LayerVersion"):
            return f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:{name}:1"
        if kind == "AWS::Scheduler::Schedule":
            return names.generic_arn("scheduler", f"schedule/default/{name}")
        service = kind.split("::")[1].lower() if kind.count("::") == 2 else "local"
        return names.generic_arn(service, name)

    def function_by_name(self, name: str) -> str | None:
        """The logical id of the template function with this physical name."""
        for logical_id, resource in self.resources.items():
            if resource.get("Type") in FUNCTION_TYPES and self.name_of(logical_id, logical_id) == name:
                return logical_id
        return None
