"""Transcript readers on real-format fixtures, bad inputs and the SERDIF ODT corpus."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from qualflow.models import Transcript
from qualflow.readers import ReadError, normalize, read_transcript
from tests.conftest import EXAMPLES, needs_shared

FIXTURES = Path(__file__).parent / "fixtures" / "transcripts"
GOOD = [
    "otter_export.txt",
    "zoom.vtt",
    "teams.vtt",
    "otter_captions.srt",
    "names_crlf_bom.txt",
    "paragraphs.txt",
    "notes.md",
]


def check_invariants(t: Transcript) -> None:
    assert t.turns, t.source_path
    assert [turn.index for turn in t.turns] == list(range(len(t.turns)))
    for turn in t.turns:
        assert t.text[turn.char_start : turn.char_end] == turn.text
        assert turn.text and turn.text == normalize(turn.text)
    assert t.text == "\n\n".join(turn.text for turn in t.turns)
    assert "\r" not in t.text


def speakers(t: Transcript) -> list[str | None]:
    return [turn.speaker for turn in t.turns]


# --------------------------------------------------------------------------- formats


def test_otter_export():
    t = read_transcript(FIXTURES / "otter_export.txt")
    assert t.format == "otter"
    assert speakers(t) == [
        "Speaker 1",
        "Maria Lopez",
        "Speaker 1",
        "Maria Lopez",
        "Unknown Speaker",
        "Maria Lopez",
    ]
    assert [turn.start_time for turn in t.turns] == [0, 9, 17, 18, 3598, 3723]
    # a wrapped line joins its turn; the Otter footer is not speech
    assert t.turns[3].text.endswith("same leaderboard and then we run our own checks.")
    assert "otter.ai" not in t.text


def test_zoom_vtt_name_prefixes_and_merged_cues():
    t = read_transcript(FIXTURES / "zoom.vtt")
    assert t.format == "vtt"
    assert speakers(t) == ["Alex Chen", "Priya Raman", "Alex Chen", "Priya Raman"]
    last = t.turns[-1]
    assert last.text == (
        "Mostly from the leaderboard, honestly. We shortlist the top five & test them on our data."
    )
    assert (last.start_time, last.end_time) == (12.3, 19.99)
    assert "Priya Raman:" not in t.text


def test_teams_vtt_voice_tags():
    t = read_transcript(FIXTURES / "teams.vtt")
    assert speakers(t) == ["Interviewer (Sam)", "Jordan Ames", "Interviewer (Sam)", "Jordan Ames"]
    assert t.turns[1].text == (
        "Sure. I lead the evaluation team, so I decide which benchmarks we run before a release."
    )
    assert (t.turns[1].start_time, t.turns[1].end_time) == (7.01, 14.9)
    assert t.turns[3].text == "Every sprint. Roughly every two weeks."  # <i> removed
    assert "<" not in t.text


def test_srt_unlabelled_cue_continues_the_speaker():
    t = read_transcript(FIXTURES / "otter_captions.srt")
    assert t.format == "srt"
    assert speakers(t) == ["Speaker 1", "Speaker 2", "Speaker 1"]
    assert t.turns[1].text.endswith("Public ones leak into training data.")
    assert (t.turns[1].start_time, t.turns[1].end_time) == (4.1, 11.25)


def test_vtt_without_speakers_merges_until_a_pause(tmp_path: Path):
    path = tmp_path / "captions.vtt"
    path.write_text(
        "WEBVTT\n\n00:00.000 --> 00:02.000\nWe ran the suite\n\n"
        "00:02.100 --> 00:04.000\non every release.\n\n"
        "00:09.000 --> 00:11.000\nLater we stopped.\n",
        encoding="utf-8",
    )
    t = read_transcript(path)
    assert [turn.text for turn in t.turns] == [
        "We ran the suite on every release.",
        "Later we stopped.",
    ]
    assert speakers(t) == [None, None]


def test_name_prefixed_text_with_bom_and_crlf():
    t = read_transcript(FIXTURES / "names_crlf_bom.txt")
    assert t.format == "text"
    assert speakers(t) == ["Interviewer", "P1", "Interviewer", "P1", "P1"]
    assert t.turns[1].text == "Model selection, mostly. And sometimes to argue with my manager."
    assert t.turns[4].text == "They shouldn't, but they do."
    assert "\ufeff" not in t.text


def test_plain_paragraphs_without_labels():
    t = read_transcript(FIXTURES / "paragraphs.txt")
    assert t.format == "paragraphs"
    assert speakers(t) == [None, None, None]
    assert t.turns[1].text == (
        "Then it became the number everyone quoted in meetings. "
        "By the end of the year it drove the roadmap."
    )
    # a one-off "Note:" is prose, not a speaker
    assert t.turns[2].text.startswith("Note: this is a summary")


def test_markdown_front_matter_comments_headings():
    t = read_transcript(FIXTURES / "notes.md")
    assert t.format == "markdown"
    assert t.metadata == {"title": "Field notes, site visit 2", "participant": "P7"}
    assert [turn.text for turn in t.turns] == [
        "The team keeps a private leaderboard on a wiki page.",
        "They update it weekly. Nobody remembers who set it up.",
    ]


def test_content_beats_extension_for_text(tmp_path: Path):
    path = tmp_path / "zoom_export.txt"
    path.write_bytes((FIXTURES / "zoom.vtt").read_bytes())
    assert read_transcript(path).format == "vtt"


def _docx_bytes() -> bytes:
    import docx

    doc = docx.Document()
    doc.core_properties.title = "Interview P3"
    doc.add_heading("Interview P3", level=1)
    p = doc.add_paragraph()
    p.add_run("Interviewer:").bold = True
    p.add_run(" What benchmark did you use last?")
    p = doc.add_paragraph("P3: The coding one.")
    p.add_run().add_break()
    p.add_run("It was    on the leaderboard.")
    doc.add_paragraph("I picked it because\tmy team knew it.")
    table = doc.add_table(rows=2, cols=2)
    table.cell(0, 0).text = "Interviewer"
    table.cell(0, 1).text = "And did it work?"
    table.cell(1, 0).text = "P3"
    table.cell(1, 1).text = "Mostly, yes."
    out = io.BytesIO()
    doc.save(out)
    return out.getvalue()


def test_docx_labels_line_breaks_tables_headings(tmp_path: Path):
    path = tmp_path / "p3.docx"
    path.write_bytes(_docx_bytes())
    t = read_transcript(path)
    assert t.format == "docx"
    assert t.metadata["title"] == "Interview P3"
    assert speakers(t) == ["Interviewer", "P3", "P3", "Interviewer", "P3"]
    assert [turn.text for turn in t.turns] == [
        "What benchmark did you use last?",
        "The coding one. It was on the leaderboard.",
        "I picked it because my team knew it.",
        "And did it work?",
        "Mostly, yes.",
    ]
    check_invariants(t)


def test_docx_content_under_other_extension(tmp_path: Path):
    path = tmp_path / "p3.txt"
    path.write_bytes(_docx_bytes())
    assert read_transcript(path).format == "docx"


def _odt_bytes() -> bytes:
    from odf.opendocument import OpenDocumentText
    from odf.text import H, LineBreak, List, ListItem, Note, NoteBody, NoteCitation, P, S, Span, Tab

    doc = OpenDocumentText()
    doc.text.addElement(H(outlinelevel=1, text="Session P12"))
    doc.text.addElement(P(text="1 Read the Home tab."))
    p = P()
    p.addElement(Tab())
    p.addElement(Span(text="Okay, so"))
    p.addElement(S(c=3))
    p.addText("this is")
    p.addElement(Span(text=" the home"))
    p.addText(" tab.")
    note = Note(noteclass="footnote")
    note.addElement(NoteCitation(text="1"))
    note.addElement(NoteBody())
    note.lastChild.addElement(P(text="Footnote text is not speech."))
    p.addElement(note)
    p.addElement(LineBreak())
    p.addText("Second line.")
    doc.text.addElement(p)
    doc.text.addElement(P(text="\tMODERATOR: Take your time."))
    doc.text.addElement(P(text=""))
    items = List()
    item = ListItem()
    item.addElement(P(text="A list item counts too."))
    items.addElement(item)
    doc.text.addElement(items)
    doc.text.addElement(P(text="\tMODERATOR: Thanks."))
    out = io.BytesIO()
    doc.write(out)
    return out.getvalue()


def test_odt_spaces_tabs_breaks_spans_notes(tmp_path: Path):
    path = tmp_path / "P12.odt"
    path.write_bytes(_odt_bytes())
    t = read_transcript(path)
    assert t.format == "odt"
    assert t.metadata == {"title": "Session P12"}
    assert [turn.text for turn in t.turns] == [
        "1 Read the Home tab.",
        "Okay, so this is the home tab. Second line.",
        "Take your time.",
        "A list item counts too.",
        "Thanks.",
    ]
    # few labelled paragraphs: labels apply to their paragraph only (SERDIF style)
    assert speakers(t) == [None, None, "MODERATOR", None, "MODERATOR"]
    check_invariants(t)


# --------------------------------------------------------------------------- identity


def test_identity_fields(tmp_path: Path):
    src = FIXTURES / "zoom.vtt"
    t = read_transcript(src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert t.content_hash == digest
    assert t.name == "zoom"
    assert t.id == Transcript.make_id("zoom", digest)
    assert t.source_path == str(src)
    named = read_transcript(src, name="I-7")
    assert named.name == "I-7" and named.id == Transcript.make_id("I-7", digest)
    changed = tmp_path / "zoom.vtt"
    changed.write_bytes(src.read_bytes() + b"\r\n")
    assert read_transcript(changed).id != t.id  # a changed file is a new version


def test_normalization_nfc_whitespace_invisibles(tmp_path: Path):
    path = tmp_path / "n.txt"
    path.write_text(
        "Interviewer: Cafe\u0301\u00a0ok?\r\n\r\nP1:  zero\u200bwidth   and\ttabs \r\n",
        encoding="utf-8",
    )
    t = read_transcript(path)
    assert [turn.text for turn in t.turns] == ["Café ok?", "zerowidth and tabs"]
    assert t.text == "Café ok?\n\nzerowidth and tabs"


def test_case_study_is_not_a_speaker(tmp_path: Path):
    path = tmp_path / "prose.txt"
    path.write_text(
        "Case study: events in Galway.\n\nCase study: events in Cork.\n\nHeat map: fine.\n",
        encoding="utf-8",
    )
    assert speakers(read_transcript(path)) == [None, None, None]


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("empty.txt", "empty file"),
        ("whitespace.txt", "empty file"),
        ("binary.txt", "binary data"),
        ("latin1.txt", "not valid UTF-8 at byte 16"),
        ("transcript.txt", "PDF files are not supported"),
        ("header_only.vtt", "no text after parsing"),
        ("not_really.vtt", "not a WebVTT file"),
        ("broken.docx", "not a DOCX file"),
        ("table.csv", "unsupported format '.csv'"),
    ],
)
def test_bad_inputs_raise_read_error_naming_the_file(name: str, reason: str):
    path = FIXTURES / name
    with pytest.raises(ReadError) as info:
        read_transcript(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.path == path
    assert reason in err.reason
    assert name in str(err) and reason in str(err)


def test_zip_that_is_not_docx_or_odt(tmp_path: Path):
    path = tmp_path / "notes.docx"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ReadError, match=r"notes\.docx: unsupported format: a ZIP archive"):
        read_transcript(path)


def test_damaged_docx_xml(tmp_path: Path):
    path = tmp_path / "damaged.docx"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types")
        zf.writestr("word/document.xml", "<w:document")
    with pytest.raises(ReadError, match=r"damaged\.docx: damaged document: .* not complete XML"):
        read_transcript(path)


def test_empty_docx_has_no_text(tmp_path: Path):
    import docx

    path = tmp_path / "blank.docx"
    docx.Document().save(str(path))
    with pytest.raises(ReadError, match=r"blank\.docx: no text after parsing \(read as docx\)"):
        read_transcript(path)


def test_srt_extension_without_timings(tmp_path: Path):
    path = tmp_path / "x.srt"
    path.write_text("1\nhello there\n", encoding="utf-8")
    with pytest.raises(ReadError, match="not a SubRip file"):
        read_transcript(path)


def test_missing_file(tmp_path: Path):
    with pytest.raises(ReadError, match="cannot read file"):
        read_transcript(tmp_path / "gone.txt")


# --------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("name", GOOD)
def test_invariants_on_fixtures(name: str):
    check_invariants(read_transcript(FIXTURES / name))


def test_examples_read_with_participants_and_interviewer():
    files = sorted(EXAMPLES.glob("I-*_*.*"))
    assert len(files) == 6
    formats = set()
    total = 0
    for path in files:
        t = read_transcript(path)
        check_invariants(t)
        formats.add(t.format)
        total += len(t.turns)
        participant = path.stem.split("_")[0]
        assert set(speakers(t)) <= {"Interviewer", participant, None}, path.name
        assert participant in t.text or participant in speakers(t) or t.format == "markdown"
    assert formats == {"otter", "text", "vtt", "srt", "docx", "markdown"}
    assert 25 <= total <= 50


@pytest.mark.shared
def test_serdif_odt_corpus():
    raw = needs_shared("corpora", "serdif-usability", "raw")
    files = sorted(raw.glob("*.odt"))
    assert len(files) == 11
    for path in files:
        t = read_transcript(path)
        assert t.format == "odt"
        check_invariants(t)
        assert len(t.turns) > 100
        assert {s for s in speakers(t) if s} <= {"MODERATOR"}
        assert "\t" not in t.text and "  " not in t.text


def test_utf16_with_bom(tmp_path: Path):
    path = tmp_path / "notepad.txt"
    path.write_bytes("Interviewer: Grüß dich?\r\n\r\nP2: Ça va.\r\n".encode("utf-16"))
    t = read_transcript(path)
    assert [(turn.speaker, turn.text) for turn in t.turns] == [
        ("Interviewer", "Grüß dich?"),
        ("P2", "Ça va."),
    ]


def test_docx_with_otter_style_headers_keeps_times(tmp_path: Path):
    import docx

    doc = docx.Document()
    for line in ["Jane Doe  0:03", "We mostly use the leaderboard.", "Speaker 2  1:02:03", "Why?"]:
        doc.add_paragraph(line)
    path = tmp_path / "otter_export.docx"
    doc.save(str(path))
    t = read_transcript(path)
    assert t.format == "docx"
    assert [(x.speaker, x.start_time, x.text) for x in t.turns] == [
        ("Jane Doe", 3.0, "We mostly use the leaderboard."),
        ("Speaker 2", 3723.0, "Why?"),
    ]
