-- dim_reliability: teacher–student agreement per (source × dimension) on the held-out split:
-- n pairs, MAE, and Spearman's rho (Pearson correlation of average ranks, ties averaged, which is
-- exactly scipy.stats.spearmanr). The same statistics pooled over the sources that share the scorer (`pool`: the
-- scorer unit, which is the group in the default scorer_scope) are carried alongside (group_*), as the fallback
-- for cells with too few pairs.
-- Inputs: heldout_pairs (sql/heldout_pairs.sql), student_scores, dims (source, pool, slot, dim_name).
-- Bootstrap intervals are added in Python (core/reliability.py).
WITH pairs AS (
    SELECT p.*, u.pool FROM heldout_pairs p JOIN (SELECT DISTINCT source, pool FROM dims) u USING (source)
), values_ AS (
    -- average rank of each distinct value within a cell: (values below it) + (its count + 1) / 2.
    -- Scores take few distinct values, so ranking these counts is far cheaper than ranking every pair.
    SELECT 'source' AS scope, source AS unit, slot, 't' AS side, teacher AS v, count(*) AS c FROM pairs GROUP BY ALL
    UNION ALL SELECT 'source', source, slot, 's', student, count(*) FROM pairs GROUP BY ALL
    UNION ALL SELECT 'group', pool, slot, 't', teacher, count(*) FROM pairs GROUP BY ALL
    UNION ALL SELECT 'group', pool, slot, 's', student, count(*) FROM pairs GROUP BY ALL
), value_ranks AS (
    SELECT scope, unit, slot, side, v,
        sum(c) OVER (PARTITION BY scope, unit, slot, side ORDER BY v ROWS UNBOUNDED PRECEDING) - c + (c + 1) / 2.0 AS r
    FROM values_
), ranked AS (
    SELECT p.*, rt.r AS rt, rs.r AS rs, grt.r AS grt, grs.r AS grs
    FROM pairs p
    JOIN value_ranks rt ON rt.scope = 'source' AND rt.side = 't' AND rt.unit = p.source AND rt.slot = p.slot AND rt.v = p.teacher
    JOIN value_ranks rs ON rs.scope = 'source' AND rs.side = 's' AND rs.unit = p.source AND rs.slot = p.slot AND rs.v = p.student
    JOIN value_ranks grt ON grt.scope = 'group' AND grt.side = 't' AND grt.unit = p.pool AND grt.slot = p.slot
        AND grt.v = p.teacher
    JOIN value_ranks grs ON grs.scope = 'group' AND grs.side = 's' AND grs.unit = p.pool AND grs.slot = p.slot
        AND grs.v = p.student
), cell AS (
    SELECT source, group_id, slot, count(*) AS n, avg(abs(teacher - student)) AS mae,
        CASE WHEN var_pop(rt) > 0 AND var_pop(rs) > 0 THEN corr(rt, rs) END AS rho
    FROM ranked GROUP BY source, group_id, slot
), grp AS (
    SELECT pool, slot, count(*) AS group_n, avg(abs(teacher - student)) AS group_mae,
        CASE WHEN var_pop(grt) > 0 AND var_pop(grs) > 0 THEN corr(grt, grs) END AS group_rho
    FROM ranked GROUP BY pool, slot
), cells AS (
    -- the distinct (source, group) first, then the join: never a row per (record × dimension) of the corpus
    SELECT DISTINCT s.source, s.group_id, d.pool, d.slot, d.dim_name
    FROM (SELECT DISTINCT source, group_id FROM student_scores) s JOIN dims d USING (source)
)
SELECT c.source, c.group_id, c.pool, c.slot, c.dim_name,
    coalesce(cell.n, 0) AS n, cell.mae, cell.rho,
    coalesce(grp.group_n, 0) AS group_n, grp.group_mae, grp.group_rho
FROM cells c
LEFT JOIN cell USING (source, group_id, slot)
LEFT JOIN grp USING (pool, slot)
ORDER BY c.group_id, c.source, c.slot
