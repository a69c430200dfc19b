-- budget_cut(rows): where a token budget cuts each part's records when they are taken best first
-- (score DESC, then record_id). Loaded into every connection (Store.connect loads sql/macro_*.sql).
-- Input (a table or CTE named by a string): part, score, record_id, n_tokens, budget, closest.
--   closest = false: keep while the running tokens stay <= budget (a cap).
--   closest = true:  also keep the record that crosses the budget when that lands nearer to it.
-- Output: per part that keeps anything, the last record kept (cut_score, cut_id); a record is kept when
-- (score, record_id) comes no later than that in best-first order.
-- No sort of the whole table: scores are counted into 16,384 equal-width buckets per part, the running
-- tokens over buckets find the bucket where the budget is crossed, and only the records of that bucket
-- (and of the next non-empty one above it) are sorted. Bucketing is monotone in score, so the result is
-- exactly that of a running sum over all records.
CREATE OR REPLACE TEMP MACRO budget_cut(rows_table) AS TABLE
WITH r AS (
    SELECT part, score, record_id, n_tokens, budget, closest FROM query_table(rows_table)
), span AS (
    SELECT part, min(score) AS lo, max(score) AS hi FROM r GROUP BY part
), bucketed AS MATERIALIZED (
    SELECT r.*, CASE WHEN hi > lo THEN CAST(floor((score - lo) / (hi - lo) * 16383) AS INTEGER) ELSE 0 END AS k
    FROM r JOIN span USING (part)
), hist AS (
    SELECT part, k, any_value(budget) AS budget, sum(n_tokens) AS tokens FROM bucketed GROUP BY part, k
), ends AS MATERIALIZED (
    -- running tokens at the end of each bucket, best bucket first
    SELECT *, sum(tokens) OVER (PARTITION BY part ORDER BY k DESC ROWS UNBOUNDED PRECEDING) AS end_cum FROM hist
), bounds AS (
    -- kb: the bucket where the running total passes the budget (NULL when everything fits);
    -- kn: the lowest bucket above it, which is kept whole
    SELECT part, max(k) FILTER (WHERE end_cum > budget) AS kb FROM ends GROUP BY part
), edges AS (
    SELECT part, kb, min(k) FILTER (WHERE k > coalesce(kb, -1)) AS kn FROM ends JOIN bounds USING (part) GROUP BY part, kb
), near AS (
    SELECT x.*, e.end_cum - e.tokens AS above
    FROM bucketed x JOIN edges b USING (part) JOIN ends e USING (part, k)
    WHERE x.k = b.kb OR x.k = b.kn
), running AS (
    SELECT *, above + sum(n_tokens) OVER (PARTITION BY part, k ORDER BY score DESC, record_id
                                          ROWS UNBOUNDED PRECEDING) AS cum
    FROM near
)
SELECT part, first(score ORDER BY score, record_id DESC) AS cut_score,
    first(record_id ORDER BY score, record_id DESC) AS cut_id
FROM running
WHERE cum <= budget OR (closest AND cum - n_tokens < budget AND cum - budget < budget - (cum - n_tokens))
GROUP BY part
