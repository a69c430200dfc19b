-- reliability_mask: which (source × dimension) cells the aggregate ignores, and why.
-- A cell is judged on its own held-out pairs when it has at least $min_n of them and its bootstrap interval
-- does not straddle a threshold; otherwise on the group's pooled estimate (basis = 'group'), when the group
-- has enough pairs; with too few pairs even there it is kept, marked unverified.
-- Masked when MAE > $max_mae, rho < $min_rho, or rho is undefined (a constant scorer ranks nothing).
WITH cells AS (
    SELECT *,
        n >= $min_n AS enough,
        -- uncertain: the interval neither clearly fails a threshold nor clearly passes both
        coalesce(NOT (mae_lo > $max_mae OR rho_hi < $min_rho) AND NOT (mae_hi <= $max_mae AND rho_lo >= $min_rho),
                 false) AS straddles
    FROM dim_reliability
), basis AS (
    SELECT *,
        CASE WHEN enough AND NOT straddles THEN 'source'
             WHEN group_n >= $min_n THEN 'group'
             WHEN enough THEN 'source'
             ELSE 'none' END AS basis
    FROM cells
), used AS (
    SELECT *,
        CASE WHEN basis = 'group' THEN group_n ELSE n END AS used_n,
        CASE WHEN basis = 'group' THEN group_mae ELSE mae END AS used_mae,
        CASE WHEN basis = 'group' THEN group_rho ELSE rho END AS used_rho
    FROM basis
)
SELECT source, group_id, slot, dim_name, basis, used_n, used_mae, used_rho,
    basis <> 'none' AND (used_mae > $max_mae OR used_rho IS NULL OR used_rho < $min_rho) AS masked,
    concat_ws('; ',
        CASE WHEN basis = 'group' AND NOT enough
             THEN printf('insufficient data (n=%d < %d): group-level estimate', n, $min_n) END,
        CASE WHEN basis = 'group' AND enough
             THEN printf('source interval straddles a threshold (MAE %.2f [%.2f, %.2f], rho %.2f [%.2f, %.2f]): group-level estimate',
                         mae, mae_lo, mae_hi, rho, rho_lo, rho_hi) END,
        CASE WHEN basis = 'none'
             THEN printf('insufficient data (n=%d, group n=%d < %d): kept unverified', n, group_n, $min_n) END,
        CASE WHEN basis <> 'none' AND used_mae > $max_mae THEN printf('MAE %.2f > %.2f', used_mae, $max_mae) END,
        CASE WHEN basis <> 'none' AND used_rho IS NULL THEN 'rho undefined (constant scores)' END,
        CASE WHEN basis <> 'none' AND used_rho < $min_rho THEN printf('rho %.2f < %.2f', used_rho, $min_rho) END
    ) AS reason,
    $rule AS rule,
    $mask_version AS mask_version
FROM used
ORDER BY group_id, source, slot
