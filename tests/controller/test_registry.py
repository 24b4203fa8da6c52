from distillery.controller.registry import frontier_statuses


def model(name, acc, lat, size):
    return {"metadata": {"name": name, "labels": {"distillery.io/frontier-group": "g"}, "generation": 1},
            "spec": {"metrics": {"accuracy": acc, "latencyP50Ms": lat, "sizeBytes": size}}}


def test_frontier_statuses():
    s = frontier_statuses([model("a", 0.9, 10, 100), model("b", 0.8, 20, 100), model("c", 0.95, 30, 300)])
    assert s["a"]["onFrontier"] and s["c"]["onFrontier"]
    assert s["b"] == {"onFrontier": False, "dominatedBy": ["a"], "group": "g", "observedGeneration": 1}


def _job(**spec):
    from distillery.api import load_job

    doc = {"apiVersion": "distillery.io/v1alpha1", "kind": "DistillationJob", "metadata": {"name": "j"},
           "spec": {"teacher": {"uri": "s3://b/teacher"},
                    "dataset": {"trainUri": "s3://b/train.jsonl", "evalUri": "s3://b/eval.jsonl"},
                    "output": {"uri": "s3://b/out"}, **spec}}
    return load_job(doc)


def test_lineage_names_the_parent_student_and_the_ensemble_from_the_spec():
    from distillery.api.student import Lineage
    from distillery.controller.registry import lineage_of

    assert lineage_of(_job()) == {}
    job = _job(student={"base": {"uri": "s3://b/students/v1/model"}},
               ensemble={"teachers": [{"uri": "s3://b/teacher-2"}, {"uri": "s3://b/teacher-3", "weight": 2}]})
    lineage = lineage_of(job)
    assert lineage == {"parent": "s3://b/students/v1/model",
                       "ensembleTeachers": ["s3://b/teacher-2", "s3://b/teacher-3"]}
    assert Lineage.model_validate(lineage).ensemble_teachers == ["s3://b/teacher-2", "s3://b/teacher-3"]
    by_name = lineage_of(_job(student={"base": {"studentModel": "news-v1-g1"}, "keepRatio": 1}))
    assert by_name == {"parentStudentModel": "news-v1-g1"}
    assert Lineage.model_validate(by_name).parent_student_model == "news-v1-g1"
