-- dim_reliability: teacher–student agreement per (source × dimension) on the held-out split, laid out over every
-- cell the scorers' rubrics name: n pairs, MAE and Spearman's rho with their bootstrap intervals, and the same
-- pooled over the sources that share the scorer (group_*; `pool` is the scorer unit, the group in the default
-- scorer_scope), the fallback for cells with too few pairs. A cell without a pair has n = 0 and no estimate.
-- The statistics are computed in one place, core/reliability.py (from the held-out pairs, sql/heldout_pairs.sql);
-- this query only lays them out.
-- Inputs: student_scores, dims (source, pool, slot, dim_name), source_stats (source, slot, n, mae, rho, mae_lo,
-- mae_hi, rho_lo, rho_hi), pool_stats (pool, slot, group_n, group_mae, ...).
WITH cells AS (
    -- the distinct (source, group) first, then the join: never a row per (record × dimension) of the corpus
    SELECT DISTINCT s.source, s.group_id, d.pool, d.slot, d.dim_name
    FROM (SELECT DISTINCT source, group_id FROM student_scores) s JOIN dims d USING (source)
)
SELECT c.source, c.group_id, c.pool, CAST(c.slot AS INTEGER) AS slot, c.dim_name,
    coalesce(s.n, 0) AS n, s.mae, s.rho,
    coalesce(g.group_n, 0) AS group_n, g.group_mae, g.group_rho,
    s.mae_lo, s.mae_hi, s.rho_lo, s.rho_hi,
    g.group_mae_lo, g.group_mae_hi, g.group_rho_lo, g.group_rho_hi
FROM cells c
LEFT JOIN source_stats s ON s.source = c.source AND s.slot = c.slot
LEFT JOIN pool_stats g ON g.pool = c.pool AND g.slot = c.slot
ORDER BY c.group_id, c.source, c.slot
