-- export_original: the kept records as their producers wrote them (raw_records.original), with the selection
-- columns, per source and form (json / row) best first: the original-form export's shard order (io/export.py).
-- selected_subset holds owner copies only and a source never holds a record twice: each kept record once.
SELECT r.source, r.record_id, s.score, s.mask_version, r.layout, r.origin_file, r.origin_line, r.n_tokens,
       coalesce(r.original_form, 'json') AS original_form, r.original
FROM selected_subset s JOIN raw_records r USING (source, record_id)
ORDER BY r.source, original_form, s.score DESC, r.record_id
