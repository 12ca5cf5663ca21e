"""config.py: every SHOAL_* variable in one table, printed in the README, read by the library only through config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shoal import config
from shoal.errors import InvalidArgument

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", ".git", "build", ".hypothesis", "results", "cache"}
NAME = re.compile(r"\bSHOAL_[A-Z0-9_]+")
READ = re.compile(r"""(environ\s*(\.get\s*\(|\[)|getenv\s*\()\s*["']SHOAL_""")
TABLE = config.SETTINGS + config.HARNESS


def _files(*suffixes: str):
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if path.is_file() and not SKIP & set(rel.parts) and ".egg-info" not in str(rel) and \
                (path.suffix in suffixes or path.name in ("Makefile", "Dockerfile", "run")):
            yield rel, path.read_text(errors="replace")


def test_every_shoal_variable_named_anywhere_is_in_the_table():
    known = {s.name for s in TABLE}
    used: dict[str, str] = {}
    for rel, text in _files(".py", ".md", ".proto"):
        for name in NAME.findall(text):
            used.setdefault(name, str(rel))
    unknown = {name: where for name, where in used.items() if name not in known}
    assert unknown == {}, f"add these to config.SETTINGS (or HARNESS) and the README table: {unknown}"
    assert known <= set(used)


def test_the_library_reads_them_only_through_config():
    readers = {s.reader for s in config.HARNESS} | {"config.py"}
    direct = sorted(str(rel) for rel, text in _files(".py") if str(rel) not in readers and READ.search(text))
    assert direct == []


def test_the_readme_prints_the_table():
    readme = (ROOT / "README.md").read_text()
    missing = [s.name for s in TABLE if f"| `{s.name}` | {s.default} | `{s.reader}` | {s.doc} |" not in readme]
    assert missing == []


def test_values_are_parsed_with_clear_errors(monkeypatch):
    monkeypatch.delenv("SHOAL_ROW_BLOCK_KB", raising=False)
    monkeypatch.setenv("SHOAL_ROW_GAP_KB", "")
    assert config.row_block_kb() == 16.0 and config.row_gap_kb() == 256.0  # unset or empty: the default
    monkeypatch.setenv("SHOAL_CACHE_MB", "512")
    assert config.cache_mb() == 512.0
    monkeypatch.setenv("SHOAL_CACHE_MB", "lots")
    with pytest.raises(InvalidArgument, match=r"\$SHOAL_CACHE_MB must be a number, got 'lots'"):
        config.cache_mb()
    monkeypatch.setenv("SHOAL_PAYLOAD_LIMIT", "1.5k")
    with pytest.raises(InvalidArgument, match="SHOAL_PAYLOAD_LIMIT"):
        config.payload_limit()
    monkeypatch.delenv("SHOAL_S3_ENDPOINT", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert config.s3_endpoint() == "http://127.0.0.1:1"
    assert config.api_keys({"SHOAL_API_KEYS": "k:admin"}) == "k:admin" and config.api_keys({}) == ""
