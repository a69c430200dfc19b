-- teacher_sample: core/sampling.teacher_sample's rule computed by DuckDB over one source's ids, so no id of the
-- source comes into Python: its $k smallest sha256('<seed>:sample:<record_id>') among the distinct ids (min_by keeps
-- $k while it streams), of which the first $n_heldout by sha256('<seed>:split:<record_id>') are held out.
WITH picked AS (
    SELECT unnest(min_by(record_id, sha256(CAST($seed AS VARCHAR) || ':sample:' || record_id), $k)) AS record_id
    FROM (SELECT DISTINCT record_id FROM raw_records WHERE source = $source)
)
SELECT record_id,
       CASE WHEN row_number() OVER (ORDER BY sha256(CAST($seed AS VARCHAR) || ':split:' || record_id)) <= $n_heldout
            THEN 'heldout' ELSE 'distill' END AS split
FROM picked
