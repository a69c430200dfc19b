-- export_original_rows: sql/export_original.sql's rows with their place (`pos`, from the temporary table
-- export_order that sql/export_original_order.sql fills with the selection's columns), unsorted: read as DuckDB scans
-- raw_records. One join, whose build side is export_order's keys: the kept records' text is only ever probed.
SELECT o.pos, r.source, r.record_id, o.score, o.mask_version, r.layout, r.origin_file, r.origin_line, r.n_tokens,
       coalesce(r.original_form, 'json') AS original_form, r.original
FROM export_order o
JOIN raw_records r USING (source, record_id)
