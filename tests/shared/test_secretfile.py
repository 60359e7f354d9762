"""Secrets read from files (shared/secretfile.py): one rule for the API token and the
webhook secret, and every refusal names the option and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared import secretfile
from shared.secretfile import SecretFileError

GOOD = b"0123456789abcdef0123456789abcdef"


def write(tmp: Path, content: bytes, mode: int = 0o600) -> str:
    path = tmp / "secret"
    path.write_bytes(content)
    path.chmod(mode)
    return str(path)


def test_the_secret_is_the_files_line_without_surrounding_whitespace(tmp_path: Path) -> None:
    assert secretfile.read(write(tmp_path, b"  " + GOOD + b"\n"), "--x") == GOOD


@pytest.mark.parametrize(
    ("content", "mode", "complaint"),
    [
        (GOOD, 0o640, "is open to other users (mode 0640); chmod 600 it"),
        (GOOD, 0o604, "is open to other users"),
        (b"\n", 0o600, "is empty"),
        (b"short-secret", 0o600, "holds 12 characters; at least 16"),
        (GOOD + b" two words", 0o600, "one line of visible ASCII"),
        (GOOD * 200, 0o600, "is longer than 4096 bytes"),
    ],
)
def test_a_bad_secret_file_is_refused_naming_the_option_and_file(
    tmp_path: Path, content: bytes, mode: int, complaint: str
) -> None:
    path = write(tmp_path, content, mode)
    with pytest.raises(SecretFileError) as error:
        secretfile.read(path, "--webhook-secret-file")
    assert str(error.value).startswith(f"--webhook-secret-file {path}")
    assert complaint in str(error.value)


def test_a_missing_file_or_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match="No such file"):
        secretfile.read(str(tmp_path / "absent"), "--x")
    with pytest.raises(SecretFileError, match="not a regular file"):
        secretfile.read(str(tmp_path), "--x")
