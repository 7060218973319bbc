"""Pure parts of the Kafka edge: the partitioner must place keys exactly as Java clients do."""

from __future__ import annotations

from kafka.partitioner import DefaultPartitioner

from pipeline.kafka_io import KeyCachingPartitioner


class Cluster:
    """The two ClusterMetadata lookups a partitioner makes."""

    def __init__(self, partitions: int) -> None:
        self._partitions = set(range(partitions))

    def topics(self) -> set[str]:
        return {"forecasts"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions


def test_cached_partitions_match_the_default_partitioner_before_and_after_growth() -> None:
    cached, default = KeyCachingPartitioner(max_keys=50), DefaultPartitioner()
    keys = [f"sensor-{i}".encode() for i in range(200)]

    for partitions in (3, 12):  # a topic grown from 3 to 12 partitions re-hashes its keys
        cluster = Cluster(partitions)
        for key in keys + keys:
            expected = default.partition("forecasts", key, key, None, None, cluster)
            assert cached.partition("forecasts", key, key, None, None, cluster) == expected

    assert len(cached._cache) <= 50  # bounded however many keys pass
