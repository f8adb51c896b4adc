"""A real S3 API for tests: moto's server, in process, on 127.0.0.1 with a free port.

Use from any test folder (`tests/__init__.py` makes `tests` a package):

    from tests.fixtures_s3 import s3_bucket, s3_server  # noqa: F401  (pytest fixtures)

`s3_server` (session) yields the endpoint URL and sets dummy credentials; `s3_bucket`
(function) creates a fresh bucket, points `AWS_ENDPOINT_URL` at the server for the test and
yields `s3://<bucket>`. moto keeps its state in process-global backends, so the state survives
stopping one `ThreadedMotoServer` and starting another (see `start_moto_server`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # Keep a developer's ~/.aws out of the tests.
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


def start_moto_server(port: int = 0) -> tuple[object, str]:
    """Start a moto S3 server on 127.0.0.1 (`port=0`: a free one); returns (server, endpoint URL)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, real_port = server.get_host_and_port()
    return server, f"http://{host}:{real_port}"


def stop_moto_server(server: object) -> None:
    """Stop the server and close its listening socket, so clients get 'connection refused'.

    `ThreadedMotoServer.stop()` alone leaves the socket listening: connections would hang
    until the read timeout instead of failing fast as with a real outage.
    """
    server.stop()  # type: ignore[attr-defined]
    inner = getattr(server, "_server", None)
    if inner is not None:
        inner.server_close()


def create_bucket(endpoint: str, name: str | None = None) -> str:
    """Create a bucket on the server and return its name."""
    import boto3

    name = name or f"test-{uuid.uuid4().hex[:16]}"
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=DUMMY_ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key=DUMMY_ENV["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of a moto S3 server shared by the session (dummy credentials in the env)."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in DUMMY_ENV.items():
            mp.setenv(k, v)
        server, endpoint = start_moto_server()
        try:
            yield endpoint
        finally:
            stop_moto_server(server)


@pytest.fixture
def s3_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """`s3://<fresh bucket>`; `AWS_ENDPOINT_URL` points at the moto server during the test."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    return f"s3://{create_bucket(s3_server)}"
