-- export_kept: the kept records with their normalised text, per source best first (the export's shard order, the
-- "normalised" export_form). selected_subset holds owner copies only (aggregated_scores.sql) and a source never
-- holds a record twice, so the join gives each kept record once, with its owner's text and origin.
SELECT r.* EXCLUDE (original, original_form), s.score, s.mask_version
FROM selected_subset s JOIN raw_records r USING (source, record_id)
ORDER BY r.source, s.score DESC, r.record_id
