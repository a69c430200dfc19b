-- run_summary: per source, records in, scored, kept, and tokens in and kept.
WITH raw AS (
    SELECT source, count(*) AS records_in, CAST(sum(n_tokens) AS BIGINT) AS tokens_in FROM raw_records GROUP BY source
), q AS (
    SELECT source, count(*) AS quarantined FROM quarantine GROUP BY source
), scored AS (
    SELECT source, count(*) FILTER (WHERE status IN ('ok', 'partial')) AS records_scored,
        count(*) AS records_with_status
    FROM student_scores GROUP BY source
), kept AS (
    SELECT source, count(*) AS records_kept, CAST(sum(n_tokens) AS BIGINT) AS tokens_kept FROM selected_subset GROUP BY source
)
SELECT raw.source, raw.records_in, coalesce(q.quarantined, 0) AS quarantined,
    coalesce(scored.records_scored, 0) AS records_scored,
    coalesce(scored.records_with_status, 0) AS records_with_status,
    coalesce(kept.records_kept, 0) AS records_kept,
    raw.tokens_in, coalesce(kept.tokens_kept, 0) AS tokens_kept,
    round(coalesce(kept.tokens_kept, 0) / raw.tokens_in, 3) AS kept_token_share
FROM raw
LEFT JOIN q USING (source)
LEFT JOIN scored USING (source)
LEFT JOIN kept USING (source)
ORDER BY raw.source
