"""Workspaces and codebooks under bad input: odd paths, half-made workspaces, mistyped
``-w``, read-only folders, codebooks that cannot be read as meant, and the store URL
printed with its password masked."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qualflow.cli import app
from qualflow.codebook import CodebookError, load_codebook
from tests.coders_fixture import write_transcript_file
from tests.conftest import REPO

runner = CliRunner()


def cli(*args: str, **kw):
    return runner.invoke(app, list(args), **kw)


# ---------------------------------------------------------------------- odd paths


@pytest.mark.parametrize("folder", ["study 100%", "étude-é", "a#b?c", "50%41 done"])
def test_workspace_path_with_percent_or_non_ascii_works(tmp_path: Path, folder: str):
    ws = tmp_path / folder / "ws"
    made = cli("init", str(ws))
    assert made.exit_code == 0, made.output
    assert (ws / "data" / "qualflow.sqlite3").is_file()  # the very path, not a decoded one
    write_transcript_file(tmp_path / "in", "alpha")
    assert cli("ingest", str(tmp_path / "in"), "-w", str(ws)).exit_code == 0
    status = cli("status", "-w", str(ws))
    assert status.exit_code == 0, status.output
    assert "transcripts: 1" in status.output and str(ws / "data") in status.output


# ---------------------------------------------------------------------- init is all or nothing


def test_failed_init_leaves_nothing_behind(tmp_path: Path, monkeypatch):
    from sqlalchemy.exc import OperationalError

    import qualflow.store

    def broken(settings):
        raise OperationalError("migrate", {}, Exception("disk I/O error"))

    monkeypatch.setattr(qualflow.store, "open_store", broken)
    ws = tmp_path / "new" / "ws"
    result = cli("init", str(ws))
    assert result.exit_code == 1 and "cannot open the store" in result.output
    assert "disk I/O error" in result.output
    assert not (tmp_path / "new").exists()


def test_failed_init_keeps_what_was_there(tmp_path: Path, monkeypatch):
    from sqlalchemy.exc import OperationalError

    import qualflow.store

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("mine")
    monkeypatch.setattr(
        qualflow.store,
        "open_store",
        lambda s: (_ for _ in ()).throw(OperationalError("x", {}, Exception("boom"))),
    )
    assert cli("init", str(ws)).exit_code == 1
    assert sorted(p.name for p in ws.iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------------- mistyped -w


@pytest.mark.parametrize(
    "command",
    [
        ["code"],
        ["run"],
        ["serve"],
        ["status"],
        ["ingest", "x.txt"],
        ["passages"],
        ["index"],
        ["users", "list"],
        ["export", "proposals", "out.csv"],
    ],
)
def test_mistyped_workspace_is_refused_and_nothing_is_created(tmp_path: Path, command):
    typo = tmp_path / "stuyd"
    typo.mkdir()
    result = cli(*command, "-w", str(typo))
    assert result.exit_code == 1, result.output
    assert "not a qualflow workspace" in result.output and "qualflow init" in result.output
    assert list(typo.iterdir()) == []  # no new store, no data folder


def test_workspace_made_by_the_library_is_accepted(settings, store):
    """A folder that holds a store (made by ``open_store``) counts as a workspace."""
    assert cli("status", "-w", str(settings.workspace)).exit_code == 0


# ---------------------------------------------------------------------- read-only workspace


def _without_dac_override() -> None:
    """preexec_fn: as root, give up the capability to ignore file permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")


