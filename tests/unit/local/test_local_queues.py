"""The runtime's SQS queues: receive counts, in-flight messages, redrive to the DLQ, FIFO groups and dedup."""

import pytest
from pqlflow.kernel import clock
from pqlflow.local.model import Queue, Redrive
from pqlflow.local.queues import Queues


@pytest.fixture(autouse=True)
def fixed_clock():
    clock.set_source(lambda: 1_700_000_000.0)
    yield
    clock.set_source(None)


def queues(fifo=False, max_receive_count=2):
    dlq = Queue("Dlq", "dlq", "url", "arn:aws:sqs:us-east-1:123456789012:dlq")
    name = "work.fifo" if fifo else "work"
    work = Queue(
        "Work",
        name,
        "url",
        f"arn:aws:sqs:us-east-1:123456789012:{name}",
        fifo=fifo,
        redrive=Redrive(dlq.arn, max_receive_count),
        attributes={"ContentBasedDeduplication": "true"} if fifo else {},
    )
    return Queues([dlq, work])


def test_received_messages_are_in_flight_until_deleted_or_released():
    # Given two messages
    qs = queues()
    work = qs["work"]
    work.send("a")
    work.send("b")
    # When one is received
    (first,) = work.receive(1)
    # Then only the other can be received meanwhile
    (second,) = work.receive(10)
    assert (first["Body"], second["Body"], work.receive(10)) == ("a", "b", [])
    # And a released message comes back with its receive count, a deleted one never
    work.release([first["ReceiptHandle"]])
    work.delete([second["ReceiptHandle"]])
    (again,) = work.receive(10)
    assert (again["Body"], again["Attributes"]["ApproximateReceiveCount"]) == ("a", "2")
    assert again["Attributes"]["SentTimestamp"] == "1700000000000"


def test_a_message_received_max_receive_count_times_moves_to_the_dead_letter_queue():
    qs = queues(max_receive_count=2)
    work = qs["work"]
    work.send("poison")
    for _ in range(2):
        (message,) = work.receive(10)
        work.release([message["ReceiptHandle"]])
    # When it would be received a third time
    assert work.receive(10) == []
    # Then it is in the DLQ, history kept
    (dead,) = qs["dlq"].receive(10)
    assert (dead["Body"], dead["Attributes"]["ApproximateReceiveCount"]) == ("poison", "3")


def test_fifo_queues_keep_group_order_hold_busy_groups_and_drop_duplicates():
    qs = queues(fifo=True)
    work = qs["work.fifo"]
    work.send("a1", group_id="a")
    work.send("a2", group_id="a")
    work.send("b1", group_id="b")
    assert work.send("a1", group_id="a") is None  # content-based deduplication
    # When one message of group a is in flight
    (first,) = work.receive(1)
    # Then group a is held, group b is not
    assert [m["Body"] for m in work.receive(10)] == ["b1"]
    work.delete([first["ReceiptHandle"]])
    (next_in_a,) = work.receive(10)
    assert (next_in_a["Body"], next_in_a["Attributes"]["MessageGroupId"]) == ("a2", "a")
