"""Make the digits teacher and data and put them in the e2e MinIO; or check a run's artifacts.

    python tests/e2e/kind/prepare_digits.py upload --endpoint http://127.0.0.1:9000
    python tests/e2e/kind/prepare_digits.py check  --endpoint http://127.0.0.1:9000 --prefix runs/digits/g1

The teacher is the same 6-block MLP the trainer and cluster tests train on scikit-learn's digits
(tests/digits.py), saved as config.json + model.safetensors; the data are NPZ arrays x, y.
Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (run.sh sets MinIO's test user).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
BUCKET = "distillery"
EXPECTED = ["result.json", "metrics.json", "model.onnx", "model/model.safetensors", "model/config.json",
            "README.md"]


def s3(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}))


def upload(args) -> int:
    import numpy as np
    from sklearn.datasets import load_digits

    sys.path.insert(0, str(REPO))
    from tests.digits import train_mlp_teacher

    from distillery_trainer.builtin import save_builtin

    client = s3(args.endpoint)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    train, evals = order[:1400], order[1400:]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        np.savez(root / "train.npz", x=x[train], y=y[train])
        np.savez(root / "eval.npz", x=x[evals], y=y[evals])
        save_builtin(train_mlp_teacher(x[train], y[train]), root / "teacher")
        files = {"data/digits/train.npz": root / "train.npz", "data/digits/eval.npz": root / "eval.npz"}
        for f in sorted((root / "teacher").iterdir()):
            files[f"teachers/digits-mlp/{f.name}"] = f
        for key, path in files.items():
            client.upload_file(str(path), BUCKET, key)
            print(f"uploaded s3://{BUCKET}/{key}")
    return 0


def check(args) -> int:
    client = s3(args.endpoint)
    prefix = args.prefix.rstrip("/") + "/"
    keys = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys |= {o["Key"][len(prefix):] for o in page.get("Contents", [])}
    missing = [k for k in EXPECTED if k not in keys]
    if missing:
        print(f"missing under s3://{BUCKET}/{prefix}: {missing} (found {sorted(keys)})", file=sys.stderr)
        return 1
    result = json.loads(client.get_object(Bucket=BUCKET, Key=prefix + "result.json")["Body"].read())
    print(json.dumps({"accepted": result["decision"]["accepted"], "speedup": result["speedup"],
                      "studentAccuracy": result["student"]["accuracy"],
                      "layersKept": result["layersKept"]}))
    return 0 if result["decision"]["accepted"] else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, func in (("upload", upload), ("check", check)):
        p = sub.add_parser(name)
        p.add_argument("--endpoint", required=True)
        p.set_defaults(func=func)
        if name == "check":
            p.add_argument("--prefix", required=True)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
