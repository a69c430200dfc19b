-- distill_labels: a scorer unit's teacher labels that train its student ($sources; split distill, status ok), ids
-- and scorer_version only (no text), in teacher_labels' stored order: the distillation file's line order
-- (io/sft.py). Capped by teacher_sample_max per source, not by the corpus.
SELECT record_id, source, scorer_version
FROM teacher_labels
WHERE list_contains($sources, source) AND split = 'distill' AND status = 'ok'
