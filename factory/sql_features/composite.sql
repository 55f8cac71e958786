-- Composite quality score and keep/drop decision, one row per sample.
--
-- Reads:  features      (the output of features.sql)
--         judge_scores  (sample_id, judge_mean, judge_spread, judge_n) — may be empty
-- Params: the `weights` of the score stage's config ($w_judge, $w_repetition, ...), $min_words,
--         $min_composite, $min_judge_mean and $use_judge (false when the judge failed its calibration
--         check, when no judge ran, or when the config turns it off)
--
-- The formula (all terms in [0, 1]):
--
--   heuristic = clamp01(1 - w_repetition * ngram_repetition
--                         - w_non_alpha  * non_alpha_ratio
--                         - w_symbols    * symbol_ratio
--                         - w_refusal    * refusal
--                         - w_echo       * echo
--                         - w_unfinished * unfinished
--                         - w_short      * (answer_words < min_words))
--   judge     = judge_mean / 5                       (additive 5-point rubric, 0..5)
--   composite = w_judge * judge + (1 - w_judge) * heuristic   when use_judge and the sample was judged
--             = heuristic                                     otherwise (the heuristic fallback)
--
--   keep = no heuristic reason, no judge reason, and composite >= min_composite
WITH scored AS (
    SELECT
        f.*,
        j.judge_mean,
        j.judge_spread,
        j.judge_n,
        greatest(0.0, least(1.0, 1.0
            - $w_repetition * f.ngram_repetition
            - $w_non_alpha * f.non_alpha_ratio
            - $w_symbols * f.symbol_ratio
            - $w_refusal * f.refusal::INTEGER
            - $w_echo * f.echo::INTEGER
            - $w_unfinished * f.unfinished::INTEGER
            - $w_short * (f.answer_words < $min_words)::INTEGER)) AS heuristic,
        $use_judge AND j.judge_mean IS NOT NULL AS judge_used
    FROM features f
    LEFT JOIN judge_scores j USING (sample_id)
),
composed AS (
    SELECT
        *,
        CASE WHEN judge_used THEN $w_judge * (judge_mean / 5.0) + (1 - $w_judge) * heuristic
             ELSE heuristic END AS composite
    FROM scored
),
decided AS (
    SELECT
        *,
        list_concat(heuristic_reasons, list_filter([
            CASE WHEN judge_used AND judge_mean < $min_judge_mean THEN 'low_judge_score' END,
            CASE WHEN composite < $min_composite THEN 'low_composite' END
        ], lambda r: r IS NOT NULL)) AS drop_reasons
    FROM composed
)
SELECT
    * EXCLUDE (heuristic_reasons, drop_reasons, heuristic, composite),
    round(heuristic, 4) AS heuristic,
    round(composite, 4) AS composite,
    len(drop_reasons) = 0 AS keep,
    drop_reasons
FROM decided
ORDER BY sample_id
