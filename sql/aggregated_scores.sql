-- aggregated_scores: per record, the mean of its unmasked dimension scores after z-normalising each
-- dimension, at three scopes: over all sources (aggregate_global), within the record's group
-- (aggregate_group) and within its source (aggregate_source), so that a lenient dimension does not dominate.
-- Equal weights over the dimensions the record has a score for; `aggregate` is the group-level one. Records
-- without any usable score get NULL aggregates. Scores stay one 15-element list per record (no 15x unpivot of
-- the corpus): the statistics come from per-(source, slot) sums, pooled per scope.
WITH mask AS (
    SELECT source, list(masked ORDER BY slot) AS m FROM reliability_mask GROUP BY source
), wide AS (
    SELECT source, group_id, record_id, n_tokens, status,
        [a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15] AS s
    FROM student_scores
), kept AS (
    SELECT w.* EXCLUDE (s), list_transform(range(1, 16), lambda i: CASE WHEN mask.m[i] THEN NULL ELSE w.s[i] END) AS v
    FROM wide w JOIN mask USING (source)
), per_source AS (
    SELECT source, group_id, slot, count(x) AS n, sum(x) AS s1, sum(x * x) AS s2
    FROM (SELECT source, group_id, unnest(v) AS x, unnest(range(1, 16)) AS slot FROM kept)
    GROUP BY source, group_id, slot
), scoped AS (
    SELECT p.source, p.group_id, p.slot,
        sum(p.s1) OVER (PARTITION BY p.slot) / sum(p.n) OVER (PARTITION BY p.slot) AS mu_all,
        sqrt(greatest(sum(p.s2) OVER (PARTITION BY p.slot) / sum(p.n) OVER (PARTITION BY p.slot)
            - (sum(p.s1) OVER (PARTITION BY p.slot) / sum(p.n) OVER (PARTITION BY p.slot)) ** 2, 0)) AS sd_all,
        sum(p.s1) OVER (PARTITION BY p.group_id, p.slot) / sum(p.n) OVER (PARTITION BY p.group_id, p.slot) AS mu_grp,
        sqrt(greatest(sum(p.s2) OVER (PARTITION BY p.group_id, p.slot) / sum(p.n) OVER (PARTITION BY p.group_id, p.slot)
            - (sum(p.s1) OVER (PARTITION BY p.group_id, p.slot) / sum(p.n) OVER (PARTITION BY p.group_id, p.slot)) ** 2, 0)) AS sd_grp,
        p.s1 / p.n AS mu_src,
        sqrt(greatest(p.s2 / p.n - (p.s1 / p.n) ** 2, 0)) AS sd_src
    FROM per_source p
), stats AS (
    SELECT source,
        list(mu_all ORDER BY slot) AS mu_all, list(sd_all ORDER BY slot) AS sd_all,
        list(mu_grp ORDER BY slot) AS mu_grp, list(sd_grp ORDER BY slot) AS sd_grp,
        list(mu_src ORDER BY slot) AS mu_src, list(sd_src ORDER BY slot) AS sd_src
    FROM scoped GROUP BY source
), z AS (
    SELECT k.*, 
        list_transform(range(1, 16), lambda i: CASE WHEN sd_all[i] > 0 THEN (v[i] - mu_all[i]) / sd_all[i] ELSE v[i] * 0 END) AS zg,
        list_transform(range(1, 16), lambda i: CASE WHEN sd_grp[i] > 0 THEN (v[i] - mu_grp[i]) / sd_grp[i] ELSE v[i] * 0 END) AS zr,
        list_transform(range(1, 16), lambda i: CASE WHEN sd_src[i] > 0 THEN (v[i] - mu_src[i]) / sd_src[i] ELSE v[i] * 0 END) AS zs
    FROM kept k JOIN stats USING (source)
)
SELECT source, group_id, record_id, n_tokens, status,
    list_avg(zr) AS aggregate, list_avg(zg) AS aggregate_global, list_avg(zr) AS aggregate_group,
    list_avg(zs) AS aggregate_source, list_count(v) AS n_dims_used,
    (SELECT any_value(mask_version) FROM reliability_mask) AS mask_version
FROM z
