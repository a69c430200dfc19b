-- selected_subset: per source, the best records (by aggregate, ties by record_id) up to the source's
-- retention share of its tokens. The budget counts every record of the source, scored or not; the cut
-- is a threshold on the ranking, placed where the kept tokens come closest to the budget (the record
-- that crosses the budget is kept only if that lands nearer to it than stopping before it).
WITH totals AS (
    SELECT source, sum(n_tokens) AS source_tokens FROM aggregated_scores GROUP BY source
), ranked AS (
    SELECT a.*, t.source_tokens, $share * t.source_tokens AS budget_tokens,
        row_number() OVER w AS rank,
        sum(a.n_tokens) OVER w AS cum_tokens
    FROM aggregated_scores a JOIN totals t USING (source)
    WHERE a.aggregate IS NOT NULL
    WINDOW w AS (PARTITION BY a.source ORDER BY a.aggregate DESC, a.record_id
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
SELECT source, group_id, record_id, rank, aggregate, n_tokens, cum_tokens, budget_tokens, source_tokens,
    mask_version
FROM ranked
WHERE cum_tokens <= budget_tokens
   OR (cum_tokens - n_tokens < budget_tokens
       AND cum_tokens - budget_tokens < budget_tokens - (cum_tokens - n_tokens))
ORDER BY source, rank
