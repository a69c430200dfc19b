-- selection_report: the selections side by side at one budget, per selection (`variant`: MIRA-global, MIRA-group,
-- MIRA-source as each scorer_scope last selected, and random) and source: the records and tokens kept, the share of
-- the source's tokens, the Jaccard overlap of the kept record set with the current scope's ($current), and the
-- teacher's mean overall score (0-100) on the held-out records kept and on those left out: the yardstick the
-- paper compares its variants by, here the current scope's anchored teacher on the held-out split (the same
-- records in every scope: the split is a hash of record_id). A source's tokens are those of the records it owns
-- (aggregated_scores), as in the budget.
-- The kept sets are read from the tables (scope_selections, selected_random), never loaded into Python.
WITH kept AS (
    -- the selections compared at the budget $share (sql/macro_compared_selections.sql)
    SELECT * FROM compared_selections('scope_selections', 'selected_random', $share)
), totals AS (
    SELECT source, CAST(sum(n_tokens) AS BIGINT) AS source_tokens FROM aggregated_scores GROUP BY source
), variants AS (
    SELECT v.variant, t.source, t.source_tokens
    FROM (SELECT DISTINCT variant FROM kept) v CROSS JOIN totals t
), per AS (
    SELECT variant, source, count(*) AS records_kept, CAST(sum(n_tokens) AS BIGINT) AS tokens_kept
    FROM kept GROUP BY variant, source
), current_sel AS (
    SELECT source, record_id FROM kept WHERE variant = $current
), overlap AS (
    SELECT k.variant, k.source, count(c.record_id) AS both_kept
    FROM kept k LEFT JOIN current_sel c USING (source, record_id)
    GROUP BY k.variant, k.source
), current_sizes AS (
    SELECT source, count(*) AS current_kept FROM current_sel GROUP BY source
), heldout AS (
    -- the teacher's overall on the held-out records it scored
    SELECT t.source, t.record_id, t.overall FROM teacher_labels t
    JOIN aggregated_scores a USING (source, record_id)
    WHERE t.split = 'heldout' AND t.overall IS NOT NULL
), judged AS (
    SELECT v.variant, h.source, h.overall, k.record_id IS NOT NULL AS is_kept
    FROM heldout h JOIN (SELECT DISTINCT variant FROM kept) v ON true
    LEFT JOIN kept k ON k.variant = v.variant AND k.source = h.source AND k.record_id = h.record_id
), teacher AS (
    SELECT variant, source,
        count(*) FILTER (WHERE is_kept) AS heldout_kept,
        avg(overall) FILTER (WHERE is_kept) AS teacher_overall_kept,
        avg(overall) FILTER (WHERE NOT is_kept) AS teacher_overall_dropped
    FROM judged GROUP BY variant, source
)
SELECT v.variant, v.source, v.source_tokens,
    coalesce(p.records_kept, 0) AS records_kept, coalesce(p.tokens_kept, 0) AS tokens_kept,
    round(coalesce(p.tokens_kept, 0) / v.source_tokens, 4) AS kept_share,
    round(coalesce(o.both_kept, 0)
        / nullif(coalesce(p.records_kept, 0) + coalesce(cs.current_kept, 0) - coalesce(o.both_kept, 0), 0), 4)
        AS jaccard_vs_current,
    coalesce(t.heldout_kept, 0) AS heldout_kept,
    round(t.teacher_overall_kept, 2) AS teacher_overall_kept,
    round(t.teacher_overall_dropped, 2) AS teacher_overall_dropped
FROM variants v
LEFT JOIN per p USING (variant, source)
LEFT JOIN overlap o USING (variant, source)
LEFT JOIN current_sizes cs USING (source)
LEFT JOIN teacher t USING (variant, source)
ORDER BY v.variant, v.source
