"""Batches as Lambda's event source mappings form them from arrival times (pqlflow.local.batching)."""

from __future__ import annotations

import pytest
from pqlflow.local.batching import PAYLOAD_LIMIT_BYTES, BatchWindow, firehose_batches, sqs_batches, stream_batches

MIN = 60_000
MB = 1024 * 1024


def sizes(batches: list) -> list[int]:
    return [b.size for b in batches]


def test_a_five_second_window_over_events_two_minutes_apart_gives_one_event_per_batch() -> None:
    arrivals = [i * 2 * MIN for i in range(30)]

    batches = sqs_batches(arrivals, batch_size=1000, window_seconds=5)

    assert sizes(batches) == [1] * 30
    assert all(b.closed_by == "window" and b.wait_ms == 5_000 for b in batches)
    assert [b.invoked_ms for b in batches] == [a + 5_000 for a in arrivals]


def test_a_thousand_events_in_one_second_with_batch_size_100_give_ten_full_batches() -> None:
    arrivals = [i for i in range(1000)]  # one a millisecond

    batches = sqs_batches(arrivals, batch_size=100, window_seconds=5)

    assert sizes(batches) == [100] * 10
    assert all(b.closed_by == "size" for b in batches)
    assert [(b.start, b.stop) for b in batches[:2]] == [(0, 100), (100, 200)]
    assert batches[0].invoked_ms == 99  # invoked when the 100th arrives, not when the window ends


def test_the_six_mb_payload_limit_closes_a_batch_before_it_is_full() -> None:
    arrivals = [i * 100 for i in range(10)]  # ten 1 MB messages within a second
    batches = sqs_batches(arrivals, batch_size=1000, window_seconds=5, payload_bytes=[MB] * 10)

    assert sizes(batches) == [6, 4]
    assert batches[0].closed_by == "payload"
    assert batches[0].payload_bytes == 6 * MB == PAYLOAD_LIMIT_BYTES
    assert batches[0].invoked_ms == 600  # when the 7th message would not fit
    assert batches[1].closed_by == "window"


def test_a_window_takes_everything_that_arrived_by_its_end_and_the_next_arrival_opens_a_new_batch() -> None:
    arrivals = [0, 1_000, 4_999, 5_000, 5_001, 9_000, 60_000]

    batches = sqs_batches(arrivals, batch_size=1000, window_seconds=5)

    assert sizes(batches) == [4, 2, 1]  # 5,000 ms is still in the first window; 5,001 opens the second
    assert [(b.opened_ms, b.invoked_ms) for b in batches] == [(0, 5_000), (5_001, 10_001), (60_000, 65_000)]


def test_without_a_window_every_poll_takes_what_has_arrived() -> None:
    arrivals = [0, 0, 0, 10, 20, 20]

    batches = sqs_batches(arrivals, batch_size=10, window_seconds=0)

    assert sizes(batches) == [3, 1, 2]
    assert all(b.wait_ms == 0 for b in batches)


def test_sqs_refuses_what_aws_refuses() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        sqs_batches([0], batch_size=1000, window_seconds=0)
    with pytest.raises(ValueError, match="between 1 and 10000"):
        sqs_batches([0], batch_size=10_001, window_seconds=5)
    with pytest.raises(ValueError, match="between 0 and 300"):
        sqs_batches([0], batch_size=10, window_seconds=301)


def test_arrivals_out_of_order_are_an_error_naming_the_message() -> None:
    with pytest.raises(ValueError, match="message 2: arrival 5 ms is before the previous one"):
        sqs_batches([0, 10, 5], batch_size=10, window_seconds=1)


def test_stream_records_of_one_ingest_batch_share_a_qualify_batch_up_to_its_size() -> None:
    # 250 usage items written by one ingest invocation at t=0, then one more record 3 s later
    arrivals = [0] * 250 + [3_000]

    batches = stream_batches(arrivals, batch_size=100, window_seconds=1)

    assert sizes(batches) == [100, 100, 50, 1]
    assert [b.closed_by for b in batches] == ["size", "size", "window", "window"]
    assert batches[2].invoked_ms == 1_000


def test_stream_payload_limit_splits_batches_of_big_images() -> None:
    arrivals = [0] * 20  # twenty records of a 400 KB item (old and new image: ~1 MB each as JSON)

    batches = stream_batches(arrivals, batch_size=100, window_seconds=1, payload_bytes=[1_000_000] * 20)

    assert sizes(batches) == [6, 6, 6, 2]


def test_fed_one_at_a_time_the_window_forms_the_same_batches() -> None:
    arrivals = [0, 0, 700, 1_200, 1_300, 2_600, 2_601, 2_602, 9_000]
    whole = stream_batches(arrivals, batch_size=3, window_seconds=1)

    window = BatchWindow(batch_size=3, window_seconds=1)
    fed = []
    for arrival in arrivals:
        fed += window.due(arrival)  # a driver asks what is due before producing the next arrival
        fed += window.add(arrival)
    fed += window.flush()

    assert fed == whole
    assert sizes(whole) == [3, 2, 3, 1]
    assert not window.open and window.pending == 0


def test_a_firehose_buffer_holds_every_record_of_its_interval_across_accounts() -> None:
    # 1,000 accounts, each sending every 150 s: 400 records a minute arrive spread over the interval
    arrivals = sorted((a * 150) + k * 150_000 for a in range(1_000) for k in range(12))  # 30 minutes

    minute = firehose_batches(arrivals, interval_seconds=60, size_mb=5, payload_bytes=[900] * len(arrivals))
    quarter = firehose_batches(arrivals, interval_seconds=900, size_mb=128, payload_bytes=[900] * len(arrivals))

    assert sum(sizes(minute)) == len(arrivals) == sum(sizes(quarter))
    assert max(b.wait_ms for b in minute) == 60_000
    assert len(minute) == 30 and len(quarter) == 2  # one S3 object (one ingest invocation) per buffer
    assert all(b.closed_by == "window" for b in minute + quarter)


def test_a_firehose_buffer_is_delivered_when_it_holds_its_size() -> None:
    arrivals = [i * 10 for i in range(30)]  # 30 records of 400 KB within 0.3 s

    batches = firehose_batches(arrivals, interval_seconds=300, size_mb=5, payload_bytes=[400 * 1024] * 30)

    assert sizes(batches) == [12, 12, 6]
    assert [b.closed_by for b in batches] == ["payload", "payload", "window"]


def test_firehose_refuses_buffering_hints_firehose_refuses() -> None:
    with pytest.raises(ValueError, match="between 0 and 900"):
        firehose_batches([0], interval_seconds=901, size_mb=5, payload_bytes=[1])
    with pytest.raises(ValueError, match="between 1 and 128"):
        firehose_batches([0], interval_seconds=60, size_mb=129, payload_bytes=[1])
