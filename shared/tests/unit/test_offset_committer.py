"""Offsets are committed after the database, explicitly, and at most once per interval."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiokafka.errors import CommitFailedError
from aiokafka.structs import ConsumerRecord, TopicPartition

from loyalty.kafka import OffsetCommitter


@dataclass
class Consumer:
    """What the committer uses of aiokafka's consumer: its assignment and commit."""

    partitions: set[TopicPartition]
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    fail: bool = False

    def assignment(self) -> set[TopicPartition]:
        return self.partitions

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.fail:
            raise CommitFailedError("rebalanced")
        self.commits.append(dict(offsets))


def record(partition: int, offset: int, topic: str = "t") -> ConsumerRecord:
    return ConsumerRecord(topic, partition, offset, 0, 0, None, b"{}", None, 0, 2, [])


P0, P1, P2 = (TopicPartition("t", p) for p in range(3))


def test_commits_the_next_offset_of_each_partitions_last_applied_record() -> None:
    consumer, committer = Consumer({P0, P1}), OffsetCommitter(interval_s=60)
    committer.applied(consumer, [record(0, 5), record(1, 9), record(0, 7)])
    committer.applied(consumer, [record(0, 8)])
    asyncio.run(committer.flush())
    assert consumer.commits == [{P0: 9, P1: 10}]
    asyncio.run(committer.flush())  # nothing new: nothing sent
    assert len(consumer.commits) == 1


def test_due_once_per_interval_and_only_with_something_to_commit() -> None:
    consumer, committer = Consumer({P0}), OffsetCommitter(interval_s=60)
    assert not committer.due()
    committer.applied(consumer, [record(0, 1)])
    assert not committer.due()  # applied, but the interval has not passed
    committer.last -= 61
    assert committer.due()
    asyncio.run(committer.flush())
    assert not committer.due()


def test_partitions_no_longer_assigned_are_left_to_their_new_owner() -> None:
    consumer, committer = Consumer({P0}), OffsetCommitter()
    committer.applied(consumer, [record(0, 1), record(2, 4)])
    asyncio.run(committer.flush())
    assert consumer.commits == [{P0: 2}]


def test_a_failed_commit_is_logged_not_raised() -> None:
    consumer, committer = Consumer({P1}, fail=True), OffsetCommitter()
    committer.applied(consumer, [record(1, 3)])
    asyncio.run(committer.flush())  # the records come again, no-ops by the inbox
    assert consumer.commits == [] and committer.pending == {}
