"""Kafka topic names and their layout: the public ones are fixed by CONTRACT.md."""

from __future__ import annotations

from dataclasses import dataclass

PUBLIC_PARTITIONS = 6
INTERNAL_PARTITIONS = 6

PURCHASES = "loyalty.purchases.v1"
ACTIVITIES = "loyalty.activities.v1"
ADJUSTMENTS = "loyalty.adjustments.v1"
REDEMPTIONS = "loyalty.redemptions.v1"
PROGRAMS = "loyalty.programs.v1"
LEDGER = "loyalty.ledger.v1"
MEMBERS = "loyalty.members.v1"
ORDERS = "loyalty.orders.v1"
NOTIFICATIONS_SMS = "loyalty.notifications.sms.v1"
NOTIFICATIONS_EMAIL = "loyalty.notifications.email.v1"

# Internal: the ledger's command stream, keyed by member so one member's commands stay in order.
LEDGER_COMMANDS = "loyalty.internal.ledger-commands.v1"
# Internal: the ledger's answers to reward-fulfilment's commands (every event whose source is a
# redemption), also published on loyalty.ledger.v1. reward-fulfilment reads only these, not
# every movement of the platform.
LEDGER_REPLIES = "loyalty.internal.ledger-replies.v1"

INPUT_TOPICS = (PURCHASES, ACTIVITIES, ADJUSTMENTS, REDEMPTIONS)


def dlq(topic: str) -> str:
    """The dead-letter topic of `topic` (CONTRACT.md: `<topic>.dlq`)."""
    return f"{topic}.dlq"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False


def all_topics() -> list[TopicSpec]:
    """Every topic the platform uses, created idempotently at start."""
    public = [
        PURCHASES,
        ACTIVITIES,
        ADJUSTMENTS,
        REDEMPTIONS,
        LEDGER,
        MEMBERS,
        ORDERS,
        NOTIFICATIONS_SMS,
        NOTIFICATIONS_EMAIL,
    ]
    specs = [TopicSpec(t, PUBLIC_PARTITIONS) for t in public]
    specs.append(TopicSpec(PROGRAMS, PUBLIC_PARTITIONS, compacted=True))
    specs.append(TopicSpec(LEDGER_COMMANDS, INTERNAL_PARTITIONS))
    specs.append(TopicSpec(LEDGER_REPLIES, INTERNAL_PARTITIONS))
    consumed = [*INPUT_TOPICS, PROGRAMS, LEDGER, MEMBERS, LEDGER_COMMANDS, LEDGER_REPLIES]
    specs.extend(TopicSpec(dlq(t), PUBLIC_PARTITIONS) for t in consumed)
    return specs
