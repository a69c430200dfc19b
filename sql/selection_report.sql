-- selection_report: per variant and source, the tokens kept, the share of the source's tokens, and the
-- Jaccard overlap of the kept record set with the group variant's. A source's tokens are those of the records it
-- owns (aggregated_scores: content shared with a source whose name sorts first counts there), as in the budget.
WITH kept AS (
    SELECT 'global' AS variant, source, record_id, n_tokens FROM selected_global
    UNION ALL SELECT 'group', source, record_id, n_tokens FROM selected_group
    UNION ALL SELECT 'source', source, record_id, n_tokens FROM selected_source
    UNION ALL SELECT 'random', source, record_id, n_tokens FROM selected_random
), totals AS (
    SELECT source, CAST(sum(n_tokens) AS BIGINT) AS source_tokens FROM aggregated_scores GROUP BY source
), variants AS (
    SELECT v.variant, t.source, t.source_tokens
    FROM (VALUES ('global'), ('group'), ('source'), ('random')) v(variant) CROSS JOIN totals t
), per AS (
    SELECT variant, source, count(*) AS records_kept, CAST(sum(n_tokens) AS BIGINT) AS tokens_kept
    FROM kept GROUP BY variant, source
), overlap AS (
    SELECT k.variant, k.source,
        count(*) FILTER (WHERE g.record_id IS NOT NULL) AS both_kept
    FROM kept k LEFT JOIN selected_group g USING (source, record_id)
    GROUP BY k.variant, k.source
), group_sizes AS (
    SELECT source, count(*) AS group_kept FROM selected_group GROUP BY source
)
SELECT v.variant, v.source, v.source_tokens,
    coalesce(p.records_kept, 0) AS records_kept, coalesce(p.tokens_kept, 0) AS tokens_kept,
    round(coalesce(p.tokens_kept, 0) / v.source_tokens, 4) AS kept_share,
    round(coalesce(o.both_kept, 0)
        / nullif(coalesce(p.records_kept, 0) + coalesce(gs.group_kept, 0) - coalesce(o.both_kept, 0), 0), 4)
        AS jaccard_vs_group
FROM variants v
LEFT JOIN per p USING (variant, source)
LEFT JOIN overlap o USING (variant, source)
LEFT JOIN group_sizes gs USING (source)
ORDER BY v.variant, v.source
