-- aggregated_scores: per record, the mean of its unmasked dimension scores after z-normalising each
-- dimension, at three scopes: over all sources (aggregate_global), within the record's group
-- (aggregate_group) and within its source (aggregate_source), so that a lenient dimension does not dominate.
-- Equal weights over the dimensions the record has a score for; `aggregate`, the one selection ranks by, is the
-- one of $normalise (pipeline.normalise_within: global | group | source). Records without any usable score get
-- NULL aggregates.
-- How: the statistics come from per-(source, slot) sums pooled per scope. Per source and scope, slot i gets a
-- weight w_i = 1/sd_i and an offset c_i = mu_i/sd_i (both 0 for a masked slot or one with sd = 0), so that
--   aggregate = (sum_i s_i * w_i - sum_i present_i * c_i) / (number of present unmasked slots)
-- is three dot products per record over one-element-per-slot lists: no per-element lambda, no unpivot.
-- Cross-source duplicates: record_id hashes the normalised content, so the same content in two sources has one
-- id. Such a record is ONE record here (and so in every budget, selection and the export), owned by the source
-- whose name sorts first (byte order, as Python's sorted()) among the sources with a student_scores row for it;
-- the other sources' copies are left out of the statistics and of this table. sql/source_overlap.sql reports
-- the overlap per source pair, run_summary.duplicates_elsewhere the copies a source does not own.
WITH scores AS NOT MATERIALIZED (
    -- the registry's sources only ($sources): a source with data in the store but not in the registry is refused
    -- before this runs, or left out here (pipeline.unregistered_sources: drop)
    SELECT * FROM student_scores WHERE list_contains($sources, source)
), maybe AS MATERIALIZED (
    -- hashes seen more than once: grouping 64-bit hashes is cheaper than grouping the id strings, and every
    -- duplicated id is among them (with the rare hash collision, which the next step drops)
    SELECT hash(record_id) AS h FROM scores GROUP BY h HAVING count(*) > 1
), shared AS MATERIALIZED (
    -- the records in more than one source, with their owner (a small table: duplicates are rare)
    SELECT record_id, min(source) AS owner FROM scores WHERE hash(record_id) IN (SELECT h FROM maybe)
    GROUP BY record_id HAVING count(*) > 1
), owned AS NOT MATERIALIZED (
    -- read twice (sums, then terms) rather than copied: a second Parquet scan costs less than a copy of the corpus
    SELECT s.* FROM scores s LEFT JOIN shared d USING (record_id)
    WHERE d.owner IS NULL OR s.source = d.owner
), sums AS (
    -- per source and slot: count, sum, sum of squares
    SELECT source, group_id,
        count(COLUMNS('^(a[0-9]+)$')) AS 'n_\1', sum(COLUMNS('^(a[0-9]+)$')) AS 's1_\1',
        sum(COLUMNS('^(a[0-9]+)$') ** 2) AS 's2_\1'
    FROM owned GROUP BY source, group_id
), per_source AS (
    -- masked cells keep their row (the per-slot lists below need every slot) but contribute nothing; a slot
    -- the mask has no row for (a group with fewer dimensions) counts as masked
    SELECT u.source, u.group_id, u.slot, coalesce(m.masked, true) AS masked,
        CASE WHEN coalesce(m.masked, true) THEN 0 ELSE u.n END AS n,
        CASE WHEN coalesce(m.masked, true) THEN NULL ELSE u.s1 END AS s1,
        CASE WHEN coalesce(m.masked, true) THEN NULL ELSE u.s2 END AS s2
    FROM (
        SELECT source, group_id, unnest(range(1, 1 + len(list_value(*COLUMNS('^n_a'))))) AS slot,
            unnest(list_value(*COLUMNS('^n_a'))) AS n,
            unnest(list_value(*COLUMNS('^s1_a'))) AS s1, unnest(list_value(*COLUMNS('^s2_a'))) AS s2
        FROM sums
    ) u LEFT JOIN reliability_mask m ON m.source = u.source AND m.slot = u.slot
), pooled AS (
    SELECT source, slot, masked,
        sum(s1) OVER (PARTITION BY slot) AS s1_all, sum(s2) OVER (PARTITION BY slot) AS s2_all,
        sum(n) OVER (PARTITION BY slot) AS n_all,
        sum(s1) OVER (PARTITION BY group_id, slot) AS s1_grp, sum(s2) OVER (PARTITION BY group_id, slot) AS s2_grp,
        sum(n) OVER (PARTITION BY group_id, slot) AS n_grp,
        s1 AS s1_src, s2 AS s2_src, n AS n_src
    FROM per_source
), moments AS (
    SELECT source, slot, masked,
        s1_all / n_all AS mu_all, sqrt(greatest(s2_all / n_all - (s1_all / n_all) ** 2, 0)) AS sd_all,
        s1_grp / n_grp AS mu_grp, sqrt(greatest(s2_grp / n_grp - (s1_grp / n_grp) ** 2, 0)) AS sd_grp,
        s1_src / n_src AS mu_src, sqrt(greatest(s2_src / n_src - (s1_src / n_src) ** 2, 0)) AS sd_src
    FROM pooled
), weights AS (
    SELECT source,
        list(CASE WHEN masked THEN 0.0 ELSE 1.0 END ORDER BY slot) AS used,
        list(CASE WHEN NOT masked AND sd_all > 0 THEN 1 / sd_all ELSE 0.0 END ORDER BY slot) AS w_all,
        list(CASE WHEN NOT masked AND sd_all > 0 THEN mu_all / sd_all ELSE 0.0 END ORDER BY slot) AS c_all,
        list(CASE WHEN NOT masked AND sd_grp > 0 THEN 1 / sd_grp ELSE 0.0 END ORDER BY slot) AS w_grp,
        list(CASE WHEN NOT masked AND sd_grp > 0 THEN mu_grp / sd_grp ELSE 0.0 END ORDER BY slot) AS c_grp,
        list(CASE WHEN NOT masked AND sd_src > 0 THEN 1 / sd_src ELSE 0.0 END ORDER BY slot) AS w_src,
        list(CASE WHEN NOT masked AND sd_src > 0 THEN mu_src / sd_src ELSE 0.0 END ORDER BY slot) AS c_src
    FROM moments GROUP BY source
), present AS (
    -- scores with missing ones as 0, and which are present
    SELECT source, group_id, record_id, n_tokens, status,
        coalesce(COLUMNS('^(a[0-9]+)$'), 0.0) AS 's_\1', CAST(COLUMNS('^(a[0-9]+)$') IS NOT NULL AS DOUBLE) AS 'p_\1'
    FROM owned
), lists AS (
    SELECT source, group_id, record_id, n_tokens, status,
        list_value(*COLUMNS('^s_a[0-9]+$')) AS s, list_value(*COLUMNS('^p_a[0-9]+$')) AS p
    FROM present
), terms AS (
    SELECT l.source, group_id, record_id, n_tokens, status,
        list_dot_product(p, used) AS k,
        list_dot_product(s, w_all) - list_dot_product(p, c_all) AS t_all,
        list_dot_product(s, w_grp) - list_dot_product(p, c_grp) AS t_grp,
        list_dot_product(s, w_src) - list_dot_product(p, c_src) AS t_src
    FROM lists l JOIN weights w USING (source)
)
SELECT source, group_id, record_id, n_tokens, status,
    CASE $normalise WHEN 'global' THEN t_all WHEN 'source' THEN t_src ELSE t_grp END / nullif(k, 0) AS aggregate,
    t_all / nullif(k, 0) AS aggregate_global,
    t_grp / nullif(k, 0) AS aggregate_group, t_src / nullif(k, 0) AS aggregate_source,
    CAST(k AS INTEGER) AS n_dims_used,
    (SELECT any_value(mask_version) FROM reliability_mask) AS mask_version
FROM terms
