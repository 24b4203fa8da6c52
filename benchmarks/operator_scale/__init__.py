"""Operator scale benchmark (issue 5, item 4): N DistillationJobs against the test control plane."""
