"""The typed contract shared by the operator, the trainer and the CRDs."""

from distillery.api.base import API_VERSION, GROUP, VERSION
from distillery.api.job import (
    DistillationJob,
    DistillationJobSpec,
    DistillationJobStatus,
)
from distillery.api.load import SpecError, load_job, load_job_file
from distillery.api.student import StudentModel, StudentModelSpec, StudentModelStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "DistillationJob",
    "DistillationJobSpec",
    "DistillationJobStatus",
    "SpecError",
    "StudentModel",
    "StudentModelSpec",
    "StudentModelStatus",
    "load_job",
    "load_job_file",
]
