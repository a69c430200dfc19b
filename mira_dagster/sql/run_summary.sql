-- run_summary: per source, records in, quarantined (with the commonest reason), scored, kept, tokens in and kept,
-- and the records it shares with a source that owns them.
-- Every source with a row anywhere is listed: one whose every line was quarantined (0 records) still appears,
-- with records_in = 0 and its quarantine. (A source with no row in any table has nothing to report.)
-- top_quarantine_reason: the commonest `kind` of the source's quarantine rows (invalid JSON, duplicate, no layout,
-- ...: the reasons themselves carry per-line detail). Read through to_json so that tables written before the
-- column existed still work (their kind is the reason up to its first detail: " of ", ":" or " ["). Ties: the kind sorting first.
-- duplicates_elsewhere: records of this source whose content is also in a source whose name sorts before it;
-- that source owns them, so they are kept (and counted in the budget) there, never here (aggregated_scores.sql).
WITH sources AS (
    SELECT DISTINCT source FROM raw_records
    UNION SELECT DISTINCT source FROM quarantine
    UNION SELECT DISTINCT source FROM student_scores
), raw AS (
    SELECT source, count(*) AS records_in, CAST(sum(n_tokens) AS BIGINT) AS tokens_in FROM raw_records GROUP BY source
), q AS (
    SELECT source, count(*) AS quarantined FROM quarantine GROUP BY source
), q_kinds AS (
    SELECT source, coalesce(nullif(to_json(q) ->> 'kind', ''), regexp_replace(reason, '( of |:| \[).*$', '')) AS kind
    FROM quarantine q
), q_top AS (
    SELECT source, kind AS top_quarantine_reason
    FROM (SELECT source, kind, count(*) AS n FROM q_kinds GROUP BY source, kind)
    QUALIFY row_number() OVER (PARTITION BY source ORDER BY n DESC, kind) = 1
), owners AS (
    SELECT record_id, min(source) AS owner FROM raw_records GROUP BY record_id HAVING count(*) > 1
), dup AS (
    SELECT r.source, count(*) AS duplicates_elsewhere
    FROM raw_records r JOIN owners o USING (record_id) WHERE r.source <> o.owner GROUP BY r.source
), scored AS (
    SELECT source, count(*) FILTER (WHERE status IN ('ok', 'partial')) AS records_scored,
        count(*) AS records_with_status
    FROM student_scores GROUP BY source
), kept AS (
    SELECT source, count(*) AS records_kept, CAST(sum(n_tokens) AS BIGINT) AS tokens_kept FROM selected_subset GROUP BY source
)
SELECT s.source, coalesce(raw.records_in, 0) AS records_in, coalesce(q.quarantined, 0) AS quarantined,
    coalesce(scored.records_scored, 0) AS records_scored,
    coalesce(scored.records_with_status, 0) AS records_with_status,
    coalesce(kept.records_kept, 0) AS records_kept,
    coalesce(raw.tokens_in, 0) AS tokens_in, coalesce(kept.tokens_kept, 0) AS tokens_kept,
    coalesce(round(coalesce(kept.tokens_kept, 0) / nullif(raw.tokens_in, 0), 3), 0.0) AS kept_token_share,
    q_top.top_quarantine_reason,
    coalesce(dup.duplicates_elsewhere, 0) AS duplicates_elsewhere
FROM sources s
LEFT JOIN raw USING (source)
LEFT JOIN q USING (source)
LEFT JOIN q_top USING (source)
LEFT JOIN dup USING (source)
LEFT JOIN scored USING (source)
LEFT JOIN kept USING (source)
ORDER BY s.source
