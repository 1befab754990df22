"""docs/contracts.md § Settings names every setting there is, with its env variable and
default, and nothing else: a setting added without its row (or a row for one that went)
fails here, so the docs and the code cannot drift apart again."""

from __future__ import annotations

import re
from dataclasses import MISSING, fields
from pathlib import Path

from declawd.config import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"
ROW = re.compile(r"^\| `(\w+)` \| `(DECLAWD_\w+)` \| [^|]* \| `([^`]*)`", re.M)


def _rows() -> dict[str, tuple[str, str]]:
    section = DOC.read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    return {name: (env, default) for name, env, default in ROW.findall(section)}


def test_every_setting_has_one_row_with_its_variable() -> None:
    rows = _rows()
    names = {f.name for f in fields(Settings)}
    assert set(rows) == names, (names - set(rows), set(rows) - names)
    for name, (env, _default) in rows.items():
        assert env == "DECLAWD_" + name.upper(), name


def _shown(value: object) -> str:
    """How the table writes a default: `""`, `[]`, `None`, `true`/`false`, else as is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return '""'
    return str(value)


def test_each_rows_default_is_the_settings_default() -> None:
    rows = _rows()
    for f in fields(Settings):
        if f.default is not MISSING:
            default: object = f.default
        else:
            default = f.default_factory()  # type: ignore[misc]
        assert rows[f.name][1] == _shown(default), (f.name, rows[f.name][1], default)
