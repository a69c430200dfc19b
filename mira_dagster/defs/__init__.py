"""Dagster glue: assets by stage, the resource, partitions and checks. Each asset reads, calls core,
writes, and reports metadata."""
