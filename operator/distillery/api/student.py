"""The StudentModel resource: a registered, accepted student and its place on the frontier."""

from __future__ import annotations

from pydantic import Field

from distillery.api.base import API_VERSION, ApiModel, Condition
from distillery.api.job import Artifacts, Hardware, ModelMetrics, ObjectMeta, Task
from distillery.api.search import TrialParams


class TeacherRef(ApiModel):
    uri: str
    task: Task
    format: str | None = None


class SourceJob(ApiModel):
    name: str
    namespace: str | None = None
    generation: int | None = None
    uid: str | None = None


class Lineage(ApiModel):
    parent: str | None = Field(default=None, description="student.base's URI: the model the student was cut from")
    parent_student_model: str | None = Field(
        default=None, description="student.base.studentModel: the registered student this one continues")
    ensemble_teachers: list[str] | None = Field(default=None, description="ensemble.teachers' URIs, in order")


class StudentModelSpec(ApiModel):
    teacher: TeacherRef
    hardware: Hardware = Hardware.CPU
    artifacts: Artifacts
    source_job: SourceJob | None = None
    layers_kept: list[int] = Field(default_factory=list)
    teacher_layers: int | None = None
    metrics: ModelMetrics
    teacher_metrics: ModelMetrics | None = None
    pareto_score: float | None = None
    variant: str | None = Field(default=None, description="which variant of the job's student this is (fp32, int8)")
    artifact: str | None = Field(default=None, description="the file of that variant (ONNX)")
    recipe: TrialParams | None = Field(
        default=None, description="the student choices that produced it (a search tries these first)")
    lineage: Lineage | None = Field(
        default=None, description="what it was distilled from besides the teacher: the model it was cut "
        "from (student.base) and the ensemble's other teachers")


class StudentModelStatus(ApiModel):
    observed_generation: int | None = None
    on_frontier: bool | None = None
    dominated_by: list[str] = Field(default_factory=list)
    group: str | None = Field(default=None, description="teacher, task and hardware this model competes in")
    conditions: list[Condition] = Field(default_factory=list)


class StudentModel(ApiModel):
    api_version: str = API_VERSION
    kind: str = "StudentModel"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: StudentModelSpec
    status: StudentModelStatus | None = None
