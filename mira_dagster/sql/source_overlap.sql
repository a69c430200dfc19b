-- source_overlap: the content two sources share, per pair of sources (source_a sorts before source_b).
-- record_id hashes the normalised content, so a shared record is one id in both. It is one record in the
-- budget, the selection and the export, owned by the source whose name sorts first: for a pair, source_a
-- owns what they share unless a third source sorting before both has it too (sql/aggregated_scores.sql).
-- records_shared / tokens_shared: the shared records and their tokens; share_of_a / share_of_b: those tokens
-- as a share of each source's tokens in raw_records. Pairs that share nothing have no row.
WITH shared AS (
    -- only the ids in more than one source are joined pairwise: duplicates are rare
    SELECT record_id FROM raw_records GROUP BY record_id HAVING count(*) > 1
), copies AS (
    SELECT r.source, r.record_id, r.n_tokens FROM raw_records r SEMI JOIN shared USING (record_id)
), totals AS (
    SELECT source, sum(n_tokens) AS tokens FROM raw_records GROUP BY source
), pairs AS (
    SELECT a.source AS source_a, b.source AS source_b, count(*) AS records_shared,
        CAST(sum(a.n_tokens) AS BIGINT) AS tokens_shared
    FROM copies a JOIN copies b ON a.record_id = b.record_id AND a.source < b.source
    GROUP BY a.source, b.source
)
SELECT p.source_a, p.source_b, p.records_shared, p.tokens_shared,
    round(p.tokens_shared / nullif(ta.tokens, 0), 4) AS share_of_a,
    round(p.tokens_shared / nullif(tb.tokens, 0), 4) AS share_of_b
FROM pairs p
JOIN totals ta ON ta.source = p.source_a
JOIN totals tb ON tb.source = p.source_b
ORDER BY p.source_a, p.source_b
