"""Business counts made while a batch is applied count once it commits, and only then."""

from __future__ import annotations

from loyalty import metrics


def value(event: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "loyalty_business_events_total", {"service": "probe", "event": event}) or 0.0


def test_counts_wait_for_the_commit_and_forget_rolled_back_records() -> None:
    before = value("kept"), value("rolled_back"), value("failed_attempt")
    with metrics.staging():
        metrics.count("probe", "failed_attempt")  # the attempt raised: never committed
    with metrics.staging() as counts:
        metrics.count("probe", "kept")
        mark = metrics.counts_mark()
        metrics.count("probe", "rolled_back")
        metrics.rollback_counts(mark)
        assert value("kept") == before[0]  # not before the commit
        metrics.commit_counts(counts)
    assert (value("kept"), value("rolled_back"), value("failed_attempt")) == (
        before[0] + 1, before[1], before[2])


def test_outside_a_batch_a_count_is_immediate() -> None:
    before = value("direct")
    metrics.count("probe", "direct")
    assert value("direct") == before + 1
