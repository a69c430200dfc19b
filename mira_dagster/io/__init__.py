"""Everything that reads or writes outside the process: source files, the registry and rubric files, DuckDB tables
and object storage, the reply cache, exports, and the HTTP servers (LLM and embedding endpoints).

`core/` computes on values and frames and never touches a file, a socket or the environment; `defs/` is the Dagster
glue that calls `io/` to read, `core/` to compute, and `io/` again to write."""
