"""Pure Python, no Dagster: records, rubric, prompts, parsing, scoring, storage, sampling."""
