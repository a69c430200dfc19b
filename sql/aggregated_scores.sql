-- aggregated_scores: per record, the mean of its unmasked dimension scores after z-normalising each
-- dimension within its group (so a lenient dimension does not dominate). Equal weights over the
-- dimensions the record has a score for. Records without any usable score get a NULL aggregate.
WITH long AS (
    UNPIVOT (
        SELECT source, group_id, record_id, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15
        FROM student_scores
    ) ON a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15 INTO NAME dim VALUE score
), scores AS (
    SELECT source, group_id, record_id, CAST(substr(dim, 2) AS INTEGER) AS slot, score FROM long
), norm AS (
    SELECT group_id, slot, avg(score) AS mu, stddev_pop(score) AS sd FROM scores GROUP BY group_id, slot
), z AS (
    SELECT s.source, s.record_id,
        CASE WHEN n.sd > 0 THEN (s.score - n.mu) / n.sd ELSE 0 END AS z
    FROM scores s
    JOIN norm n USING (group_id, slot)
    JOIN reliability_mask m USING (source, slot)
    WHERE NOT m.masked
), agg AS (
    SELECT source, record_id, avg(z) AS aggregate, count(*) AS n_dims_used FROM z GROUP BY source, record_id
)
SELECT st.source, st.group_id, st.record_id, st.n_tokens, st.status,
    agg.aggregate, coalesce(agg.n_dims_used, 0) AS n_dims_used,
    (SELECT any_value(mask_version) FROM reliability_mask) AS mask_version
FROM student_scores st
LEFT JOIN agg USING (source, record_id)
ORDER BY st.source, agg.aggregate DESC NULLS LAST, st.record_id
