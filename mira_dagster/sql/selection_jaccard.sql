-- selection_jaccard: the Jaccard overlap of every pair of selections' kept record sets over the whole corpus.
-- The kept sets at the budget $share: sql/macro_compared_selections.sql.
WITH kept AS (
    -- the selections compared at the budget $share (sql/macro_compared_selections.sql)
    SELECT * FROM compared_selections('scope_selections', 'selected_random', $share)
), sizes AS (
    SELECT variant, count(*) AS n FROM kept GROUP BY variant
), pairs AS (
    SELECT a.variant AS a, b.variant AS b FROM sizes a JOIN sizes b ON a.variant < b.variant
), both_kept AS (
    SELECT x.variant AS a, y.variant AS b, count(*) AS n
    FROM kept x JOIN kept y ON x.source = y.source AND x.record_id = y.record_id AND x.variant < y.variant
    GROUP BY ALL
)
SELECT p.a, p.b,
    round(coalesce(k.n, 0) / nullif(sa.n + sb.n - coalesce(k.n, 0), 0), 4) AS jaccard
FROM pairs p
JOIN sizes sa ON sa.variant = p.a JOIN sizes sb ON sb.variant = p.b
LEFT JOIN both_kept k USING (a, b)
ORDER BY p.a, p.b
