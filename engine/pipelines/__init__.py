"""The four user-facing steps (ingest, select, suppress, report) and the run reader: the only code that reads or
writes the warehouse and runs the SQL of `queries`. Each pipeline joins compute modules of `engine` to storage."""
