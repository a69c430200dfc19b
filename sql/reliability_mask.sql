-- reliability_mask: which (source × dimension) cells the aggregate ignores, and why.
-- A cell with at least $min_n held-out pairs is judged on its own; otherwise on the group's pooled
-- estimate (basis = 'group'); with too few pairs even there it is kept, marked unverified.
-- Masked when MAE > $max_mae, rho < $min_rho, or rho is undefined (a constant scorer ranks nothing).
WITH basis AS (
    SELECT *,
        CASE WHEN n >= $min_n THEN 'source' WHEN group_n >= $min_n THEN 'group' ELSE 'none' END AS basis,
        CASE WHEN n >= $min_n THEN n ELSE group_n END AS used_n,
        CASE WHEN n >= $min_n THEN mae ELSE group_mae END AS used_mae,
        CASE WHEN n >= $min_n THEN rho ELSE group_rho END AS used_rho
    FROM dim_reliability
)
SELECT source, group_id, slot, dim_name, basis, used_n, used_mae, used_rho,
    basis <> 'none' AND (used_mae > $max_mae OR used_rho IS NULL OR used_rho < $min_rho) AS masked,
    concat_ws('; ',
        CASE WHEN basis = 'group' THEN printf('insufficient data (n=%d < %d): group-level estimate', n, $min_n) END,
        CASE WHEN basis = 'none' THEN printf('insufficient data (n=%d, group n=%d < %d): kept unverified', n, group_n, $min_n) END,
        CASE WHEN basis <> 'none' AND used_mae > $max_mae THEN printf('MAE %.2f > %.2f', used_mae, $max_mae) END,
        CASE WHEN basis <> 'none' AND used_rho IS NULL THEN 'rho undefined (constant scores)' END,
        CASE WHEN basis <> 'none' AND used_rho < $min_rho THEN printf('rho %.2f < %.2f', used_rho, $min_rho) END
    ) AS reason,
    $rule AS rule
FROM basis
ORDER BY group_id, source, slot
