-- dim_reliability: teacher–student agreement per (source × dimension) on the held-out split:
-- n pairs, MAE, and Spearman's rho (Pearson correlation of average ranks, ties averaged, which is
-- exactly scipy.stats.spearmanr). The same statistics pooled over the group's sources are carried
-- alongside (group_*), as the fallback for cells with too few pairs.
-- Inputs: teacher_labels, student_scores, dims (group_id, slot, dim_name).
WITH teacher AS (
    UNPIVOT (
        SELECT source, group_id, record_id, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15
        FROM teacher_labels WHERE split = 'heldout'
    ) ON a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15 INTO NAME dim VALUE teacher
), student AS (
    UNPIVOT (
        SELECT source, record_id, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15
        FROM student_scores
    ) ON a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15 INTO NAME dim VALUE student
), pairs AS (
    SELECT t.source, t.group_id, CAST(substr(t.dim, 2) AS INTEGER) AS slot, t.teacher, s.student
    FROM teacher t JOIN student s USING (source, record_id, dim)
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
