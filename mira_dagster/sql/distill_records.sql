-- distill_records: the text of each labelled record (`wanted`: record_id, source, _pos, registered by io/sft.py),
-- one row per label in the labels' order (_pos), read from raw_records by DuckDB: the text of those records only
-- streams to Python, a batch at a time. A source never holds a record twice, so the join keeps one row per label.
SELECT r.record_id, r.source, r.group_id, r.format, r.layout, r.question, r.thinking, r.answer, r.task,
       r.trajectory, r.outcome, r.n_tokens, r.origin_file, r.origin_line
FROM wanted w JOIN raw_records r USING (source, record_id)
ORDER BY w._pos
