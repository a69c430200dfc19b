-- select_variant: the records a selection keeps under per-source retention (the cards' rule), at the token budget.
--   $variant = 'scores': each source keeps its best records by `aggregate` (sql/aggregated_scores.sql)
--   $variant = 'random': each source keeps a seeded random order's first records (the baseline)
-- $label names the selection in its rows (e.g. MIRA-group, random). Each source's budget is $share of its tokens
-- (every record counts, scored or not), so every selection keeps the same share of each source. Records are taken
-- best first (score DESC, record_id); each source first keeps its best records up to $min_share of its tokens, and
-- no source goes past $max_share. The cut is placed where the source's kept tokens come closest to its budget (a
-- record that crosses it is kept only if that lands nearer).
-- How: all three limits cut the same best-first order of a source, so each is a prefix of it, found by budget_cut
-- (sql/macro_budget_cut.sql) without sorting the source: the floor's prefix (closest to $min_share), the cap's
-- (the longest within $max_share) and the budget's (closest to $share). A record is kept when it lies within the
-- floor's prefix, or within both the budget's and the cap's. (Filling the budget from the floor onwards reaches
-- the same cut: the running tokens past the floor are the running tokens from the start.)
-- aggregated_scores has one row per record: content found in several sources (one record_id) is the row of the
-- source whose name sorts first (sql/aggregated_scores.sql), so it counts once in every budget and is selected,
-- and exported, at most once, under that source. The rows are not sorted: readers order what they show.
WITH base AS NOT MATERIALIZED (
    SELECT source, group_id, record_id, n_tokens, mask_version,
        CASE $variant
            WHEN 'random' THEN CAST(hash(record_id || '/' || CAST($seed AS VARCHAR)) % 1000000007 AS DOUBLE)
            ELSE aggregate
        END AS score
    FROM aggregated_scores
), src AS (
    SELECT source, sum(n_tokens) AS source_tokens FROM base GROUP BY source
), scored AS NOT MATERIALIZED (
    SELECT b.source AS part, b.score, b.record_id, b.n_tokens, s.source_tokens
    FROM base b JOIN src s USING (source)
    WHERE b.score IS NOT NULL
), budget_rows AS (
    SELECT part, score, record_id, n_tokens, $share * source_tokens AS budget, true AS closest FROM scored
), floor_rows AS (
    -- only built for a floor or a cap (otherwise empty, and free)
    SELECT part, score, record_id, n_tokens, $min_share * source_tokens AS budget, true AS closest
    FROM scored WHERE $min_share > 0
), cap_rows AS (
    SELECT part, score, record_id, n_tokens, $max_share * source_tokens AS budget, false AS closest
    FROM scored WHERE $max_share < 1
), cuts AS (
    SELECT s.source, $share * s.source_tokens AS budget_tokens,
        b.cut_score AS b_score, b.cut_id AS b_id, f.cut_score AS f_score, f.cut_id AS f_id,
        c.cut_score AS c_score, c.cut_id AS c_id
    FROM src s
    LEFT JOIN budget_cut('budget_rows') b ON b.part = s.source
    LEFT JOIN budget_cut('floor_rows') f ON f.part = s.source
    LEFT JOIN budget_cut('cap_rows') c ON c.part = s.source
), flagged AS (
    SELECT b.*, c.budget_tokens,
        coalesce(b.score > f_score OR (b.score = f_score AND b.record_id <= f_id), false) AS reserved,
        coalesce(b.score > b_score OR (b.score = b_score AND b.record_id <= b_id), false) AS within_budget,
        $max_share >= 1 OR coalesce(b.score > c_score OR (b.score = c_score AND b.record_id <= c_id), false) AS allowed
    FROM base b JOIN cuts c USING (source)
    WHERE b.score IS NOT NULL
)
SELECT $label AS variant, source AS unit, source, group_id, record_id, score, n_tokens, budget_tokens, mask_version,
    reserved
FROM flagged
WHERE reserved OR (within_budget AND allowed)
