-- report_run.sql: the runs row of one run (for the report's configuration section).
--
-- Parameters: $run_id VARCHAR.
-- Columns: every column of the runs view; no row when the run is unknown.
SELECT *
FROM runs
WHERE run_id = $run_id
