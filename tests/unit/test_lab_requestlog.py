"""The lab request log: per-host files, bounded by rotation, read back by host and time, and
the `declawd lab requests` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from declawd.config import Settings
from declawd.lab.cli import app
from declawd.lab.config import LabConfigError
from declawd.lab.requestlog import RequestLog, read_requests, request_log_dir


def _entry(t: float, host: str, **kw: object) -> dict:
    return {"time": t, "host": host, "method": "GET", "target": "/", "status": 200, **kw}


def test_entries_are_read_back_per_host_and_since(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    log = RequestLog(request_log_dir(settings))
    log.record("example.com", _entry(1.0, "example.com"))
    log.record("evil.com", _entry(2.0, "evil.com"))
    log.record("example.com", _entry(3.0, "example.com"))
    log.record("*.wild.lab", _entry(4.0, "*.wild.lab"))
    # on disk at once (flushed), before close
    assert [e["time"] for e in read_requests(settings, host="example.com")] == [1.0, 3.0]
    assert [e["time"] for e in read_requests(settings, host="Example.COM.")] == [1.0, 3.0]
    assert [e["time"] for e in read_requests(settings)] == [1.0, 2.0, 3.0, 4.0]
    assert [e["time"] for e in read_requests(settings, since=2.0)] == [2.0, 3.0, 4.0]
    assert [e["host"] for e in read_requests(settings, host="*.wild.lab")] == ["*.wild.lab"]
    assert read_requests(settings, host="never.example") == []
    log.close()
    log.record("example.com", _entry(5.0, "example.com"))  # after close: dropped
    assert len(read_requests(settings, host="example.com")) == 2


def test_a_log_without_entries_reads_empty(tmp_path: Path) -> None:
    assert read_requests(Settings(state_dir=tmp_path)) == []


def test_host_names_are_validated(tmp_path: Path) -> None:
    with pytest.raises(LabConfigError) as err:
        read_requests(Settings(state_dir=tmp_path), host="../etc/passwd")
    assert err.value.field == "host"


def test_partial_last_line_is_skipped(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    log = RequestLog(request_log_dir(settings))
    log.record("a.lab", _entry(1.0, "a.lab"))
    log.close()
    with (request_log_dir(settings) / "a.lab.log").open("a") as f:
        f.write('{"time": 2.0, "ho')
    assert [e["time"] for e in read_requests(settings, host="a.lab")] == [1.0]


def test_rotation_bounds_the_files_and_keeps_the_newest(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    directory = request_log_dir(settings)
    log = RequestLog(directory, max_bytes=1000)
    for i in range(100):
        log.record("a.lab", _entry(float(i), "a.lab", pad="x" * 50))
    log.close()
    current, older = directory / "a.lab.log", directory / "a.lab.log.1"
    assert current.stat().st_size <= 1000 and older.stat().st_size <= 1000
    times = [e["time"] for e in read_requests(settings, host="a.lab")]
    assert times == sorted(times) and times[-1] == 99.0
    assert len(times) < 100  # the oldest are gone
    assert times == [float(i) for i in range(100 - len(times), 100)]  # no gap


def test_reopening_appends_and_counts_the_existing_size(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    directory = request_log_dir(settings)
    first = RequestLog(directory, max_bytes=1000)
    for i in range(5):
        first.record("a.lab", _entry(float(i), "a.lab", pad="x" * 100))
    first.close()
    second = RequestLog(directory, max_bytes=1000)
    for i in range(5, 10):
        second.record("a.lab", _entry(float(i), "a.lab", pad="x" * 100))
    second.close()
    assert (directory / "a.lab.log").stat().st_size <= 1000
    assert [e["time"] for e in read_requests(settings, host="a.lab")][-1] == 9.0


def test_cli_prints_lines_or_json(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    log = RequestLog(request_log_dir(settings))
    log.record("a.lab", _entry(1.0, "a.lab", client="100.96.0.1", body_size=5))
    log.record("b.lab", _entry(2.0, "b.lab", client="100.96.0.1", body_size=0))
    log.close()
    runner = CliRunner()
    base = ["requests", "--state-dir", str(tmp_path)]
    as_json = runner.invoke(app, [*base, "--json", "--host", "b.lab"])
    assert as_json.exit_code == 0, as_json.output
    assert [e["host"] for e in json.loads(as_json.output)] == ["b.lab"]
    since = runner.invoke(app, [*base, "--json", "--since", "1970-01-01T00:00:01.5Z"])
    assert [e["time"] for e in json.loads(since.output)] == [2.0]
    plain = runner.invoke(app, base)
    lines = plain.output.splitlines()
    assert len(lines) == 2
    assert "a.lab" in lines[0] and "GET" in lines[0] and "200" in lines[0] and "5 B" in lines[0]
    bad = runner.invoke(app, [*base, "--host", "a b"])
    assert bad.exit_code == 2 and "--host" in bad.output
