"""Storage: which errors are retried, by whom, and what reaches the workers."""

from __future__ import annotations

import json

import fsspec
import pytest

from pipeline import storage


def test_workers_get_only_the_options_the_user_passed(monkeypatch, tmp_path):
    from pipeline.cli import spec_from_args, transcode_parser

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEXAMPLE")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    argv = ["--input", "s3://bucket/in", "--output", "s3://bucket/out", "--qp", "2"]
    spec = spec_from_args(transcode_parser().parse_args(argv))
    assert spec.input_options == {} and spec.output_options == {}  # each node resolves its own
    given = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    (tmp_path / "opts.json").write_text(json.dumps(given))
    spec = spec_from_args(transcode_parser().parse_args(argv + ["--storage-options", f"@{tmp_path / 'opts.json'}"]))
    assert spec.input_options == given == spec.output_options  # what the user passed travels
    assert "wJalr" not in repr(spec) and "AKIA" not in repr(spec) and "FwoG" not in repr(spec)
    fs, _ = storage.filesystem("s3://bucket/x", {"anon": True})
    assert fs.config_kwargs == storage.S3_RETRIES  # botocore's adaptive retries, not a loop of ours


class NoCredentialsError(Exception):  # botocore's name; matched by name, as botocore is not imported here
    pass


class ClientError(Exception):
    def __init__(self, code: str):
        super().__init__(code)
        self.response = {"Error": {"Code": code}}


@pytest.mark.parametrize("exc, permanent", [
    (FileNotFoundError("x"), True), (PermissionError("x"), True), (NoCredentialsError(), True),
    (ClientError("ExpiredToken"), True), (ClientError("AccessDenied"), True), (ClientError("SlowDown"), False),
    (ConnectionError("reset"), False), (TimeoutError(), False),
])
def test_credential_errors_are_never_retried(exc, permanent):
    calls = []

    def fail():
        calls.append(1)
        raise exc

    wrapped = OSError("wrapped")
    wrapped.__cause__ = exc
    assert storage.is_permanent(exc) is permanent and storage.is_permanent(wrapped) is permanent
    with pytest.raises(type(exc)):
        storage.with_retries(fail, "op", attempts=3, base_delay=0.001)
    assert len(calls) == (1 if permanent else 3)


def test_clients_that_retry_themselves_are_not_retried_again():
    assert storage.attempts_for(fsspec.filesystem("file")) > 1
    s3 = fsspec.get_filesystem_class("s3")
    assert storage.attempts_for(s3.__new__(s3)) == 1  # botocore retries with backoff already
