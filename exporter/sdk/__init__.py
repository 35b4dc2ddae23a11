"""The delta consumer SDK for servers: numpy, pyarrow, lz4, redis, oss2 (no torch, no pyflink).

>>> from exporter.sdk import DeltaConsumer, open_store
>>> c = DeltaConsumer(open_store("s3://bucket/prefix", cfg), redis_url="redis://...")
>>> c.start()                                    # bootstrap, then follow
>>> c.state.lookup("item_id", [17, 42])          # (2, dim) float32; missing ids -> zeros
"""

from exporter.errors import ExporterError
from exporter.format import Limits
from exporter.sdk._consumer import ConsumerStats, DeltaConsumer
from exporter.sdk._tables import (
    Backend,
    InMemoryTables,
    InPlaceTables,
    RedisTables,
    Table,
    TableSet,
)
from exporter.store import open_store

__all__ = [
    "Backend",
    "ConsumerStats",
    "DeltaConsumer",
    "ExporterError",
    "InMemoryTables",
    "InPlaceTables",
    "Limits",
    "RedisTables",
    "Table",
    "TableSet",
    "open_store",
]
