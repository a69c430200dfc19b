-- heldout_pairs: one row per (source, record, slot) where the held-out teacher label and the student score
-- both exist, over every slot column (a1, a2, ...: core/tables.py SLOT_COLUMNS). The input of every reliability
-- statistic (core/reliability.py) and of sql/disagreements.sql.
WITH teacher AS (
    UNPIVOT (
        SELECT source, group_id, record_id, COLUMNS('^a[0-9]+$') FROM teacher_labels WHERE split = 'heldout'
    ) ON COLUMNS('^a[0-9]+$') INTO NAME dim VALUE teacher
), student AS (
    -- only the held-out records' rows are unpivoted, not the whole corpus
    UNPIVOT (
        SELECT source, record_id, COLUMNS('^a[0-9]+$') FROM student_scores
        WHERE (source, record_id) IN (SELECT (source, record_id) FROM teacher_labels WHERE split = 'heldout')
    ) ON COLUMNS('^a[0-9]+$') INTO NAME dim VALUE student
)
SELECT t.source, t.group_id, t.record_id, CAST(substr(t.dim, 2) AS INTEGER) AS slot, t.teacher, s.student
FROM teacher t JOIN student s USING (source, record_id, dim)
