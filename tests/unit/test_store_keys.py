"""Teams, API keys, the dev key file and the `declawd keys` CLI."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from declawd.store import AmbiguousKey, Duplicate, Store
from declawd.store import keys as keys_mod
from declawd.store.cli import app


@pytest.fixture
def store(db_target: Path | str) -> Iterator[Store]:
    with Store(db_target) as s:
        yield s


def test_team_create_and_lookup(store: Store) -> None:
    team_id = store.create_team("acme")
    assert team_id.startswith("team-") and len(team_id) == len("team-") + 12
    assert store.get_team(team_id)["name"] == "acme"  # type: ignore[index]
    assert store.get_team_by_name("acme")["team_id"] == team_id  # type: ignore[index]
    assert store.get_team_by_name("nope") is None
    assert store.get_team("team-000000000000") is None
    store.create_team("beta")
    assert [t["name"] for t in store.list_teams()] == ["acme", "beta"]


def test_team_name_is_unique(store: Store) -> None:
    store.create_team("acme")
    with pytest.raises(Duplicate):
        store.create_team("acme")


def test_key_shape_and_authentication(store: Store) -> None:
    team = store.create_team("acme")
    key_id, key = store.create_api_key(team, name="ci")
    assert key_id.startswith("key-") and len(key_id) == 16
    assert key.startswith("dcw_") and len(key) == 44
    assert store.authenticate(key) == {"team_id": team, "key_id": key_id}
    assert store.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert store.authenticate("") is None
    assert store.authenticate("Bearer " + key) is None


def test_key_for_unknown_team_is_refused(store: Store) -> None:
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        store.create_api_key("team-000000000000")


def test_only_the_hash_is_stored(store: Store) -> None:
    team = store.create_team("acme")
    _, key = store.create_api_key(team)
    if store.dialect == "sqlite":
        dump = "\n".join(store._db.conn().iterdump())  # type: ignore[attr-defined]
    else:  # every row of every table
        tables = store._db.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        dump = "\n".join(
            repr(tuple(row)) for (t,) in tables for row in store._db.query(f"SELECT * FROM {t}")
        )
    assert key not in dump
    assert keys_mod.hash_key(key) in dump


def test_list_keys_never_returns_the_hash(store: Store) -> None:
    a = store.create_team("a")
    b = store.create_team("b")
    ka, key_a = store.create_api_key(a, name="one")
    kb, _ = store.create_api_key(b)
    listed = store.list_api_keys()
    assert [k["key_id"] for k in listed] == [ka, kb]
    assert all("key_hash" not in k for k in listed)
    assert listed[0]["prefix"] == key_a[:12]
    assert listed[0]["team_name"] == "a" and listed[0]["name"] == "one"
    assert [k["key_id"] for k in store.list_api_keys(b)] == [kb]


def test_revocation_is_immediate_across_connections(db_target: Path | str) -> None:
    db = db_target
    with Store(db) as server, Store(db) as cli:
        team = server.create_team("acme")
        key_id, key = server.create_api_key(team)
        assert server.authenticate(key) is not None
        assert cli.revoke_api_key(key_id) is True
        assert server.authenticate(key) is None
        assert cli.revoke_api_key(key_id) is False  # already revoked


def test_revoke_by_prefix_or_full_key(store: Store) -> None:
    team = store.create_team("acme")
    _, k1 = store.create_api_key(team)
    _, k2 = store.create_api_key(team)
    assert store.revoke_api_key(k1[:12]) is True
    assert store.authenticate(k1) is None
    assert store.authenticate(k2) is not None
    assert store.revoke_api_key(k2) is True
    assert store.authenticate(k2) is None
    assert store.revoke_api_key("key-000000000000") is False
    assert store.revoke_api_key("") is False


def test_ambiguous_prefix_is_refused(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    team = store.create_team("acme")
    made = iter(["dcw_SAMEPREF" + "a" * 32, "dcw_SAMEPREF" + "b" * 32])
    monkeypatch.setattr(keys_mod, "generate_key", lambda: next(made))
    store.create_api_key(team)
    store.create_api_key(team)
    with pytest.raises(AmbiguousKey):
        store.revoke_api_key("dcw_SAMEPREF")
    assert all(k["revoked_at"] is None for k in store.list_api_keys())


def test_dev_key_created_once_then_reused(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "keys" / "dev-api-key"
    team, key, created = store.ensure_dev_key(path)
    assert created is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == key
    assert store.get_team(team)["name"] == "default"  # type: ignore[index]
    assert store.authenticate(key) == {
        "team_id": team,
        "key_id": store.list_api_keys()[0]["key_id"],
    }
    assert store.ensure_dev_key(path) == (team, key, False)
    assert len(store.list_api_keys()) == 1


def test_dev_key_replaced_when_revoked_or_garbled(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "dev-api-key"
    team, key, _ = store.ensure_dev_key(path)
    store.revoke_api_key(key)
    team2, key2, created = store.ensure_dev_key(path)
    assert created and team2 == team and key2 != key
    assert path.read_text().strip() == key2
    path.write_text("not a key\n")
    path.chmod(0o644)
    _, key3, created = store.ensure_dev_key(path)
    assert created and store.authenticate(key3) is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# CLI -------------------------------------------------------------------------------


def _run(*args: str) -> tuple[int, str, str]:
    try:  # click < 8.2 mixes stderr into stdout unless told not to
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:  # click >= 8.2 always keeps them apart
        runner = CliRunner()
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_create_list_revoke(tmp_path: Path) -> None:
    code, out, err = _run("create", "--team", "acme", "--name", "ci", "--state-dir", str(tmp_path))
    assert code == 0, err
    key = out.strip()
    with Store(tmp_path / "declawd.db") as store:
        auth = store.authenticate(key)
        assert auth is not None
        assert store.get_team(auth["team_id"])["name"] == "acme"  # type: ignore[index]

    code, out, _ = _run("list", "--state-dir", str(tmp_path))
    assert code == 0
    assert auth["key_id"] in out and key[:12] in out and key not in out

    code, out, _ = _run("revoke", auth["key_id"], "--state-dir", str(tmp_path))
    assert code == 0
    with Store(tmp_path / "declawd.db") as store:
        assert store.authenticate(key) is None
    code, _, err = _run("revoke", auth["key_id"], "--state-dir", str(tmp_path))
    assert code == 1 and "no active key" in err


def test_cli_second_key_reuses_team(tmp_path: Path) -> None:
    for _ in range(2):
        assert _run("create", "--team", "acme", "--state-dir", str(tmp_path))[0] == 0
    with Store(tmp_path / "declawd.db") as store:
        assert len(store.list_teams()) == 1
        assert len(store.list_api_keys()) == 2


def test_cli_state_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECLAWD_STATE_DIR", str(tmp_path / "envstate"))
    assert _run("create", "--team", "acme")[0] == 0
    assert (tmp_path / "envstate" / "declawd.db").exists()


def test_cli_list_unknown_team_fails(tmp_path: Path) -> None:
    code, _, err = _run("list", "--team", "ghost", "--state-dir", str(tmp_path))
    assert code == 1 and "ghost" in err
