"""Replay's emulator speed fixes change nothing a client sees: same items, responses, errors and stream."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from pqlflow.local.aws import Clients
from pqlflow.local.emulator import emulator_speedups

ITEM = {
    "pk": {"S": "A#acme"}, "sk": {"S": "USAGE"}, "kind": {"S": "usage"}, "n": {"N": "12.5"},
    "flag": {"BOOL": True}, "nothing": {"NULL": True}, "tags": {"SS": ["a", "b"]}, "nums": {"NS": ["1", "2"]},
    "raw": {"B": b"\x00\x01binary"},
    "days": {"M": {"2026-09-08": {"M": {"Signed In": {"N": "3"}, "users": {"L": [{"S": "u1"}, {"N": "2"}]}}}}},
}


def scenario() -> dict:
    """Create a table, write, read, and run a transaction whose second part fails."""
    clients = Clients()
    client = clients.dynamodb
    client.create_table(
        TableName="t", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}
        ],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    client.put_item(TableName="t", Item=ITEM)
    client.put_item(TableName="t", Item={"pk": {"S": "A#acme"}, "sk": {"S": "CAP"}, "v": {"N": "1"}})
    got = client.get_item(TableName="t", Key={"pk": ITEM["pk"], "sk": ITEM["sk"]})["Item"]
    updated = client.update_item(
        TableName="t", Key={"pk": ITEM["pk"], "sk": ITEM["sk"]}, UpdateExpression="SET n = n + :one",
        ExpressionAttributeValues={":one": {"N": "1"}}, ReturnValues="ALL_NEW",
    )["Attributes"]
    with pytest.raises(ClientError) as failed:
        client.transact_write_items(TransactItems=[
            {"Put": {"TableName": "t", "Item": {"pk": {"S": "A#acme"}, "sk": {"S": "NURTURE#1"}}}},
            {"Update": {"TableName": "t", "Key": {"pk": {"S": "A#acme"}, "sk": {"S": "CAP"}},
                        "UpdateExpression": "SET v = :two", "ConditionExpression": "v = :zero",
                        "ExpressionAttributeValues": {":two": {"N": "2"}, ":zero": {"N": "0"}}}},
        ])
    client.transact_write_items(TransactItems=[
        {"Put": {"TableName": "t", "Item": {"pk": {"S": "A#acme"}, "sk": {"S": "NURTURE#2"}}}},
        {"Update": {"TableName": "t", "Key": {"pk": {"S": "A#acme"}, "sk": {"S": "CAP"}},
                    "UpdateExpression": "SET v = :two", "ExpressionAttributeValues": {":two": {"N": "2"}}}},
    ])
    items = client.scan(TableName="t")["Items"]
    arn = client.describe_table(TableName="t")["Table"]["LatestStreamArn"]
    streams = clients.streams
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    records = streams.get_records(ShardIterator=iterator["ShardIterator"])["Records"]
    return {
        "got": got, "updated": updated, "error": failed.value.response["Error"]["Code"],
        "items": sorted(items, key=lambda i: i["sk"]["S"]),
        "stream": [(r["eventName"], r["dynamodb"]["Keys"], r["dynamodb"].get("NewImage")) for r in records],
    }


def test_the_speed_fixes_give_the_same_results_as_plain_moto():
    with mock_aws():
        plain = scenario()
    with mock_aws(), emulator_speedups():
        fast = scenario()
    assert fast == plain
    assert fast["error"] == "TransactionCanceledException"
    assert [i["sk"]["S"] for i in fast["items"]] == ["CAP", "NURTURE#2", "USAGE"]
    assert fast["got"]["raw"] == {"B": b"\x00\x01binary"}
