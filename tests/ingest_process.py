"""One ingest process on the real broker and table, as `rollcast ingest` runs the stage, but
without a Prefect API: the multi-process tests start several at once, and each would otherwise
start its own temporary Prefect server. Settings come from ``ROLLCAST_*`` variables.

Run as ``python tests/ingest_process.py``; prints the ingest report as JSON.
"""

from __future__ import annotations

import json
import logging

from pipeline.config import Settings
from pipeline.kafka_io import KafkaTransport
from pipeline.wiring import ingest_from_settings


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    settings = Settings()
    transport = KafkaTransport(settings.kafka)
    report = ingest_from_settings(transport, settings.store, settings.ingest, settings.records)
    print(json.dumps(report.as_dict()))


if __name__ == "__main__":
    main()
