from pathlib import Path

import pytest

from qualflow.codebook import CodebookError, check_codebook, load_codebook, summarize, to_yaml
from tests.conftest import REPO, SERDIF, needs_shared


def kinds(quirks):
    return {q.kind for q in quirks}


def test_shipped_study_codebook_has_85_codes_in_13_categories():
    cb = load_codebook("benchmark-practices")
    info = summarize(cb)
    assert (info["codes"], info["categories"]) == (85, 13)
    assert cb.get("01.use.frequency.daily").description == "Use benchmarks daily"
    assert [c.title for c in cb.children("01.use.frequency")][:2] == [
        "01.use.frequency.daily",
        "01.use.frequency.infrequently",
    ]
    assert cb.parent_of("01.use.frequency.daily") == "01.use.frequency"


def test_shipped_yaml_is_the_study_tsv_unchanged():
    tsv = needs_shared("study", "codebook.tsv")
    assert load_codebook(tsv).version == load_codebook("benchmark-practices").version


def test_check_reports_the_study_quirks_without_fixing_them():
    cb = load_codebook("benchmark-practices")
    quirks = check_codebook(cb)
    case = [q for q in quirks if q.kind == "case_variant"]
    assert len(case) == 1 and case[0].titles == ["01.Use.information.progress"]
    unused = sorted(t for q in quirks if q.kind == "unused" for t in q.titles)
    assert len(unused) == 4 and "01.use.frequency.infrequently" in unused
    assert "parent_applied" in kinds(quirks)
    assert cb.get("01.Use.information.progress") is not None  # not renamed


def test_check_reports_duplicates_and_missing_descriptions(tmp_path: Path):
    f = tmp_path / "cb.tsv"
    f.write_text("title\tdescription\tcount\na.b\tfirst\t3\na.b\tagain\t1\nA.c\t\t2\na.d\tx\t1\n")
    quirks = check_codebook(load_codebook(f, allow_duplicates=True))
    assert {"duplicate", "missing_description", "case_variant"} <= kinds(quirks)


def test_serdif_csv_reads_as_is_with_multiline_descriptions():
    path = needs_shared("corpora", "serdif-usability", "codebooks", "codebook_20220303_8.csv")
    cb = load_codebook(path)
    assert len(cb.codes) == 22
    assert any("\n" in c.description for c in cb.codes)
    assert all(c.count is not None for c in cb.codes)
    assert len(cb.categories()) == 22  # flat


def test_all_nine_serdif_versions_load_with_distinct_versions():
    folder = needs_shared("corpora", "serdif-usability", "codebooks")
    versions = {load_codebook(p).version for p in sorted(folder.glob("*.csv"))}
    assert len(versions) >= 2


def test_version_ignores_row_order_and_whitespace(tmp_path: Path):
    a = tmp_path / "a.csv"
    b = tmp_path / "b.csv"
    a.write_text("tag,description\nX,one  two\nY,three\n")
    b.write_text("tag,description\nY,three\nX,one two\n")
    assert load_codebook(a).version == load_codebook(b).version
    b.write_text("tag,description\nY,three\nX,one two three\n")
    assert load_codebook(a).version != load_codebook(b).version


def test_yaml_round_trip(tmp_path: Path):
    cb = load_codebook("benchmark-practices")
    f = tmp_path / "cb.yaml"
    f.write_text(to_yaml(cb))
    again = load_codebook(f)
    assert again.version == cb.version and again.codes == cb.codes


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("", ".tsv", "empty"),
        ("label\tx\nfoo\tbar\n", ".tsv", "no title column"),
        ("title,count\na,many\n", ".csv", "row 2: count 'many'"),
        ("codes: nope\n", ".yaml", "'codes' list"),
        ("codes:\n  - description: no title\n", ".yaml", "codes[0]: missing title"),
        ("title\n", ".xlsx", "unsupported codebook format"),
    ],
)
def test_bad_codebooks_name_the_file_and_reason(tmp_path, content, suffix, message):
    f = tmp_path / f"bad{suffix}"
    f.write_text(content)
    with pytest.raises(CodebookError) as err:
        load_codebook(f)
    assert str(f) in str(err.value) and message in str(err.value)


def test_unknown_codebook_name():
    with pytest.raises(CodebookError, match="no such codebook"):
        load_codebook("no-such-codebook")


def test_repo_does_not_contain_shared_corpora():
    assert not list(REPO.rglob("taguette-project.sqlite3"))
    assert not any(p.name.startswith("P1_GMT") for p in REPO.rglob("*.odt"))
    assert SERDIF.name == "serdif-usability"
