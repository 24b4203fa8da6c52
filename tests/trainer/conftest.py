"""Trainer fixtures: jobs on the digits teacher (see tests/digits.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distillery.api import load_job
from tests.digits import digits_job_document


@pytest.fixture
def digits_job(digits_workspace, tmp_path):
    """Factory: digits_job(**overrides) -> (DistillationJob, output dir)."""

    def make(out_name: str = "out", **overrides):
        out = tmp_path / out_name
        return load_job(digits_job_document(digits_workspace, out, **overrides)), out

    return make


@pytest.fixture
def write_job_file(tmp_path):
    def write(document: dict, name: str = "job.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(document))
        return path

    return write
