-- dim_reliability: teacher–student agreement per (source × dimension) on the held-out split:
-- n pairs, MAE, and Spearman's rho (Pearson correlation of average ranks, ties averaged, which is
-- exactly scipy.stats.spearmanr). The same statistics pooled over the group's sources are carried
-- alongside (group_*), as the fallback for cells with too few pairs.
-- Inputs: heldout_pairs (sql/heldout_pairs.sql), student_scores, dims (group_id, slot, dim_name).
-- Bootstrap intervals are added in Python (core/reliability.py).
WITH pairs AS (
    SELECT * FROM heldout_pairs
), ranked AS (
    SELECT *,
        rank() OVER (PARTITION BY source, slot ORDER BY teacher)
            + (count(*) OVER (PARTITION BY source, slot, teacher) - 1) / 2.0 AS rt,
        rank() OVER (PARTITION BY source, slot ORDER BY student)
            + (count(*) OVER (PARTITION BY source, slot, student) - 1) / 2.0 AS rs,
        rank() OVER (PARTITION BY group_id, slot ORDER BY teacher)
            + (count(*) OVER (PARTITION BY group_id, slot, teacher) - 1) / 2.0 AS grt,
        rank() OVER (PARTITION BY group_id, slot ORDER BY student)
            + (count(*) OVER (PARTITION BY group_id, slot, student) - 1) / 2.0 AS grs
    FROM pairs
), cell AS (
    SELECT source, group_id, slot, count(*) AS n, avg(abs(teacher - student)) AS mae,
        CASE WHEN var_pop(rt) > 0 AND var_pop(rs) > 0 THEN corr(rt, rs) END AS rho
    FROM ranked GROUP BY source, group_id, slot
), grp AS (
    SELECT group_id, slot, count(*) AS group_n, avg(abs(teacher - student)) AS group_mae,
        CASE WHEN var_pop(grt) > 0 AND var_pop(grs) > 0 THEN corr(grt, grs) END AS group_rho
    FROM ranked GROUP BY group_id, slot
), cells AS (
    SELECT DISTINCT s.source, s.group_id, d.slot, d.dim_name
    FROM student_scores s JOIN dims d USING (group_id)
)
SELECT c.source, c.group_id, c.slot, c.dim_name,
    coalesce(cell.n, 0) AS n, cell.mae, cell.rho,
    coalesce(grp.group_n, 0) AS group_n, grp.group_mae, grp.group_rho
FROM cells c
LEFT JOIN cell USING (source, group_id, slot)
LEFT JOIN grp USING (group_id, slot)
ORDER BY c.group_id, c.source, c.slot
