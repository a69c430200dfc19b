"""mira-dagster: MIRA (Mid-training Rubric Anchoring) data selection as a Dagster pipeline over DuckDB."""
