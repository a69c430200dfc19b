-- compared_selections(scopes, random, share): the one list of the selections the report compares (its variants),
-- used by sql/selection_report.sql, sql/selection_variants.sql and sql/selection_jaccard.sql: every scorer scope's
-- last selection made at the budget `share` (MIRA-global, MIRA-group, MIRA-source; table scope_selections) and
-- random (table selected_random). Loaded into every connection (Store.connect loads sql/macro_*.sql); the tables
-- are named by the caller because a macro's body is bound when it is created, before they need to exist.
-- Output: variant, source, record_id, n_tokens.
CREATE OR REPLACE TEMP MACRO compared_selections(scopes, random, share) AS TABLE
SELECT variant, source, record_id, n_tokens FROM query_table(scopes) WHERE abs(budget_share - share) < 1e-9
UNION ALL
SELECT variant, source, record_id, n_tokens FROM query_table(random)
