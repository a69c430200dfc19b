-- aggregated_scores: per record, the mean of its unmasked dimension scores after z-normalising each
-- dimension, at three scopes: over all sources (aggregate_global), within the record's group
-- (aggregate_group) and within its source (aggregate_source), so that a lenient dimension does not dominate.
-- Equal weights over the dimensions the record has a score for; `aggregate` is the group-level one. Records
-- without any usable score get NULL aggregates. Scores stay one 15-element list per record (no 15x unpivot of
-- the corpus); the statistics come from per-(source, slot) sums, pooled per scope.
WITH mask AS (
    SELECT source, list(masked ORDER BY slot) AS m FROM reliability_mask GROUP BY source
), wide AS (
    SELECT source, group_id, record_id, n_tokens, status, list_value(*COLUMNS('^a[0-9]+$')) AS s FROM student_scores
), kept AS (
    -- the unmasked scores; masked (and missing) ones are NULL
    SELECT w.* EXCLUDE (s), list_transform(range(1, 16), lambda i: CASE WHEN mask.m[i] THEN NULL ELSE w.s[i] END) AS v
    FROM wide w JOIN mask USING (source)
), sums AS (
    -- per source and slot: count, sum, sum of squares (a masked cell is emptied whole below)
    SELECT source, group_id,
        count(COLUMNS('^(a[0-9]+)$')) AS 'n_\1', sum(COLUMNS('^(a[0-9]+)$')) AS 's1_\1',
        sum(COLUMNS('^(a[0-9]+)$') ** 2) AS 's2_\1'
    FROM student_scores GROUP BY source, group_id
), per_source AS (
    -- masked cells keep their row (the per-slot lists below need all 15) but contribute nothing
    SELECT u.source, u.group_id, u.slot,
        CASE WHEN m.masked THEN 0 ELSE u.n END AS n,
        CASE WHEN m.masked THEN NULL ELSE u.s1 END AS s1,
        CASE WHEN m.masked THEN NULL ELSE u.s2 END AS s2
    FROM (
        SELECT source, group_id, unnest(range(1, 16)) AS slot, unnest(list_value(*COLUMNS('^n_a'))) AS n,
            unnest(list_value(*COLUMNS('^s1_a'))) AS s1, unnest(list_value(*COLUMNS('^s2_a'))) AS s2
        FROM sums
    ) u JOIN reliability_mask m ON m.source = u.source AND m.slot = u.slot
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
