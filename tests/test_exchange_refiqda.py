"""REFI-QDA import/export: real files from other tools, hand-written fixtures, round trips."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
from lxml import etree

from qualflow.exchange.refiqda import (
    RefiError,
    export_qdc,
    export_qdpx,
    find_schema_dir,
    import_qdc,
    import_qdpx,
    read_qdc,
    read_qdpx,
    source_transcript,
)
from qualflow.highlights import load_highlights
from tests.conftest import needs_shared
from tests.fixtures.exchange.study import CODEBOOK, build_study

FIXTURES = Path(__file__).parent / "fixtures" / "exchange"
SMALL = FIXTURES / "refi-small"


def zip_project(tmp_path: Path, qde: bytes | None = None, name: str = "small.qdpx") -> Path:
    """The hand-written project as a .qdpx (optionally with another project.qde)."""
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("project.qde", qde if qde is not None else (SMALL / "project.qde").read_bytes())
        zf.write(SMALL / "sources" / "interview.txt", "sources/interview.txt")
    return path


def small_qde(**replace: str) -> bytes:
    text = (SMALL / "project.qde").read_text(encoding="utf-8")
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text.encode("utf-8")


def schema_or_skip() -> Path:
    return needs_shared("refi-qda", "Project.xsd").parent


# ---------------------------------------------------------------------- hand-written project


def test_fixture_source_has_windows_line_endings():
    assert b"\r\n" in (SMALL / "sources" / "interview.txt").read_bytes()


def test_read_small_project(tmp_path):
    project = read_qdpx(zip_project(tmp_path), schema_dir=find_schema_dir())
    assert project.name == "Kleine Studie"
    assert project.codebook().titles() == [
        "use.frequency",
        "use.frequency.daily",
        "selection",
        "closing",
    ]  # the non-codable folder 'use' is a path segment, not a code
    assert project.codebook().get("use.frequency.daily").description == "Täglich."
    assert [s.name for s in project.sources] == ["Interview Zoë", "memo.txt"]
    assert any("'scan' skipped" in n and "rich text" in n for n in project.notices)
    interview = project.sources[0]
    text = interview.text
    assert "\r\n" in text
    spans = [text[s.start : s.end] for s in interview.selections]
    assert spans == [
        "Täglich – ehrlich gesagt.",
        "Wir wählen das Modell mit dem besten „Score“.",
        "Nein, danke.",
    ]
    assert project.user_label("22222222-2222-2222-2222-222222222222") == "BO"  # id, no name
    assert interview.selections[0].codings[0].notes == ["She says “täglich”."]


def test_import_small_project(store, tmp_path):
    result = import_qdpx(store, zip_project(tmp_path), schema_dir=find_schema_dir())
    assert len(result.transcripts) == 2
    assert result.codes == 4 and result.selections == 4 and result.codings == 5
    assert result.problems == []
    gold = store.gold("refi:Kleine Studie")
    assert set(gold) == {"ana", "BO"}
    passages = store.passages()

    def codes(coder: str, fragment: str) -> frozenset[str]:
        return gold[coder][next(p.id for p in passages if fragment in p.text)]

    assert codes("ana", "Täglich") == {"use.frequency.daily"}
    assert codes("BO", "Täglich") == {"use.frequency"}
    assert codes("ana", "besten „Score“") == {"selection"}
    assert codes("ana", "Café") == frozenset()
    assert codes("BO", "Nein, danke") == {"closing"}
    assert codes("ana", "selection is done") == {"selection"}
    # BO coded only the interview: the memo's passages are not BO's "no code"
    memo = store.transcripts()[0] if "memo" in store.transcripts()[0].name else None
    memo = memo or store.transcripts()[1]
    assert not any(p.transcript_id == memo.id for p in passages if p.id in gold["BO"])
    # speakers come from 'Name:' labels; offsets line up with the verbatim text
    interview = next(t for t in store.transcripts() if "Zoë" in t.name)
    assert [t.speaker for t in interview.turns] == ["Interviewer", "Zoë", "Interviewer", "Zoë"]
    for turn in interview.turns:
        assert interview.text[turn.char_start : turn.char_end] == turn.text
    noted = [h for h in load_highlights(store) if h.memo]
    assert [h.memo for h in noted] == ["She says “täglich”."]


def test_offsets_out_of_range_name_the_selection(store, tmp_path):
    qde = small_qde(
        **{'startPosition="198" endPosition="210"': 'startPosition="198" endPosition="999"'}
    )
    path = zip_project(tmp_path, qde)
    with pytest.raises(RefiError, match="selection c0000000-0000-0000-0000-000000000003") as err:
        import_qdpx(store, path, schema_dir=find_schema_dir())
    assert "out of range" in str(err.value) and "212 characters" in str(err.value)
    lenient = import_qdpx(store, path, schema_dir=find_schema_dir(), strict=False)
    assert lenient.selections == 3
    assert any("c0000000-0000-0000-0000-000000000003" in n for n in lenient.notices)


def test_bad_zip_and_missing_parts(store, tmp_path):
    junk = tmp_path / "junk.qdpx"
    junk.write_bytes(b"<Project/> this is not a zip")
    with pytest.raises(RefiError, match="not a zip archive"):
        import_qdpx(store, junk)
    truncated = tmp_path / "truncated.qdpx"
    truncated.write_bytes(zip_project(tmp_path).read_bytes()[:-30])
    with pytest.raises(RefiError, match=r"truncated\.qdpx"):
        read_qdpx(truncated)
    empty = tmp_path / "empty.qdpx"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "nothing here")
    with pytest.raises(RefiError, match=r"no project\.qde"):
        read_qdpx(empty)
    with pytest.raises(RefiError, match="no such file"):
        read_qdpx(tmp_path / "absent.qdpx")


def test_not_well_formed_xml(tmp_path):
    path = zip_project(tmp_path, small_qde(**{"</Sources>": "</Source>"}))
    with pytest.raises(RefiError, match=r"not well-formed XML: line \d+"):
        read_qdpx(path, check_schema=False)


def test_schema_invalid_project_names_the_line(tmp_path):
    schema_dir = schema_or_skip()
    qde = small_qde(**{'name="selection" isCodable="true"': 'name="selection"'})
    with pytest.raises(RefiError, match=r"Project.xsd: line 22: .*isCodable.* missing"):
        read_qdpx(zip_project(tmp_path, qde), schema_dir=schema_dir)
    # without validation the same file is read (isCodable defaults to true)
    assert read_qdpx(zip_project(tmp_path, qde, "b.qdpx"), check_schema=False).codes


def test_missing_schema_is_a_notice_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("QUALFLOW_SHARED_DIR", str(tmp_path / "nowhere"))
    assert find_schema_dir() is None
    project = read_qdpx(zip_project(tmp_path))
    assert any("not validated" in n and "refi_schema_dir" in n for n in project.notices)
    with pytest.raises(RefiError, match=r"Project\.xsd"):
        find_schema_dir(tmp_path)  # a configured folder without the schemas


def test_settings_schema_dir(settings):
    assert settings.refi_schema_dir is None
    assert "Project.xsd" in type(settings).model_fields["refi_schema_dir"].description


# ---------------------------------------------------------------------- codebooks (.qdc)


def test_read_qdc():
    codebook, _ = read_qdc(FIXTURES / "codebook.qdc", schema_dir=find_schema_dir())
    assert codebook.titles() == ["use.frequency", "use.frequency.daily", "selection"]
    assert codebook.get("use.frequency.daily").description == "Täglich – every day."


def test_schema_invalid_qdc():
    schema_dir = needs_shared("refi-qda", "Codebook.xsd").parent
    with pytest.raises(RefiError, match=r"codebook-invalid.qdc: does not validate .* line 6") as e:
        read_qdc(FIXTURES / "codebook-invalid.qdc", schema_dir=schema_dir)
    assert "--no-validate" in str(e.value)  # says how to read it anyway


def test_taguettes_own_codebook_is_accepted_with_a_notice():
    """Taguette's "Export codebook > QDC" (the fixture is in the exact form Taguette
    1.4 writes: uppercase GUIDs, no descriptions, an empty <Sets/> that Codebook.xsd
    does not allow)."""
    schema_dir = needs_shared("refi-qda", "Codebook.xsd").parent
    codebook, notices = read_qdc(FIXTURES / "taguette-codebook.qdc", schema_dir=schema_dir)
    assert codebook.titles() == [
        "Positive experience",
        "Wording not clear",
        "Additional explanation",
        "Simple export",
    ]
    (notice,) = notices
    assert "empty <Sets/>" in notice and "Taguette 1.4.1" in notice


def test_a_real_schema_error_still_fails_after_tolerance(tmp_path):
    schema_dir = needs_shared("refi-qda", "Codebook.xsd").parent
    text = (FIXTURES / "taguette-codebook.qdc").read_text(encoding="utf-8")
    bad = tmp_path / "bad.qdc"
    bad.write_text(text.replace(' isCodable="true"', "", 1), encoding="utf-8")
    with pytest.raises(RefiError, match=r"isCodable.*--no-validate"):
        read_qdc(bad, schema_dir=schema_dir)
    codebook, _ = read_qdc(bad, check_schema=False)
    assert len(codebook.codes) == 4


def test_qdc_import_keeps_guids_and_colours_for_exports(store, tmp_path):
    version, _, _ = import_qdc(store, FIXTURES / "codebook.qdc", schema_dir=find_schema_dir())
    out = tmp_path / "back.qdc"
    export_qdc(store.codebook(version), out, schema_dir=find_schema_dir(), store=store)
    root = etree.fromstring(out.read_bytes())
    ns = {"c": "urn:QDA-XML:codebook:1.0"}
    codes = {c.get("name"): c for c in root.iterfind(".//c:Code", ns)}
    assert codes["selection"].get("guid") == "a0000000-0000-0000-0000-000000000004"
    assert codes["selection"].get("color") == "#ff8800"
    assert codes["use"].get("guid") == "a0000000-0000-0000-0000-000000000001"


def test_qdc_round_trip(store, tmp_path):
    schema_dir = schema_or_skip()
    path = tmp_path / "mini.qdc"
    assert export_qdc(CODEBOOK, path, schema_dir=schema_dir) == []
    codebook, _ = read_qdc(path, schema_dir=schema_dir)
    assert codebook.titles() == CODEBOOK.titles()
    assert codebook.version == CODEBOOK.version
    version, _, _ = import_qdc(store, path, schema_dir=schema_dir)
    assert store.codebook(version).titles() == CODEBOOK.titles()


# ---------------------------------------------------------------------- export and round trip


def test_export_validates_and_keeps_offsets(store, tmp_path):
    schema_dir = schema_or_skip()
    handles = build_study(store)
    out = tmp_path / "study.qdpx"
    report = export_qdpx(store, out, name="mini study", schema_dir=schema_dir)
    assert not any("validate" in n for n in report.notices)
    assert report.sources == 2 and report.codes == 4
    assert set(report.users) == {"gpt-4o-mini [llm, prompt prompt-abc12]", "rita", "ann"}

    # independent check with lxml and the official schema
    with zipfile.ZipFile(out) as zf:
        qde = zf.read("project.qde")
        root = etree.fromstring(qde)
        schema = etree.XMLSchema(etree.parse(str(schema_dir / "Project.xsd")))
        assert schema.validate(root), schema.error_log
        ns = {"q": "urn:QDA-XML:project:1.0"}
        texts = {}
        for src in root.iterfind(".//q:TextSource", ns):
            member = "sources/" + src.get("plainTextPath").removeprefix("internal://")
            texts[src.get("guid")] = zf.read(member).decode("utf-8")
        assert any("\r\n" in t for t in texts.values())  # Windows line endings kept
        machine = next(
            u.get("guid") for u in root.iterfind(".//q:User", ns) if "llm" in u.get("name")
        )
        # human and gold selections lie on passages; machine ones on their quotes
        by_span = {(p.char_start, p.char_end): p.text for p in store.passages()}
        quotes = {(s.start, s.end) for s in handles["machine_spans"]}
        users = {u.get("guid") for u in root.iterfind(".//q:User", ns)}
        for src in root.iterfind(".//q:TextSource", ns):
            for sel in src.iterfind("q:PlainTextSelection", ns):
                a, b = int(sel.get("startPosition")), int(sel.get("endPosition"))
                if sel.get("creatingUser") == machine and sel.find("q:Coding", ns) is not None:
                    assert (a, b) in quotes
                elif sel.get("creatingUser") != machine:
                    assert texts[src.get("guid")][a:b] == by_span[(a, b)]
                assert sel.get("creatingUser") in users  # an independent reader needs it
        # every machine coding carries a note with its provenance
        notes = {n.get("guid"): n for n in root.iterfind(".//q:Note", ns)}
        machine_codings = [
            c for c in root.iterfind(".//q:Coding", ns) if c.get("creatingUser") == machine
        ]
        assert len(machine_codings) == len(handles["machine_spans"]) == 4
        for c in machine_codings:
            note = notes[c.find("q:NoteRef", ns).get("targetGUID")]
            body = note.findtext("q:PlainTextContent", namespaces=ns)
            assert "model: gpt-4o-mini" in body and "prompt version: prompt-abc123" in body
            assert re.search(r"confidence: 0\.\d\d", body) and "rationale: " in body
            assert "unit: " in body and "chunk:12" in body and "located exact" in body
        # participants as cases with their attributes
        assert [c.get("name") for c in root.iterfind(".//q:Case", ns)] == ["I-1", "I-2"]
    assert handles["run_id"]


def test_round_trip_into_the_same_store(store, tmp_path):
    handles = build_study(store)
    from qualflow.review.decisions import reviewer_codings

    machine = "gpt-4o-mini [llm, prompt prompt-abc12]"
    before = {"ann": store.gold("gold-a")["ann"], "rita": reviewer_codings(store)["rita"]}
    out = tmp_path / "study.qdpx"
    export_qdpx(store, out, schema_dir=find_schema_dir())
    n_transcripts = len(store.transcripts())
    result = import_qdpx(store, out, schema_dir=find_schema_dir(), gold_set="back")
    assert len(store.transcripts()) == n_transcripts  # same text: same transcripts reused
    after = store.gold("back")
    assert set(after) == {*before, machine}
    for user, coding in before.items():
        # the same codes on the same passages, "no code" included: every coder's
        # explicit "no code applies" travels as a selection without a coding
        assert {pid: after[user].get(pid) for pid in coding} == coding, user
    # the machine's spans come back exactly as stored, one over two sentences included
    spans = store.gold_codings("back")
    assert sorted(spans[machine].spans) == sorted(handles["machine_spans"])
    assert sorted(spans["ann"].spans) == sorted(store.gold_codings("gold-a")["ann"].spans)
    # where a coder said "no code applies" in a transcript, its scope there is exactly
    # what it answered (ann coded every passage of both); where it did not (rita coded
    # every passage she finished in I-1), the standard's reading applies: the coder
    # read the whole text, so the rest of I-1 comes back as "no code"
    assert after["ann"] == before["ann"]
    i1 = handles["passages"]["daily"].transcript_id
    extra = set(after["rita"]) - set(before["rita"])
    assert extra and all(after["rita"][pid] == frozenset() for pid in extra)
    assert {store.passage(pid).transcript_id for pid in extra} == {i1}
    # the machine's "no code applies" chunk of I-2 comes back as its explicit judgement
    team = handles["passages"]["team"]
    assert after[machine][team.id] == frozenset()
    assert result.problems == []


def test_round_trip_into_a_fresh_store(store, tmp_path, settings):
    from qualflow.store import Store

    build_study(store)
    out = tmp_path / "study.qdpx"
    export_qdpx(store, out, schema_dir=find_schema_dir())
    fresh = Store.open(f"sqlite:///{tmp_path / 'fresh.sqlite3'}")
    try:
        import_qdpx(fresh, out, schema_dir=find_schema_dir(), gold_set="g")

        def spans(s, coding):
            ps = {p.id: p for p in s.passages()}
            names = {t.id: t.name for t in s.transcripts()}
            return {
                (names[ps[pid].transcript_id], ps[pid].char_start, ps[pid].char_end): codes
                for pid, codes in coding.items()
                if codes
            }

        original = spans(store, store.gold("gold-a")["ann"])
        assert spans(fresh, fresh.gold("g")["ann"]) == original
        assert fresh.codebook().titles() == store.codebook().titles()
        texts = sorted(t.text for t in fresh.transcripts())
        assert texts == sorted(t.text for t in store.transcripts())
    finally:
        fresh.close()


def test_export_is_deterministic(store, tmp_path):
    build_study(store)
    a, b = tmp_path / "a.qdpx", tmp_path / "b.qdpx"
    export_qdpx(store, a, check_schema=False)
    export_qdpx(store, b, check_schema=False)

    def body(path):
        with zipfile.ZipFile(path) as zf:
            return re.sub(rb'creationDateTime="[^"]+"', b"", zf.read("project.qde"))

    assert body(a) == body(b)


def test_export_subset_of_coders(store, tmp_path):
    build_study(store)
    report = export_qdpx(
        store, tmp_path / "gold.qdpx", machine=False, reviewers=False, check_schema=False
    )
    assert list(report.users) == ["ann"]
    assert report.notes == 0


def test_source_transcript_paragraphs_without_blank_lines():
    text = "A: one.\nB: two.\r\nA: three.\nB: four.\nNote: once only"
    t = source_transcript("x", text, "x.txt")
    assert [(u.speaker, u.text) for u in t.turns] == [
        ("A", "one."),
        ("B", "two."),
        ("A", "three."),
        ("B", "four."),
        (None, "Note: once only"),  # a label used once is prose, not a speaker
    ]
    for u in t.turns:
        assert t.text[u.char_start : u.char_end] == u.text


# ---------------------------------------------------------------------- real files


@pytest.mark.shared
def test_real_qc_demo(store):
    path = needs_shared("refi-qda", "qc-demo.qdpx")
    result = import_qdpx(store, path, schema_dir=find_schema_dir())
    assert result.notices == [] and result.problems == []
    assert sorted(t.name for t in store.transcripts()) == ["admin-1", "board_2017"]
    assert result.codes == 262
    assert result.selections == 158 and result.codings == 205
    assert list(result.coders) == ["cp"]
    codebook = store.codebook(result.codebook_version)
    assert "rq1_definition.concepts.abstraction" in codebook.titles()
    # names repeat under different parents; the dotted paths keep them apart
    assert sum(t.endswith(".programming") for t in codebook.titles()) == 2
    board = next(t for t in store.transcripts() if t.name == "board_2017")
    highlights = [h for h in load_highlights(store) if h.external_id.startswith("37323865")]
    assert highlights[0].snippet.startswith("This district goal is engage every student")
    assert highlights[0].code.endswith(".fun")
    gold = store.gold(result.gold_set)["cp"]
    passages = store.passages(transcript_id=board.id)
    for h in load_highlights(store):
        assert any(
            h.code in gold[p.id] and p.char_start < h.char_end and h.char_start < p.char_end
            for p in passages
        ), h.external_id


@pytest.mark.shared
def test_real_nvivo_export(store):
    path = needs_shared("refi-qda", "nvivo-export.qdpx")
    project = read_qdpx(path, schema_dir=find_schema_dir())
    assert project.origin == "NVivo for Mac 15.0.0"
    assert {u.label for u in project.users.values()} == {"chrisp", "cp"}
    assert len(project.codebook().codes) == 262
    result = import_qdpx(store, path, schema_dir=find_schema_dir())
    # NVivo wrote both sources as empty plain text (content only in empty DOCX files)
    assert result.transcripts == []
    assert sum("plain text is empty" in n for n in result.notices) == 2
    assert result.codebook_version is not None


@pytest.mark.shared
@pytest.mark.slow
def test_real_serdif_round_trip_through_qdpx(store, tmp_path):
    """Taguette project -> qualflow -> .qdpx -> a fresh store: the same codings."""
    from qualflow.exchange.taguette import import_taguette
    from qualflow.store import Store

    taguette = needs_shared("corpora", "serdif-usability", "taguette-project.sqlite3")
    result = import_taguette(store, taguette)
    out = tmp_path / "serdif.qdpx"
    report = export_qdpx(store, out, schema_dir=find_schema_dir())
    assert report.sources == 11 and report.codes == 22

    def by_span(s: Store, coding) -> dict:
        ps = {p.id: p for p in s.passages()}
        names = {t.id: t.name for t in s.transcripts()}
        return {
            (names[ps[k].transcript_id], ps[k].char_start, ps[k].char_end): v
            for k, v in coding.items()
        }

    fresh = Store.open(f"sqlite:///{tmp_path / 'fresh.sqlite3'}")
    try:
        back = import_qdpx(fresh, out, schema_dir=find_schema_dir(), gold_set="g")
        assert back.problems == [] and len(back.transcripts) == 11
        (coder,) = fresh.gold("g")
        original = by_span(store, store.gold(result.gold_set)["admin"])
        assert by_span(fresh, fresh.gold("g")[coder]) == original
        assert len(original) == len(store.passages())
    finally:
        fresh.close()
