-- selection_variants: selection_report over the whole corpus, one row per selection (what `mira run` prints):
-- records and tokens kept, the share of all tokens, the Jaccard overlap of the kept record set with the current
-- scope's ($current), and the anchored teacher's mean overall (0-100) on the held-out records kept and left out.
-- The kept sets are read from the tables (scope_selections, selected_random), never loaded into Python.
WITH kept AS (
    -- the selections compared at the budget $share (sql/macro_compared_selections.sql)
    SELECT * FROM compared_selections('scope_selections', 'selected_random', $share)
), current_sel AS (
    SELECT source, record_id FROM kept WHERE variant = $current
), sizes AS (
    SELECT variant, count(*) AS records_kept, CAST(sum(n_tokens) AS BIGINT) AS tokens_kept FROM kept GROUP BY variant
), overlap AS (
    SELECT k.variant, count(*) AS both_kept FROM kept k JOIN current_sel c USING (source, record_id) GROUP BY k.variant
), heldout AS (
    SELECT t.source, t.record_id, t.overall FROM teacher_labels t
    JOIN aggregated_scores a USING (source, record_id)
    WHERE t.split = 'heldout' AND t.overall IS NOT NULL
), judged AS (
    SELECT v.variant, h.overall, k.record_id IS NOT NULL AS is_kept
    FROM heldout h JOIN sizes v ON true
    LEFT JOIN kept k ON k.variant = v.variant AND k.source = h.source AND k.record_id = h.record_id
), teacher AS (
    SELECT variant, count(*) FILTER (WHERE is_kept) AS heldout_kept,
        avg(overall) FILTER (WHERE is_kept) AS kept_mean, avg(overall) FILTER (WHERE NOT is_kept) AS dropped_mean
    FROM judged GROUP BY variant
)
SELECT s.variant, s.records_kept, s.tokens_kept,
    round(s.tokens_kept / (SELECT sum(n_tokens) FROM aggregated_scores), 4) AS kept_token_share,
    round(coalesce(o.both_kept, 0) / nullif(s.records_kept + (SELECT count(*) FROM current_sel)
        - coalesce(o.both_kept, 0), 0), 4) AS jaccard_vs_current,
    coalesce(t.heldout_kept, 0) AS heldout_kept,
    round(t.kept_mean, 2) AS teacher_overall_kept,
    round(t.dropped_mean, 2) AS teacher_overall_dropped
FROM sizes s LEFT JOIN overlap o USING (variant) LEFT JOIN teacher t USING (variant)
ORDER BY s.variant
