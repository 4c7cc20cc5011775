"""What replay needs from the emulator beyond `pqlflow.local`: template resources it does not create yet,
and the emails SES accepted.

Adapter module (moto only here, imported lazily by `pqlflow.local.replay`). Everything is derived from the
template; nothing here is a second description of the wiring:

- `create_extra_resources`: AWS::SecretsManager::Secret (a fixed local value for generated secrets, so a
  re-run signs the same unsubscribe links), AWS::SES::ConfigurationSet, and the SenderIdentity parameter
  as a verified SES identity (the sandbox step an operator does once by hand).
- `sent_emails`: the raw MIME of every SES v2 SendEmail, as moto's SES backend stored it;
  `sent_emails_after`: those since a count of them, for `pqlflow dev` looking after each invocation.
- `emulator_speedups`, two fixes with unchanged results, while the block runs (`pqlflow.local` should
  own them; see docs/replay.md):
  * moto's DynamoDB TransactWriteItems deep-copies every table it touches (all items and the whole
    stream) before each transaction, to roll back on failure: seconds per call once the table holds a
    few weeks of usage. Instead, only the items the transaction names (and the stream's length) are
    backed up, and a failed transaction restores exactly those.
  * moto's response serializer walks the API model for every nested AttributeValue (ten members each,
    through a generic attribute picker): most of a replay's time goes there for usage items of a few
    KB. AttributeValues without binary data are written directly in the same JSON form.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pqlflow.local.cfn_yaml import load_yaml
from pqlflow.local.model import ACCOUNT, REGION
from pqlflow.local.moto_json import plain_attribute_values
from pqlflow.local.naming import ResourceNames
from pqlflow.local.runtime import LocalRuntime

LOCAL_SECRET = hashlib.sha256(b"pqlflow local replay signing secret").hexdigest()  # 64 characters


@contextmanager
def emulator_speedups() -> Iterator[None]:
    """TransactWriteItems in moto without its whole-table deep copy, and AttributeValues serialized as plain
    JSON (`moto_json.plain_attribute_values`); same results, restored afterwards."""
    import moto.dynamodb.models

    # moto's module and classes are patched on purpose: handled untyped here, as they are not meant to be.
    ddb: Any = moto.dynamodb.models
    original = ddb.DynamoDBBackend.transact_write_items

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        backups = _touched(self, transact_items)
        shards = [(t.stream_shard, len(t.stream_shard.items)) for t in self.tables.values() if t.stream_shard]
        real_copy = ddb.copy
        ddb.copy = _NoTableCopy(real_copy)  # moto's backup becomes the table itself: rollback is ours
        try:
            original(self, transact_items)
        except Exception:
            for table, hash_key, range_key, item in backups:
                _restore(table, hash_key, range_key, item)
            for shard, length in shards:
                del shard.items[length:]
            raise
        finally:
            ddb.copy = real_copy

    ddb.DynamoDBBackend.transact_write_items = transact_write_items
    try:
        with plain_attribute_values():
            yield
    finally:
        ddb.DynamoDBBackend.transact_write_items = original


class _NoTableCopy:
    def __init__(self, real: Any) -> None:
        self._real = real

    def deepcopy(self, value: Any, memo: Any = None) -> Any:
        from moto.dynamodb.models.table import Table

        return value if isinstance(value, Table) else self._real.deepcopy(value, memo)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _touched(backend: Any, transact_items: list[dict[str, Any]]) -> list[tuple[Any, Any, Any, Any]]:
    from moto.dynamodb.models.dynamo_type import DynamoType

    backups = []
    for entry in transact_items:
        for op in entry.values():
            table = backend.tables.get(op.get("TableName")) if isinstance(op, dict) else None
            if table is None:
                continue
            key = op.get("Key") or op.get("Item") or {}
            if table.hash_key_attr not in key:
                continue
            hash_key = DynamoType(key[table.hash_key_attr])
            range_key = DynamoType(key[table.range_key_attr]) if table.range_key_attr in key else None
            try:
                current = table.get_item(hash_key, range_key)
            except Exception:  # a malformed key: moto's own call reports it
                current = None
            backups.append((table, hash_key, range_key, copy.deepcopy(current)))
    return backups


def _restore(table: Any, hash_key: Any, range_key: Any, item: Any) -> None:
    if range_key is not None:
        if item is None:
            table.items.get(hash_key, {}).pop(range_key, None)
        else:
            table.items[hash_key][range_key] = item
    elif item is None:
        table.items.pop(hash_key, None)
    else:
        table.items[hash_key] = item


SES_ALREADY_EXISTS = {"AlreadyExistsException", "ConfigurationSetAlreadyExistsException"}


def create_extra_resources(runtime: LocalRuntime) -> None:
    """Secrets, SES configuration sets and the sender identity of the runtime's template, in the emulator."""
    wiring = runtime.wiring
    template = load_yaml(wiring.template_path)
    resources = template.get("Resources") or {}
    names = ResourceNames(resources, wiring.stack_name, str(wiring.template_path))
    secrets = runtime.client("secretsmanager")
    for logical_id, resource in resources.items():
        kind = resource.get("Type")
        props = resource.get("Properties") or {}
        name = names.name_of(logical_id, f"Resources.{logical_id}")  # what !Ref gives functions
        if kind == "AWS::SecretsManager::Secret":
            value = props.get("SecretString")
            with contextlib.suppress(secrets.exceptions.ResourceExistsException):
                secrets.create_secret(Name=name, SecretString=value if isinstance(value, str) else LOCAL_SECRET)
        elif kind == "AWS::SES::ConfigurationSet":
            sesv2 = runtime.client("sesv2")
            try:
                sesv2.create_configuration_set(ConfigurationSetName=name)
            except sesv2.exceptions.ClientError as exc:  # SES says AlreadyExistsException, moto its own code
                if exc.response["Error"]["Code"] not in SES_ALREADY_EXISTS:
                    raise
    identity = wiring.parameters.get("SenderIdentity")
    if isinstance(identity, str) and identity:
        ses = runtime.client("ses")
        if "@" in identity:
            ses.verify_email_identity(EmailAddress=identity)
        else:
            ses.verify_domain_identity(Domain=identity)


def sent_emails() -> list[tuple[str, list[str], bytes]]:
    """(message id, destinations, raw MIME) of every raw email the in-process SES accepted, in order."""
    from moto.ses.models import RawMessage, ses_backends

    backend = ses_backends[ACCOUNT][REGION]
    return [
        (m.id, list(m.destinations), m.raw_data.encode("utf-8"))
        for m in backend.sent_messages
        if isinstance(m, RawMessage)
    ]


def sent_emails_after(seen: int) -> tuple[int, list[bytes]]:
    """How many messages the in-process SES holds, and the raw MIME of the raw ones after its first `seen`
    (all of them when it holds fewer: moto was reset)."""
    from moto.ses.models import RawMessage, ses_backends

    sent = ses_backends[ACCOUNT][REGION].sent_messages
    new = sent[seen:] if len(sent) >= seen else sent
    return len(sent), [m.raw_data.encode("utf-8") for m in new if isinstance(m, RawMessage)]
