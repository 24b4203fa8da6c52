"""Copy a local folder into an S3-compatible store: a teacher directory, a dataset, anything.

    python examples/local-cluster/upload.py examples/quickstart/store s3://distillery/quickstart \\
        --endpoint http://127.0.0.1:9000

Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (the local MinIO's are in its
Secret `minio-root`); the bucket is created when it does not exist.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a local folder or file")
    parser.add_argument("target", help="s3://bucket/prefix")
    parser.add_argument("--endpoint", required=True, help="e.g. http://127.0.0.1:9000 (a kubectl port-forward)")
    args = parser.parse_args(argv)
    if not args.target.startswith("s3://") or "/" not in args.target[5:]:
        parser.error("target must look like s3://bucket/prefix")
    bucket, _, prefix = args.target[5:].partition("/")
    if not args.source.exists():
        parser.error(f"{args.source} does not exist")

    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=args.endpoint, region_name="us-east-1",
                      config=Config(s3={"addressing_style": "path"}, connect_timeout=10, read_timeout=120))
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        s3.create_bucket(Bucket=bucket)
    files = [args.source] if args.source.is_file() else sorted(p for p in args.source.rglob("*") if p.is_file())
    for path in files:
        rel = path.name if args.source.is_file() else path.relative_to(args.source).as_posix()
        key = f"{prefix.rstrip('/')}/{rel}"
        s3.upload_file(str(path), bucket, key)
        print(f"s3://{bucket}/{key}")
    print(f"{len(files)} file(s) uploaded", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
