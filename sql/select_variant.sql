-- select_variant: the records a selection keeps under per-source retention (the cards' rule), at the token budget.
--   $variant = 'scores': each source keeps its best records by `aggregate` (sql/aggregated_scores.sql)
--   $variant = 'random': each source keeps a seeded random order's first records (the baseline)
-- $label names the selection in its rows (e.g. MIRA-group, random). Each source's budget is $share of its tokens
-- (every record counts, scored or not), so every selection keeps the same share of each source. Records are taken
-- best first (score DESC, record_id); each source first keeps its best records up to $min_share of its tokens, and
-- no source goes past $max_share. The cut is placed where the source's kept tokens come closest to its budget (a
-- record that crosses it is kept only if that lands nearer). The cuts come from budget_cut
-- (sql/macro_budget_cut.sql).
-- aggregated_scores has one row per record: content found in several sources (one record_id) is the row of the
-- source whose name sorts first (sql/aggregated_scores.sql), so it counts once in every budget and is selected,
-- and exported, at most once, under that source.
WITH base AS (
    SELECT source, group_id, record_id, n_tokens, mask_version,
        source AS unit,
        CASE $variant
            WHEN 'random' THEN CAST(hash(record_id || '/' || CAST($seed AS VARCHAR)) % 1000000007 AS DOUBLE)
            ELSE aggregate
        END AS score
    FROM aggregated_scores
), src AS (
    SELECT source, sum(n_tokens) AS source_tokens FROM base GROUP BY source
), unit AS (
    SELECT unit, $share * sum(n_tokens) AS budget_tokens FROM base GROUP BY unit
), scored AS MATERIALIZED (
    SELECT b.*, s.source_tokens, u.budget_tokens
    FROM base b JOIN src s USING (source) JOIN unit u USING (unit)
    WHERE b.score IS NOT NULL
), floor_rows AS (
    -- only built for a floor or a cap (otherwise empty, and free)
    SELECT source AS part, score, record_id, n_tokens, $min_share * source_tokens AS budget, true AS closest
    FROM scored WHERE $min_share > 0
), cap_rows AS (
    SELECT source AS part, score, record_id, n_tokens, $max_share * source_tokens AS budget, false AS closest
    FROM scored WHERE $max_share < 1
), floor_cut AS (
    SELECT * FROM budget_cut('floor_rows')
), cap_cut AS (
    SELECT * FROM budget_cut('cap_rows')
), flagged AS MATERIALIZED (
    SELECT s.*,
        coalesce(s.score > f.cut_score OR (s.score = f.cut_score AND s.record_id <= f.cut_id), false) AS reserved,
        $max_share >= 1
            OR coalesce(s.score > c.cut_score OR (s.score = c.cut_score AND s.record_id <= c.cut_id), false) AS allowed
    FROM scored s LEFT JOIN floor_cut f ON f.part = s.source LEFT JOIN cap_cut c ON c.part = s.source
), reserve AS (
    SELECT unit, coalesce(sum(n_tokens) FILTER (WHERE reserved), 0) AS reserved_tokens FROM flagged GROUP BY unit
), pool_rows AS (
    -- what the floors left of each unit's budget, filled best first from the records within their caps
    SELECT f.unit AS part, f.score, f.record_id, f.n_tokens, f.budget_tokens - r.reserved_tokens AS budget,
        true AS closest
    FROM flagged f JOIN reserve r USING (unit)
    WHERE NOT f.reserved AND f.allowed
), pool_cut AS (
    SELECT * FROM budget_cut('pool_rows')
)
SELECT $label AS variant, unit, source, group_id, record_id, score, n_tokens, budget_tokens, mask_version,
    reserved
FROM flagged f LEFT JOIN pool_cut p ON p.part = f.unit
WHERE reserved
   OR (allowed AND (score > p.cut_score OR (score = p.cut_score AND record_id <= p.cut_id)))
ORDER BY source, score DESC, record_id
