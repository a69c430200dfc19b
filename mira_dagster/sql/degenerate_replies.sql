-- degenerate_replies: replies that parsed but say little, over one partition's scored records (ok or partial) of
-- the view `scores_partition` (student_scores or teacher_labels): the same score in all 15 slots, the same 15
-- scores as another record, a scored slot whose rationale holds no word (no run of two letters: "— 100"), a brief
-- of fewer than three words ("keepe"), the same brief as another record. One row of counts; `degenerate` counts
-- the records with any of them. Feeds the non-blocking `degenerate_replies` check.
-- The repeats are found by grouping the scores and the briefs alone (only the repeated ones are kept), then each
-- record is flagged in one streaming pass: a window over the partition held every row with its 15 rationales
-- (about 50 MB at 50,000 records, growing with the partition).
WITH repeated_scores AS (
    SELECT [a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15] AS v
    FROM scores_partition
    WHERE source = $source AND status IN ('ok', 'partial')
        AND a1 IS NOT NULL AND a2 IS NOT NULL AND a3 IS NOT NULL AND a4 IS NOT NULL AND a5 IS NOT NULL
        AND a6 IS NOT NULL AND a7 IS NOT NULL AND a8 IS NOT NULL AND a9 IS NOT NULL AND a10 IS NOT NULL
        AND a11 IS NOT NULL AND a12 IS NOT NULL AND a13 IS NOT NULL AND a14 IS NOT NULL AND a15 IS NOT NULL
    GROUP BY v
    HAVING count(*) > 1
), repeated_briefs AS (
    SELECT lower(trim(brief)) AS b
    FROM scores_partition
    WHERE source = $source AND status IN ('ok', 'partial') AND brief IS NOT NULL
    GROUP BY b
    HAVING count(*) > 1
), scored AS (
    SELECT brief, rationales,
        [a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15] AS v
    FROM scores_partition
    WHERE source = $source AND status IN ('ok', 'partial')
), flagged AS (
    SELECT
        len(list_filter(v, lambda x: x IS NOT NULL)) = 15 AND len(list_distinct(v)) = 1 AS constant_slots,
        len(list_filter(v, lambda x: x IS NOT NULL)) = 15
            AND v IN (SELECT v FROM repeated_scores) AS repeated_scores,
        len(list_filter(
            list_zip(v, rationales),
            lambda p: p[1] IS NOT NULL AND (p[2] IS NULL OR NOT regexp_matches(p[2], '\pL\pL'))
        )) > 0 AS wordless_rationale,
        brief IS NOT NULL AND len(regexp_extract_all(brief, '\pL\pL+')) < 3 AS wordless_brief,
        brief IS NOT NULL AND lower(trim(brief)) IN (SELECT b FROM repeated_briefs) AS repeated_brief
    FROM scored
)
SELECT
    count(*) AS scored,
    count(*) FILTER (WHERE constant_slots) AS constant_slots,
    count(*) FILTER (WHERE repeated_scores) AS repeated_scores,
    count(*) FILTER (WHERE wordless_rationale) AS wordless_rationale,
    count(*) FILTER (WHERE wordless_brief) AS wordless_brief,
    count(*) FILTER (WHERE repeated_brief) AS repeated_brief,
    count(*) FILTER (
        WHERE constant_slots OR repeated_scores OR wordless_rationale OR wordless_brief OR repeated_brief
    ) AS degenerate
FROM flagged
