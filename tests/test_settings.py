"""Settings come from LABELWHEEL_* variables; a wrong one stops start-up naming the variable."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.settings import SettingsError, load_settings


def test_defaults_keep_everything_under_the_data_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / '.labelwheel' / 'labelwheel.db'}"
    assert settings.resolved_blob_url == (tmp_path / ".labelwheel" / "blobs").as_uri()
    assert settings.uses_sqlite


def test_settings_are_read_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LABELWHEEL_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("LABELWHEEL_DATABASE_URL", "postgresql+psycopg://u@db:5432/lw")
    monkeypatch.setenv("LABELWHEEL_BLOB_URL", "s3://bucket/images")
    monkeypatch.setenv("LABELWHEEL_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("LABELWHEEL_MAX_FILE_BYTES", "1234")
    settings = load_settings()
    assert settings.data_dir == tmp_path / "d"
    assert not settings.uses_sqlite
    assert settings.resolved_blob_url == "s3://bucket/images"
    assert settings.max_file_bytes == 1234


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LABELWHEEL_DATABASE_URL", "mysql://root@localhost/x"),
        ("LABELWHEEL_BLOB_URL", "ftp://somewhere"),
        ("LABELWHEEL_MAX_FILE_BYTES", "-5"),
        ("LABELWHEEL_PORT", "http"),
        ("LABELWHEEL_ADMIN_TOKEN", "changeme"),
        ("LABELWHEEL_LOG_LEVEL", "LOUD"),
    ],
)
def test_a_wrong_setting_is_reported_with_its_variable_name(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert variable in str(raised.value)


def test_s3_credentials_come_in_pairs(monkeypatch):
    monkeypatch.setenv("LABELWHEEL_S3_ACCESS_KEY_ID", "key")
    with pytest.raises(SettingsError, match="LABELWHEEL_S3_SECRET_ACCESS_KEY"):
        load_settings()


def test_an_unknown_variable_is_named_with_the_closest_setting(monkeypatch, caplog):
    monkeypatch.setenv("LABELWHEEL_ADMIN_TOKN", "a-typo-of-the-admin-token-variable")
    monkeypatch.setenv("LABELWHEEL_COLOUR", "blue")
    monkeypatch.setenv("LABELWHEEL_TEST_WHATEVER", "the test suite's own")
    monkeypatch.setenv("LABELWHEEL_TOKEN", "the remote commands' own")
    monkeypatch.setenv("labelwheel_max_file_bytes", "1234")  # a setting in any case
    with caplog.at_level(logging.WARNING, logger="storage.settings"):
        settings = load_settings()
    assert settings.admin_token is None and settings.max_file_bytes == 1234
    assert caplog.messages == [
        "LABELWHEEL_ADMIN_TOKN is not a labelwheel setting and is ignored; did you mean LABELWHEEL_ADMIN_TOKEN?",
        "LABELWHEEL_COLOUR is not a labelwheel setting and is ignored; see Configuration in the README for the "
        "settings",
    ]


def test_start_up_warns_of_unknown_variables_and_refuses_a_wrong_setting(tmp_path):
    """`serve` here; `worker` and every other command read their settings through the same loader."""
    env = {
        **os.environ,
        "LABELWHEEL_DATA_DIR": str(tmp_path),
        "LABELWHEEL_MAX_IMAGE_PIXELS": "lots",
        "LABELWHEEL_ADMIN_TOKN": "a-typo-of-the-admin-token-variable",
    }
    labelwheel = Path(sys.executable).parent / "labelwheel"
    result = subprocess.run([str(labelwheel), "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "LABELWHEEL_MAX_IMAGE_PIXELS" in result.stderr
    assert "LABELWHEEL_ADMIN_TOKN is not a labelwheel setting" in result.stderr
    assert "did you mean LABELWHEEL_ADMIN_TOKEN?" in result.stderr