def _as_unprivileged(args: list[str], **kw) -> subprocess.CompletedProcess:
    preexec = _without_dac_override if os.geteuid() == 0 else None
    return subprocess.run(
        [sys.executable, "-c", "from qualflow.cli import main; main()", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=preexec,
        **kw,
    )


@pytest.mark.slow
@pytest.mark.parametrize("command", [["status"], ["ingest", "in"], ["code"], ["passages"]])
def test_read_only_workspace_gives_a_clear_error(tmp_path: Path, command):
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux permissions and capabilities")
    ws = tmp_path / "ws"
    assert cli("init", str(ws)).exit_code == 0
    write_transcript_file(tmp_path / "in", "alpha")
    for path in (ws / "data", ws):
        path.chmod(0o555)
    (ws / "data" / "qualflow.sqlite3").chmod(0o444)
    try:
        args = [a if a != "in" else str(tmp_path / "in") for a in command]
        out = _as_unprivileged([*args, "-w", str(ws)])
    finally:
        for path in (ws, ws / "data"):
            path.chmod(0o755)
        (ws / "data" / "qualflow.sqlite3").chmod(0o644)
    if "PR_CAPBSET_DROP" in out.stderr:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE here")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "workspace is read-only" in out.stderr + out.stdout
    assert "Traceback" not in out.stderr + out.stdout


# ---------------------------------------------------------------------- masked password


def test_mask_url():
    from qualflow.settings import mask_url

    assert mask_url("postgresql+psycopg://qf:s3cr%40t@db:5432/q") == (
        "postgresql+psycopg://qf:***@db:5432/q"
    )
    assert mask_url("postgresql://qf@db/q") == "postgresql://qf@db/q"
    assert mask_url("sqlite:////tmp/a%25b/x.db") == "sqlite:////tmp/a%b/x.db"
    assert "hunter2" not in mask_url("not a url://u:hunter2@host/x")


def test_status_and_init_never_print_the_password(tmp_path: Path, monkeypatch):
    """An unreachable PostgreSQL URL with a password: a clear error, password masked."""
    from qualflow.local_llm import free_port

    monkeypatch.setenv(
        "QUALFLOW_DATABASE_URL", f"postgresql+psycopg://qf:hunter2@127.0.0.1:{free_port()}/q"
    )
    made = cli("init", str(tmp_path / "ws"))
    assert made.exit_code == 1 and "cannot open the store" in made.output
    assert "hunter2" not in made.output and "qf:***@127.0.0.1" in made.output
    (tmp_path / "ws2").mkdir()
    (tmp_path / "ws2" / "qualflow.toml").write_text("")
    status = cli("status", "-w", str(tmp_path / "ws2"))
    assert status.exit_code == 1 and "hunter2" not in status.output
    assert "qf:***@" in status.output


@pytest.mark.postgres
def test_status_masks_the_password_of_a_working_store(tmp_path: Path, monkeypatch):
    from tests.conftest import POSTGRES_URL

    if not POSTGRES_URL or ":" not in (POSTGRES_URL.split("@")[0].split("//")[-1]):
        pytest.skip("QUALFLOW_TEST_POSTGRES_URL with a password not set")
    password = POSTGRES_URL.split("@")[0].split(":")[-1]
    monkeypatch.setenv("QUALFLOW_DATABASE_URL", POSTGRES_URL)
    made = cli("init", str(tmp_path / "ws"))
    assert made.exit_code == 0, made.output
    status = cli("status", "-w", str(tmp_path / "ws"))
    assert status.exit_code == 0
    for out in (made.output, status.output):
        assert f":{password}@" not in out and ":***@" in out


# ---------------------------------------------------------------------- codebooks


def _yaml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "book.yaml"
    path.write_text("name: test\ncodes:\n" + body, encoding="utf-8")
    return path


def test_duplicate_titles_are_refused_with_the_titles(tmp_path: Path):
    path = _yaml(
        tmp_path,
        "  - {title: a.one, description: x}\n  - {title: a.two, description: y}\n"
        "  - {title: a.one, description: z}\n",
    )
    with pytest.raises(CodebookError, match=r"duplicate code titles: 'a\.one' \(2x\)"):
        load_codebook(path)
    assert len(load_codebook(path, allow_duplicates=True).codes) == 3  # for check


def test_codebook_load_and_code_refuse_duplicates_without_a_traceback(tmp_path: Path):
    ws = tmp_path / "ws"
    assert cli("init", str(ws)).exit_code == 0
    path = _yaml(tmp_path, "  - {title: a.one}\n  - {title: a.one}\n")
    loaded = cli("codebook", "load", str(path), "-w", str(ws))
    assert loaded.exit_code == 1 and "duplicate code titles: 'a.one'" in loaded.output
    assert "IntegrityError" not in loaded.output
    coded = cli("code", "-w", str(ws), "--codebook", str(path), "--coder", "similarity")
    assert coded.exit_code == 1 and "duplicate code titles" in coded.output
    checked = cli("codebook", "check", str(path))
    assert checked.exit_code == 0 and "appears 2 times" in checked.output


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("  - {title: a.one, examples: 5}\n", r"examples must be a list of example texts"),
        ("  - {title: a.two, parent: a}\n", r"'parent' key is not read: the hierarchy"),
        (
            "  - title: a.three\n    description: [first, second]\n",
            r"codes\[0\] \('a.three'\): description must be text, got a list",
        ),
        ("  - {title: 1.10}\n", r"title 1.1 is a float, not text .* quotes"),
        ("  - {title: a.four, colour: red}\n", r"unknown key\(s\) 'colour'"),
        ("  - {title: a.five, inclusion: {x: 1}}\n", r"inclusion must be text, got a dict"),
    ],
)
def test_codebook_fields_that_cannot_be_read_as_meant_are_errors(tmp_path, body, message):
    with pytest.raises(CodebookError, match=message) as info:
        load_codebook(_yaml(tmp_path, body))
    assert "book.yaml" in str(info.value)


def test_parent_column_in_a_table_is_an_error(tmp_path: Path):
    path = tmp_path / "book.tsv"
    path.write_text("title\tparent\tdescription\nb\ta\tx\n", encoding="utf-8")
    with pytest.raises(CodebookError, match="'parent' column is not read"):
        load_codebook(path)


def test_examples_list_and_numbers_still_read(tmp_path: Path):
    path = _yaml(
        tmp_path,
        "  - title: a.one\n    description: 2019\n    examples: [one example, 42]\n",
    )
    [code] = load_codebook(path).codes
    assert code.description == "2019" and code.examples == ["one example", "42"]


def test_malformed_settings_file_is_a_clear_error(tmp_path: Path):
    ws = tmp_path / "ws"
    assert cli("init", str(ws)).exit_code == 0
    (ws / "qualflow.toml").write_text("llm_concurrency = [oops\n")
    result = cli("status", "-w", str(ws))
    assert result.exit_code == 1 and "qualflow.toml: cannot read the settings" in result.output
