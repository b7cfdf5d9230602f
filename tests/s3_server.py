"""A real S3 API on localhost for tests and benchmarks: moto's server mode in its own process,
on a free port, with authentication on (a request with unknown keys is refused, as on AWS).

    with S3Server() as s3:            # starts `python -m moto.server -H 127.0.0.1 -p PORT`
        os.environ.update(s3.env())   # AWS_* variables: the standard places, nothing tsa-specific
        s3.upload(local_folder, "s3://tsa-test/ds")
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REGION = "us-east-1"
ALLOW_ALL = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self, start_timeout: float = 60.0):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # The first 3 requests (create user, policy, key) need no credentials; every later one does.
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not start on port {self.port}")
                time.sleep(0.1)
        try:
            iam = self._client("iam", "setup", "setup")
            iam.create_user(UserName="tsa")
            iam.put_user_policy(UserName="tsa", PolicyName="all", PolicyDocument=ALLOW_ALL)
            key = iam.create_access_key(UserName="tsa")["AccessKey"]
        except BaseException:
            self.stop()  # no server left behind when the set-up fails
            raise
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]

    def _client(self, service: str, key_id: str, secret: str):
        import boto3

        return boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret,
                                     region_name=REGION).client(service, endpoint_url=self.endpoint)

    def env(self, key_id: str | None = None, secret: str | None = None) -> dict[str, str]:
        """The AWS_* variables a user would set for this endpoint (bad keys if given)."""
        return {"AWS_ACCESS_KEY_ID": key_id or self.key_id, "AWS_SECRET_ACCESS_KEY": secret or self.secret,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": REGION,
                # no profile or config file of the machine may leak into a test
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    @property
    def s3(self):
        return self._client("s3", self.key_id, self.secret)

    def upload(self, folder: Path, url: str) -> str:
        """Copy a local folder to s3://bucket/prefix (the bucket is created); returns the URL."""
        bucket, _, prefix = url[len("s3://"):].partition("/")
        s3 = self.s3
        if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=bucket)
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}".lstrip("/"))
        return url

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "S3Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
