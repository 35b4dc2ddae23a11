"""Credentials come from config or environment and never reach logs, errors or reprs,
even with every logger (boto3, botocore, urllib3) at DEBUG and requests failing."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.errors import StoreError
from exporter.store import open_store
from fluxrec.config import Config, Secret, load_config
from fluxrec.testing import unique_name, write_test_config

SECRET = "s3cr3t-" + unique_name("never-print")


@pytest.mark.s3
def test_s3_secret_is_not_in_logs_errors_or_reprs(
    stack_config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    s3 = dataclasses.replace(stack_config.object_store.s3, secret_key=Secret(SECRET))
    cfg = dataclasses.replace(stack_config.object_store, s3=s3)
    store = open_store(f"s3://{unique_name('b')}/p", cfg)
    with pytest.raises(StoreError) as exc:
        store.ensure_container()
        store.put("k", b"v")  # the server refuses the signature made with the wrong secret
    assert "SignatureDoesNotMatch" in str(exc.value) or "AccessDenied" in str(exc.value)
    assert caplog.records  # botocore did log at DEBUG
    for text in (caplog.text, str(exc.value), repr(exc.value), repr(store), repr(cfg), str(cfg)):
        assert SECRET not in text


def test_secrets_from_the_environment_stay_out_of_cli_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_test_config(
        tmp_path,
        s3_server=False,
        object_store={
            "url": "oss://bucket/prefix",
            "oss": {
                "endpoint": "http://127.0.0.1:1",
                "access_key_id": "${OSS_ACCESS_KEY_ID}",
                "access_key_secret": "${OSS_ACCESS_KEY_SECRET}",
            },
        },
    )
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", "id-" + SECRET)
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", SECRET)
    oss = load_config(path).object_store.oss
    assert oss.access_key_secret is not None and oss.access_key_secret.get() == SECRET
    assert SECRET not in repr(oss) + str(oss)
    out = subprocess.run(
        [sys.executable, "-m", "fluxrec.cli", "deltas", "ls", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1  # nothing listens on 127.0.0.1:1: retries, then one error
    assert out.stderr.startswith("fluxrec: error: oss://bucket/prefix: ")
    assert "StoreUnavailable" not in out.stderr and "failed 5 times" in out.stderr
    assert SECRET not in out.stdout + out.stderr
