-- heldout_pairs: one row per (source, record, slot) where the held-out teacher label and the student score
-- both exist. The input of dim_reliability and of its bootstrap intervals.
WITH teacher AS (
    UNPIVOT (
        SELECT source, group_id, record_id, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15
        FROM teacher_labels WHERE split = 'heldout'
    ) ON a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15 INTO NAME dim VALUE teacher
), student AS (
    -- only the held-out records' rows are unpivoted, not the whole corpus
    UNPIVOT (
        SELECT source, record_id, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15
        FROM student_scores
        WHERE (source, record_id) IN (SELECT (source, record_id) FROM teacher_labels WHERE split = 'heldout')
    ) ON a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15 INTO NAME dim VALUE student
)
SELECT t.source, t.group_id, t.record_id, CAST(substr(t.dim, 2) AS INTEGER) AS slot, t.teacher, s.student
FROM teacher t JOIN student s USING (source, record_id, dim)
