-- Which of a batch's record ids an earlier ingest of the source read, and where ("file:line"): a semi-join of the
-- batch (the registered Arrow table `batch_ids`) against the earlier raw_records partition's Parquet ($path).
-- DuckDB builds the join's hash table on the batch and streams the partition, so memory is the batch's, not the
-- source's (issue 25 item 4: the append path held every earlier record_id in a Python dict).
SELECT r.record_id, concat(r.origin_file, ':', r.origin_line) AS origin
FROM read_parquet($path) AS r
SEMI JOIN batch_ids AS b ON r.record_id = b.record_id
