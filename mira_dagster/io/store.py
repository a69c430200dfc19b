"""The store's public names, kept where their importers look for them: the table store and catalogue live in
io/tables.py, the reply cache in io/reply_cache.py, and the one place that builds the store's fsspec filesystem
from its location in io/filesystem.py."""

from mira_dagster.io.filesystem import object_store, store_filesystem
from mira_dagster.io.reply_cache import ObjectReplyCache, ParquetReplyCache, ReplyWriter
from mira_dagster.io.tables import UNPARTITIONED, PartitionWriter, Store, glob_escape, load_sql

__all__ = [
    "UNPARTITIONED",
    "ObjectReplyCache",
    "ParquetReplyCache",
    "PartitionWriter",
    "ReplyWriter",
    "Store",
    "glob_escape",
    "load_sql",
    "object_store",
    "store_filesystem",
]
