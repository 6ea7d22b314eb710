"""`qualflow import ...` and `qualflow export ...` end to end on a real workspace."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qualflow.cli import app
from tests.test_exchange_refiqda import SMALL, zip_project
from tests.test_exchange_taguette import FIXTURES, make_project

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    result = run("init", ws)
    assert result.exit_code == 0, result.output
    return ws


def test_taguette_import_then_every_export(workspace, tmp_path):
    project = make_project(tmp_path)
    result = run("import", "taguette", project, "-w", workspace)
    assert result.exit_code == 0, result.output
    assert "2 transcripts, 4 codes, 6 highlights" in result.output
    assert "highlight 3" in result.output  # the untagged highlight is reported

    out = tmp_path / "tables"
    result = run("export", "tables", out, "-w", workspace)
    assert result.exit_code == 0, result.output
    assert "gold taguette:Tiny study / ana" in result.output
    for stem in ("code-frequency", "participant-matrix", "quotes-by-code"):
        for ext in ("csv", "xlsx", "md"):
            assert (out / f"{stem}.{ext}").stat().st_size > 0
    frequency = (out / "code-frequency.md").read_text(encoding="utf-8")
    assert "Wording not clear" in frequency and "highlights (spans)" in frequency
    assert "(6 highlights in 2 transcripts)" in result.output  # one of 5 has two tags
    result = run("export", "tables", out, "-w", workspace, "--matrix-unit", "sentences")
    assert result.exit_code == 0, result.output
    matrix = (out / "participant-matrix.md").read_text(encoding="utf-8")
    assert "sentences coded" in matrix.splitlines()[0]
    result = run("export", "tables", out, "-w", workspace, "--matrix-unit", "words")
    assert result.exit_code == 1 and "highlights or sentences" in result.output

    qdpx = tmp_path / "study.qdpx"
    result = run("export", "qdpx", qdpx, "-w", workspace, "--name", "Tiny")
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(qdpx) as zf:
        assert "project.qde" in zf.namelist()
    qdc = tmp_path / "codebook.qdc"
    assert run("export", "qdc", qdc, "-w", workspace).exit_code == 0
    assert b"Wording not clear" in qdc.read_bytes()

    result = run("export", "proposals", tmp_path / "p.csv", "-w", workspace)
    assert result.exit_code == 0 and "0 proposal rows" in result.output
    result = run("export", "decisions", tmp_path / "d.jsonl", "-w", workspace)
    assert result.exit_code == 0 and "0 decision rows" in result.output

    # the exported project comes back into the same workspace onto the same passages
    result = run("import", "qdpx", qdpx, "-w", workspace, "--gold-set", "back")
    assert result.exit_code == 0, result.output
    assert "2 transcripts" in result.output


def test_taguette_csv_import(workspace, tmp_path):
    assert run("import", "taguette", make_project(tmp_path), "-w", workspace).exit_code == 0
    result = run(
        "import",
        "taguette",
        FIXTURES / "taguette-highlights.csv",
        "--codebook",
        FIXTURES / "taguette-codebook.csv",
        "-w",
        workspace,
    )
    assert result.exit_code == 0, result.output
    assert "5 highlights" in result.output and "1 unmatched" in result.output


def test_refi_imports(workspace, tmp_path):
    result = run("import", "qdpx", zip_project(tmp_path), "-w", workspace)
    assert result.exit_code == 0, result.output
    assert "'scan' skipped" in result.output
    assert "ana: " in result.output and "BO: " in result.output
    result = run("import", "qdc", FIXTURES / "codebook.qdc", "-w", workspace)
    assert result.exit_code == 0 and "3 codes" in result.output


def test_clear_errors(workspace, tmp_path):
    junk = tmp_path / "junk.qdpx"
    junk.write_bytes(b"not a zip")
    result = run("import", "qdpx", junk, "-w", workspace)
    assert result.exit_code == 1 and "not a zip archive" in result.output
    qde = (SMALL / "project.qde").read_text(encoding="utf-8")
    broken = zip_project(tmp_path, qde.replace('endPosition="210"', 'endPosition="999"').encode())
    result = run("import", "qdpx", broken, "-w", workspace)
    assert result.exit_code == 1 and "c0000000-0000-0000-0000-000000000003" in result.output
    result = run("import", "qdpx", broken, "-w", workspace, "--lenient")
    assert result.exit_code == 0 and "out of range" in result.output
    result = run("import", "taguette", junk, "-w", workspace)
    assert result.exit_code == 1 and "not a SQLite database" in result.output
    result = run("export", "tables", tmp_path / "t", "-w", workspace, "--source", "gold:none")
    assert result.exit_code == 1 and "no gold set" in result.output
    result = run("export", "proposals", tmp_path / "p.xml", "-w", workspace)
    assert result.exit_code == 1 and "unknown format" in result.output
    result = run("import", "qdpx", junk, "-w", tmp_path / "not-a-workspace")
    assert result.exit_code == 1 and "not a qualflow workspace" in result.output


def test_configured_schema_dir(workspace, tmp_path):
    config = workspace / "qualflow.toml"
    config.write_text(
        config.read_text(encoding="utf-8") + '\nrefi_schema_dir = "schemas"\n', encoding="utf-8"
    )
    result = run("import", "qdc", FIXTURES / "codebook.qdc", "-w", workspace)
    assert result.exit_code == 1 and "Project.xsd, Codebook.xsd not found" in result.output
    # a copy of the fixture schemas is not available without ../shared: use --no-validate
    result = run("import", "qdc", FIXTURES / "codebook.qdc", "-w", workspace, "--no-validate")
    assert result.exit_code == 0, result.output


def test_schema_dir_from_settings_validates(workspace):
    from tests.conftest import needs_shared

    schemas = needs_shared("refi-qda", "Codebook.xsd").parent
    config = workspace / "qualflow.toml"
    config.write_text(
        config.read_text(encoding="utf-8") + f'\nrefi_schema_dir = "{schemas}"\n',
        encoding="utf-8",
    )
    result = run("import", "qdc", FIXTURES / "codebook-invalid.qdc", "-w", workspace)
    assert result.exit_code == 1
    assert "does not validate against Codebook.xsd: line 6" in result.output


def test_bad_segmentation_is_a_clear_error(workspace, tmp_path):
    result = run("import", "qdpx", zip_project(tmp_path), "-w", workspace, "--segmentation", "x")
    assert result.exit_code == 1 and "unknown segmentation mode" in result.output
    result = run(
        "import", "taguette", make_project(tmp_path), "-w", workspace, "--segmentation", "x"
    )
    assert result.exit_code == 1 and "unknown segmentation mode" in result.output


def test_export_notices_project_name_and_codebook_csv(workspace, tmp_path):
    from tests.test_exchange_qdpx_export import rich_project

    result = run("import", "qdpx", rich_project(tmp_path), "-w", workspace)
    assert result.exit_code == 0, result.output
    out = tmp_path / "back.qdpx"
    result = run("export", "qdpx", out, "-w", workspace)
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(out) as zf:
        qde = zf.read("project.qde").decode("utf-8")
    assert 'name="Reiche Studie"' in qde  # the imported project's name, not the folder's
    assert "1 sets" in result.output and "cleo: 0" in result.output
    csv_out = tmp_path / "codebook.csv"
    result = run("export", "codebook", csv_out, "-w", workspace)
    assert result.exit_code == 0, result.output
    assert csv_out.read_text(encoding="utf-8").splitlines()[0] == "tag,description"
    assert "Taguette" in result.output


def test_taguette_notices_and_errors_name_the_options(workspace, tmp_path):
    from tests.test_exchange_taguette import EXPORTED

    result = run("import", "taguette", make_project(tmp_path, *EXPORTED), "-w", workspace)
    assert result.exit_code == 0, result.output
    assert "Export project" in result.output and "--project-id" in result.output
    several = make_project(
        tmp_path / "two", "INSERT INTO projects VALUES (2, 'Other', '', '2024-01-02 10:00:00')"
    )
    result = run("import", "taguette", several, "-w", workspace)
    assert result.exit_code == 1 and "--project-id" in result.output
    result = run("import", "taguette", several, "-w", workspace, "--project-id", "1")
    assert result.exit_code == 0, result.output


def test_validation_failure_names_no_validate(workspace):
    from tests.conftest import needs_shared

    needs_shared("refi-qda", "Codebook.xsd")
    result = run("import", "qdc", FIXTURES / "codebook-invalid.qdc", "-w", workspace)
    assert result.exit_code == 1 and "--no-validate" in result.output
    result = run("import", "qdc", FIXTURES / "taguette-codebook.qdc", "-w", workspace)
    assert result.exit_code == 0 and "empty <Sets/>" in result.output
