-- hash_sample: a stable sample of $n records of each source in $sources, ids only: core/sampling.hash_sample's rule
-- (the smallest sha256('<seed>:<purpose>:<record_id>') of the source) computed by DuckDB; min_by keeps n ids per
-- source as it streams, so nothing per record is held, whatever the source's size. Sources in the order of $order
-- (raw_records' files as its view reads them), each source's smallest hashes first.
WITH picked AS (
    SELECT source,
           unnest(min_by(record_id, sha256(CAST($seed AS VARCHAR) || ':' || $purpose || ':' || record_id), $n))
               AS record_id
    FROM raw_records
    WHERE list_contains($sources, source)
    GROUP BY source
)
SELECT source, record_id
FROM picked
ORDER BY list_position($order, source), sha256(CAST($seed AS VARCHAR) || ':' || $purpose || ':' || record_id)
