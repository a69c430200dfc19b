-- aggregated_scores: per record, the mean of its unmasked dimension scores after z-normalising each
-- dimension, at three scopes: over all sources (aggregate_global), within the record's group
-- (aggregate_group) and within its source (aggregate_source), so that a lenient dimension does not dominate.
-- Equal weights over the dimensions the record has a score for. `aggregate` is the group-level one.
-- Records without any usable score get NULL aggregates.
WITH long AS (
    UNPIVOT (
        SELECT source, group_id, record_id, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15
        FROM student_scores
    ) ON a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15 INTO NAME dim VALUE score
), scores AS (
    SELECT l.source, l.group_id, l.record_id, CAST(substr(l.dim, 2) AS INTEGER) AS slot, l.score
    FROM long l JOIN reliability_mask m ON m.source = l.source AND m.slot = CAST(substr(l.dim, 2) AS INTEGER)
    WHERE NOT m.masked
), z AS (
    SELECT source, record_id,
        (score - avg(score) OVER (PARTITION BY slot)) / nullif(stddev_pop(score) OVER (PARTITION BY slot), 0) AS zg,
        (score - avg(score) OVER (PARTITION BY group_id, slot))
            / nullif(stddev_pop(score) OVER (PARTITION BY group_id, slot), 0) AS zr,
        (score - avg(score) OVER (PARTITION BY source, slot))
            / nullif(stddev_pop(score) OVER (PARTITION BY source, slot), 0) AS zs
    FROM scores
), agg AS (
    SELECT source, record_id,
        avg(coalesce(zg, 0)) AS aggregate_global,
        avg(coalesce(zr, 0)) AS aggregate_group,
        avg(coalesce(zs, 0)) AS aggregate_source,
        count(*) AS n_dims_used
    FROM z GROUP BY source, record_id
)
SELECT st.source, st.group_id, st.record_id, st.n_tokens, st.status,
    agg.aggregate_group AS aggregate, agg.aggregate_global, agg.aggregate_group, agg.aggregate_source,
    coalesce(agg.n_dims_used, 0) AS n_dims_used,
    (SELECT any_value(mask_version) FROM reliability_mask) AS mask_version
FROM student_scores st
LEFT JOIN agg USING (source, record_id)
ORDER BY st.source, agg.aggregate_group DESC NULLS LAST, st.record_id
