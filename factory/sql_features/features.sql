-- Heuristic quality features, one row per sample.
--
-- Reads:  samples(sample_id, instruction, input, output, finish_reason)
-- Params: $min_words, $max_words, $max_word_repetition, $max_ngram_repetition, $max_non_alpha_ratio,
--         $max_symbol_ratio, $max_echo_overlap, $min_answer_instruction_ratio, $refusal_pattern,
--         $unfinished_words — the `thresholds` of the score stage's config (see stages/score.py)
-- Writes: one row per sample with the measured features, the flags derived from them and the list
--         of heuristic reasons to drop it (empty = passes).
--
-- Words are lower-cased runs of letters, digits and apostrophes. Every ratio is in [0, 1].
-- Thresholds arrive as prepared-statement parameters, so they are constants to DuckDB (a regex from
-- a joined column would be recompiled on every row).
WITH tok AS (
    SELECT
        sample_id,
        finish_reason,
        coalesce(output, '') AS output,
        rtrim(coalesce(output, '')) AS trimmed,
        trim(coalesce(instruction, '')) AS instruction,
        regexp_extract_all(lower(coalesce(output, '')), '[\p{L}\p{N}'']+') AS words,
        regexp_extract_all(lower(coalesce(instruction, '') || ' ' || coalesce(input, '')), '[\p{L}\p{N}'']+')
            AS prompt_words
    FROM samples
),
measured AS (
    SELECT
        sample_id,
        finish_reason,
        length(output) AS answer_chars,
        len(words) AS answer_words,
        len(prompt_words) AS instruction_words,
        -- 1 - distinct/total: 0 when every word differs, near 1 for "the the the the"
        CASE WHEN len(words) = 0 THEN 0.0
             ELSE 1.0 - list_unique(words) / len(words) END AS word_repetition,
        -- the same over word trigrams (each trigram hashed: "a b c" -> hash('a', 'b', 'c'))
        CASE WHEN len(words) < 3 THEN 0.0
             ELSE 1.0 - list_unique(list_transform(range(1, len(words) - 1),
                                                   lambda i: hash(words[i], words[i + 1], words[i + 2])))
                        / (len(words) - 2) END AS ngram_repetition,
        -- characters that are neither letters nor whitespace (digits, punctuation, symbols)
        CASE WHEN length(output) = 0 THEN 0.0
             ELSE length(regexp_replace(output, '[\p{L}\s]+', '', 'g')) / length(output) END AS non_alpha_ratio,
        -- markup and symbol characters: # * _ ~ ` | < > { } [ ] \ ^ @ $ % = +
        CASE WHEN length(output) = 0 THEN 0.0
             ELSE length(regexp_replace(output, '[^#*_~`|<>{}\[\]\\^@$%=+]+', '', 'g')) / length(output)
        END AS symbol_ratio,
        -- refusal and apology phrases ("i'm sorry", "as an ai", "i cannot" ...)
        regexp_matches(lower(output), $refusal_pattern) AS refusal,
        -- share of the answer's distinct words that already appear in the instruction (list_intersect is distinct)
        CASE WHEN len(words) = 0 THEN 0.0
             ELSE len(list_intersect(words, prompt_words)) / list_unique(words) END AS echo_overlap,
        length(instruction) > 0 AND starts_with(lower(trimmed), lower(instruction)) AS starts_with_prompt,
        -- cut at max_tokens, or ending on a comma/colon/dash or a dangling "and", "the", "of" ...
        finish_reason = 'length'
            OR regexp_matches(trimmed, '[,;:(\-–]$')
            OR (len(words) > 0 AND list_contains($unfinished_words, words[-1])
                AND NOT regexp_matches(trimmed, '[.!?]$')) AS unfinished,
        regexp_matches(trimmed, '[.!?)"''\]`*。…]$') AS ends_cleanly,
        len(words) / greatest(len(prompt_words), 1) AS answer_instruction_ratio
    FROM tok
),
flagged AS (
    SELECT
        *,
        starts_with_prompt OR (echo_overlap >= $max_echo_overlap AND answer_words >= 3) AS echo
    FROM measured
)
SELECT
    sample_id,
    answer_chars,
    answer_words,
    instruction_words,
    round(word_repetition, 4) AS word_repetition,
    round(ngram_repetition, 4) AS ngram_repetition,
    round(non_alpha_ratio, 4) AS non_alpha_ratio,
    round(symbol_ratio, 4) AS symbol_ratio,
    refusal,
    round(echo_overlap, 4) AS echo_overlap,
    echo,
    unfinished,
    ends_cleanly,
    round(answer_instruction_ratio, 4) AS answer_instruction_ratio,
    list_filter([
        CASE WHEN answer_words < $min_words THEN 'too_short' END,
        CASE WHEN answer_words > $max_words THEN 'too_long' END,
        CASE WHEN word_repetition > $max_word_repetition THEN 'repetitive_words' END,
        CASE WHEN ngram_repetition > $max_ngram_repetition THEN 'repetitive_ngrams' END,
        CASE WHEN non_alpha_ratio > $max_non_alpha_ratio THEN 'non_alphabetic' END,
        CASE WHEN symbol_ratio > $max_symbol_ratio THEN 'symbols' END,
        CASE WHEN refusal THEN 'refusal' END,
        CASE WHEN echo THEN 'echo' END,
        CASE WHEN unfinished THEN 'unfinished' END,
        CASE WHEN answer_instruction_ratio < $min_answer_instruction_ratio THEN 'answer_too_short_for_instruction' END
    ], lambda r: r IS NOT NULL) AS heuristic_reasons
FROM flagged
