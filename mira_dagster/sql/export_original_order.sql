-- export_original_order: each kept record's place in the original-form export (sql/export_original.sql's order:
-- per source and form, best first) with its selection columns, no text: DuckDB sorts no text. io/export.py reads the
-- rows in any order (sql/export_original_rows.sql) and puts each one back in its place, a batch of places at a time.
SELECT s.source, s.record_id, s.score, s.mask_version,
       row_number() OVER (ORDER BY s.source, coalesce(r.original_form, 'json'), s.score DESC, s.record_id) - 1
           AS pos
FROM selected_subset s JOIN raw_records r USING (source, record_id)
