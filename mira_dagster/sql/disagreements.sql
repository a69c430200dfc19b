-- disagreements: the held-out records where teacher and student disagree most, per (source × dimension) and
-- overall (mean absolute difference over the record's dimensions): the queue for the next round of teacher
-- labelling. $k rows per source and dimension, and $k per source overall.
WITH pairs AS (
    SELECT p.*, abs(p.teacher - p.student) AS gap FROM heldout_pairs p
), per_dim AS (
    SELECT source, group_id, record_id, slot, teacher, student, gap,
        row_number() OVER (PARTITION BY source, slot ORDER BY gap DESC, record_id) AS pos
    FROM pairs
), overall AS (
    SELECT source, group_id, record_id, NULL::INTEGER AS slot, avg(teacher) AS teacher, avg(student) AS student,
        avg(gap) AS gap
    FROM pairs GROUP BY source, group_id, record_id
), overall_ranked AS (
    SELECT *, row_number() OVER (PARTITION BY source ORDER BY gap DESC, record_id) AS pos FROM overall
)
SELECT 'dimension' AS kind, source, group_id, record_id, slot, teacher, student, gap, pos
FROM per_dim WHERE pos <= $k AND gap > 0
UNION ALL
SELECT 'overall', source, group_id, record_id, slot, teacher, student, gap, pos
FROM overall_ranked WHERE pos <= $k AND gap > 0
ORDER BY source, kind, slot NULLS FIRST, pos
