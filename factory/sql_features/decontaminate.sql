-- Decontamination: samples sharing a long word n-gram with a user-supplied evaluation set.
--
-- Reads:  samples(sample_id, instruction, input, output)
--         eval_texts(benchmark, text)   one row per text field of every evaluation record
-- Params: $decontam_ngram              the n-gram length in words (13 by default)
-- Writes: one row per contaminated sample: the first matching benchmark file and n-gram.
--
-- Text is normalised before comparing: lower-cased, every run of non-letters/digits becomes one space.
WITH norm_samples AS (
    SELECT sample_id,
           list_filter(string_split_regex(regexp_replace(lower(
               coalesce(instruction, '') || ' ' || coalesce(input, '') || ' ' || coalesce(output, '')),
               '[^\p{L}\p{N}]+', ' ', 'g'), ' '), lambda w: w <> '') AS words
    FROM samples
),
norm_evals AS (
    SELECT benchmark,
           list_filter(string_split_regex(regexp_replace(lower(coalesce(text, '')), '[^\p{L}\p{N}]+', ' ', 'g'),
                                          ' '), lambda w: w <> '') AS words
    FROM eval_texts
),
sample_grams AS (
    SELECT sample_id,
           unnest(list_transform(range(1, len(words) - $decontam_ngram + 2),
                                 lambda i: array_to_string(words[i:i + $decontam_ngram - 1], ' '))) AS ngram
    FROM norm_samples
),
eval_grams AS (
    SELECT DISTINCT benchmark,
           unnest(list_transform(range(1, len(words) - $decontam_ngram + 2),
                                 lambda i: array_to_string(words[i:i + $decontam_ngram - 1], ' '))) AS ngram
    FROM norm_evals
)
SELECT s.sample_id,
       min(e.benchmark) AS benchmark,
       arg_min(s.ngram, e.benchmark || ' ' || s.ngram) AS ngram,
       count(DISTINCT s.ngram) AS matching_ngrams
FROM sample_grams s JOIN eval_grams e USING (ngram)
GROUP BY s.sample_id
ORDER BY s.sample_id
