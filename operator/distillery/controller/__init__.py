"""The kopf operator: reconciles DistillationJobs into trainer Jobs and keeps the registry.

Pure builders (trainer_job, status, registry) are separate from the kopf handlers (handlers)
that do the I/O, so the logic is testable without a cluster.
"""
