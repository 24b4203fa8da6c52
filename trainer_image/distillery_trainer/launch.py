"""The trainer pod's launcher for data-parallel jobs: starts torchrun, keeps the exit-code contract.

The operator asks for it with DISTILLERY_NPROC_PER_NODE (and, for several worker pods,
DISTILLERY_NNODES, DISTILLERY_RDZV_ENDPOINT and DISTILLERY_RDZV_ID; controller/trainer_job.py).
One pod runs `torchrun --standalone`; several rendezvous (c10d) at worker 0's DNS name, worker 0
hosting the rendezvous store. torchrun itself exits 1 for any failed process, which would make the
cluster retry bad input; so every process leaves its exit code in a folder, and the launcher exits
2 when any process found the input invalid (podFailurePolicy then fails the Job at once).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from distillery.api.result import EXIT_INVALID

# No restarts inside the pod: torchrun would restart on invalid input too (one more failed load
# per restart before exit 2). The Job is the one retry policy: a failed pod is replaced (backoffLimit), its
# peers fail with it and are replaced too, the new pods rendezvous, and every process resumes
# from the last checkpoint.
MAX_RESTARTS = 0
EXIT_DIR_ENV = "DISTILLERY_EXIT_DIR"


def wanted(env: Mapping[str, str]) -> bool:
    """Launch torchrun: the operator asked for several processes and this is not one of them."""
    return bool(env.get("DISTILLERY_NPROC_PER_NODE")) and "TORCHELASTIC_RUN_ID" not in env


def torchrun_args(env: Mapping[str, str], argv: list[str]) -> list[str]:
    """The torchrun command line for this pod (pure)."""
    nnodes = int(env.get("DISTILLERY_NNODES", "1"))
    nproc = int(env["DISTILLERY_NPROC_PER_NODE"])
    args = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--max-restarts={MAX_RESTARTS}"]
    if nnodes == 1:
        args.append("--standalone")
    else:
        args += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={env['DISTILLERY_RDZV_ENDPOINT']}",
                 f"--rdzv-id={env['DISTILLERY_RDZV_ID']}"]
        if env.get("JOB_COMPLETION_INDEX") == "0":
            # Worker 0 serves the rendezvous store at its own DNS name; torchrun cannot always tell
            # that the name is its own (the pod's FQDN is longer), so it is told.
            args.append("--rdzv-conf=is_host=1")
    return [*args, "-m", "distillery_trainer.entrypoint", *argv]


def record_exit(code: int, env: Mapping[str, str] = os.environ) -> None:
    """Called by each process at its end: leaves its exit code for the launcher."""
    folder = env.get(EXIT_DIR_ENV)
    if folder:
        Path(folder, f"rank-{env.get('RANK', '0')}").write_text(str(code))


def pod_exit_code(torchrun_code: int, exit_dir: Path) -> int:
    """0 when torchrun succeeded; 2 when any process found the input invalid; else torchrun's."""
    if torchrun_code == 0:
        return 0
    codes = {path.read_text().strip() for path in exit_dir.glob("rank-*")}
    return EXIT_INVALID if str(EXIT_INVALID) in codes else torchrun_code


def launch(argv: list[str]) -> int:
    exit_dir = Path(tempfile.mkdtemp(prefix="distillery-exit-"))
    command = torchrun_args(os.environ, argv)
    print(f"[distillery] starting torchrun {' '.join(command[3:])}", file=sys.stderr, flush=True)
    child = subprocess.Popen(command, env={**os.environ, EXIT_DIR_ENV: str(exit_dir)})

    def forward(signum, _frame) -> None:  # the kubelet's SIGTERM reaches torchrun, which stops the ranks
        child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    code = child.wait()
    return pod_exit_code(code, exit_dir)
