-- selection_jaccard: the Jaccard overlap of every pair of selections' kept record sets over the whole corpus.
-- The kept sets at the budget $share, as in sql/selection_report.sql.
WITH kept AS (
    -- the selections compared, at the budget $share: every scope's last selection made at it, and random
    SELECT variant, source, record_id, n_tokens FROM scope_selections WHERE abs(budget_share - $share) < 1e-9
    UNION ALL
    SELECT variant, source, record_id, n_tokens FROM selected_random
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
