"""Outputs: where a case's files go, the JSON report and summary CSV, QC pictures, resuming and merging runs."""
