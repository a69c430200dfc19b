-- select_variant: the records one selection variant keeps, all variants at the same token budget.
--   global: one normalisation, one threshold over all sources    (unit = all, score = aggregate_global)
--   group:  per-group normalisation and threshold                 (unit = group, score = aggregate_group)
--   source: per-source normalisation and threshold                (unit = source, score = aggregate_source)
--   random: a seeded random order over all records                (unit = all)
-- Each unit's budget is $share of its tokens (every record counts, scored or not), so every variant keeps the
-- same share overall. Within a unit, records are taken best first; each source first keeps its best records up
-- to $min_share of its tokens, and no source goes past $max_share. The cut is placed where the unit's kept
-- tokens come closest to its budget (a record that crosses it is kept only if that lands nearer).
WITH base AS (
    SELECT source, group_id, record_id, n_tokens, mask_version,
        CASE $variant WHEN 'group' THEN group_id WHEN 'source' THEN source ELSE '*' END AS unit,
        CASE $variant
            WHEN 'global' THEN aggregate_global
            WHEN 'group' THEN aggregate_group
            WHEN 'source' THEN aggregate_source
            ELSE CAST(hash(record_id || '/' || CAST($seed AS VARCHAR)) % 1000000007 AS DOUBLE)
        END AS score
    FROM aggregated_scores
), src AS (
    SELECT source, sum(n_tokens) AS source_tokens FROM base GROUP BY source
), unit AS (
    SELECT unit, sum(n_tokens) AS unit_tokens, $share * sum(n_tokens) AS budget_tokens FROM base GROUP BY unit
), source_cum AS (
    -- running tokens per source, best first: only needed for a floor or a cap (otherwise empty, and free)
    SELECT source, record_id,
        sum(n_tokens) OVER (PARTITION BY source ORDER BY score DESC, record_id
                            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS source_cum
    FROM base WHERE score IS NOT NULL AND ($min_share > 0 OR $max_share < 1)
), ranked AS (
    SELECT b.*, s.source_tokens, u.unit_tokens, u.budget_tokens, c.source_cum
    FROM base b JOIN src s USING (source) JOIN unit u USING (unit) LEFT JOIN source_cum c USING (source, record_id)
    WHERE b.score IS NOT NULL
), flagged AS MATERIALIZED (
    SELECT *,
        coalesce($min_share > 0 AND (source_cum <= $min_share * source_tokens
            OR (source_cum - n_tokens < $min_share * source_tokens
                AND source_cum - $min_share * source_tokens < $min_share * source_tokens - (source_cum - n_tokens))),
            false) AS reserved,
        coalesce(source_cum <= $max_share * source_tokens, true) AS allowed
    FROM ranked
), reserve AS (
    SELECT unit, coalesce(sum(n_tokens) FILTER (WHERE reserved), 0) AS reserved_tokens FROM flagged GROUP BY unit
), pool AS (
    SELECT f.*, r.reserved_tokens + sum(f.n_tokens) OVER (
            PARTITION BY f.unit ORDER BY f.score DESC, f.record_id
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS unit_cum
    FROM flagged f JOIN reserve r USING (unit)
    WHERE NOT f.reserved AND f.allowed
)
SELECT $variant AS variant, unit, source, group_id, record_id, score, n_tokens, budget_tokens, mask_version,
    true AS reserved
FROM flagged WHERE reserved
UNION ALL
SELECT $variant AS variant, unit, source, group_id, record_id, score, n_tokens, budget_tokens, mask_version,
    false AS reserved
FROM pool
WHERE unit_cum <= budget_tokens
   OR (unit_cum - n_tokens < budget_tokens AND unit_cum - budget_tokens < budget_tokens - (unit_cum - n_tokens))
ORDER BY source, score DESC, record_id
