-- scope_selection: selected_subset as the scope's selection (table scope_selections, partition = scorer_scope), with
-- what selection_report needs to compare it with the other scopes' selections: the scope, the budget it was made at,
-- the scorer versions behind its scores and when it was made.
SELECT variant, source, record_id, n_tokens, score, mask_version,
    CAST($scope AS VARCHAR) AS scorer_scope, CAST($share AS DOUBLE) AS budget_share,
    CAST($versions AS VARCHAR) AS scorer_versions, CAST($made_at AS VARCHAR) AS made_at
FROM selected_subset
