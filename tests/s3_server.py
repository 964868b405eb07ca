"""A real S3-compatible server on 127.0.0.1 for tests: moto's server (its WSGI app, served by
werkzeug in a thread of this process) on a free port, with one bucket, and a switch that makes it
refuse writes (503 SlowDown) under a key prefix, to test a store that fails mid-checkpoint.

    with s3_server() as s3:            # s3.endpoint, s3.bucket, s3.env, s3.uri("prefix")
        os.environ.update(s3.env)      # or: the `s3` pytest fixture (module scope) does it
        s3.refuse_writes("runs/x/train/t1/", keep_first=1, for_s=6)
            ...                        # PUT/POST under that prefix answer 503: every folder
                                       # after the first one seen there (its first checkpoint),
                                       # for 6 s from the first refusal

`s3.env` holds AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (dummy values, moto
accepts any) and AWS_DEFAULT_REGION. Ray workers must see them too: set them before the Ray
cluster starts, or start a driver process with `s3.job_env()` merged into its environment (Ray's
job runtime_env, so every trial actor and Train worker of that driver gets them). The server
stops when the block ends; it is a thread of this process, so nothing outlives the tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

HOST = "127.0.0.1"
BUCKET = "sla-sweep-test"


@dataclasses.dataclass
class S3Server:
    endpoint: str
    bucket: str
    refused: list[str] = dataclasses.field(default_factory=list)  # "METHOD key" answered 503
    _rule: dict | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups off EC2
        }

    def job_env(self) -> dict[str, str]:
        """Environment for a driver subprocess: `env`, plus Ray's job runtime_env carrying it to
        the driver's trial actors and Train workers."""
        job = {"runtime_env": {"env_vars": self.env}}
        return {**self.env, "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job)}

    def uri(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under `prefix` (boto3, as any S3 client lists)."""
        import boto3

        client = boto3.client("s3", **_client_args(self))
        found = []
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            found += [o["Key"] for o in page.get("Contents", [])]
        return found

    def etags(self, prefix: str) -> dict[str, str]:
        import boto3

        client = boto3.client("s3", **_client_args(self))
        out = {}
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
        return out

    def refuse_writes(self, prefix: str, *, keep_first: int = 0, for_s: float = 5.0) -> None:
        """From now on, PUT and POST of keys under `prefix` answer 503 SlowDown, except those
        in the first `keep_first` folders seen under it, until `for_s` seconds after the first
        refusal."""
        self._rule = {"prefix": prefix, "keep": keep_first, "for_s": for_s, "seen": [],
                      "until": None}  # fmt: skip

    def _refuses(self, method: str, key: str) -> bool:
        rule = self._rule
        if rule is None or method not in ("PUT", "POST") or not key.startswith(rule["prefix"]):
            return False
        folder = key[len(rule["prefix"]) :].split("/", 1)[0]
        if folder not in rule["seen"]:
            rule["seen"].append(folder)
        if rule["seen"].index(folder) < rule["keep"]:
            return False
        now = time.monotonic()
        if rule["until"] is None:
            rule["until"] = now + rule["for_s"]
        if now > rule["until"]:
            self._rule = None
            return False
        self.refused.append(f"{method} {key}")
        return True


def _client_args(s3: S3Server) -> dict[str, str]:
    env = s3.env
    return {"endpoint_url": s3.endpoint, "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
            "region_name": env["AWS_DEFAULT_REGION"]}  # fmt: skip


class _Refuser:
    """WSGI middleware in front of moto: 503 for the writes the server's rule refuses."""

    def __init__(self, app, server: S3Server) -> None:
        self.app, self.server = app, server

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "")
        key = environ.get("PATH_INFO", "").lstrip("/").split("/", 1)[-1]
        if self.server._refuses(method, key):
            body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                    b"<Message>writes refused by the test</Message></Error>")  # fmt: skip
            start_response("503 Service Unavailable", [("Content-Type", "application/xml"),
                                                       ("Content-Length", str(len(body)))])  # fmt: skip
            return [body]
        return self.app(environ, start_response)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def s3_server(bucket: str = BUCKET) -> Iterator[S3Server]:
    """moto's S3 on 127.0.0.1 (a free port) with `bucket` created; stopped at the end."""
    import boto3
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    port = _free_port()
    server = S3Server(f"http://{HOST}:{port}", bucket)
    app = _Refuser(DomainDispatcherApplication(create_backend_app), server)
    httpd = make_server(HOST, port, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, name="moto-s3", daemon=True)
    thread.start()
    try:
        boto3.client("s3", **_client_args(server)).create_bucket(Bucket=bucket)
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def aws_env(server: S3Server) -> Iterator[None]:
    """server.env in os.environ for the block (restored afterwards)."""
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """A module's S3 server, its variables set in this process's environment meanwhile."""
    with s3_server() as server, aws_env(server):
        yield server
