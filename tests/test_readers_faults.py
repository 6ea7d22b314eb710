"""Readers under damaged and hostile input: cut-off DOCX/ODT parts fail the file with
their reason (and print nothing), ZIP bombs fail fast, bad caption timing keeps the
speech and reports each cue, UTF-16 without a byte-order mark is named."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from qualflow.readers import ReadError, read_transcript
from tests.conftest import REPO
from tests.test_readers import _docx_bytes, _odt_bytes

SPEECH = "we look at the leaderboard every single day"


def _long_odt(paragraphs: int = 280) -> bytes:
    """An ODT of many labelled turns (constructed test data)."""
    from odf.opendocument import OpenDocumentText
    from odf.text import P

    doc = OpenDocumentText()
    for i in range(paragraphs):
        who = "MODERATOR" if i % 2 == 0 else "P1"
        doc.text.addElement(P(text=f"{who}: turn {i}, {SPEECH}."))
    out = io.BytesIO()
    doc.write(out)
    return out.getvalue()


def _long_docx(paragraphs: int = 200) -> bytes:
    import docx

    doc = docx.Document()
    for i in range(paragraphs):
        doc.add_paragraph(f"{'Interviewer' if i % 2 == 0 else 'P1'}: turn {i}, {SPEECH}.")
    out = io.BytesIO()
    doc.save(out)
    return out.getvalue()


def _rewrite(data: bytes, part: str, change) -> bytes:
    """The same ZIP with one member's bytes changed (the mimetype stays stored first)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            blob = zin.read(info.filename)
            if info.filename == part:
                blob = change(blob)
            kind = zipfile.ZIP_STORED if info.filename == "mimetype" else zipfile.ZIP_DEFLATED
            zout.writestr(info.filename, blob, compress_type=kind)
    return out.getvalue()


def _cut_in_half(blob: bytes) -> bytes:
    return blob[: len(blob) // 2]


# ---------------------------------------------------------------------- damaged office files


def test_odt_with_content_cut_in_half_fails_with_its_reason(tmp_path: Path):
    path = tmp_path / "P7_cut.odt"
    path.write_bytes(_rewrite(_long_odt(), "content.xml", _cut_in_half))
    with pytest.raises(ReadError) as info:
        read_transcript(path)
    reason = info.value.reason
    assert "content.xml" in reason and "ends before the document does" in reason
    assert SPEECH not in str(info.value)  # the reason never quotes the text


def test_damaged_odt_prints_nothing(tmp_path: Path):
    """odfpy printed the whole damaged part (transcript text) to stdout."""
    path = tmp_path / "P7_cut.odt"
    path.write_bytes(_rewrite(_long_odt(), "content.xml", _cut_in_half))
    script = textwrap.dedent(
        f"""
        from qualflow.readers import ReadError, read_transcript
        try:
            read_transcript({str(path)!r})
        except ReadError as exc:
            print("refused:", exc.reason[:40])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused:") and SPEECH not in out.stdout + out.stderr
    assert len(out.stdout) < 200 and out.stderr == ""


def test_odfpy_output_is_withheld_and_fails_the_file(monkeypatch):
    """Whatever slips past the checks: odfpy's printing of a part it could not parse
    is captured, never shown, and the file fails."""
    import odf.opendocument

    from qualflow.readers.office import read_odt

    real_load = odf.opendocument.load

    def noisy_load(source):
        print("====== SAX FAILED TO PARSE ==========\n", SPEECH)
        return real_load(source)

    monkeypatch.setattr(odf.opendocument, "load", noisy_load)
    with pytest.raises(ValueError, match="withheld") as info:
        read_odt(_odt_bytes())
    assert SPEECH not in str(info.value)


def test_damaged_odt_is_an_ingest_failure_not_half_a_transcript(tmp_path: Path, store, settings):
    from qualflow.ingest import ingest_paths

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "P7_cut.odt").write_bytes(_rewrite(_long_odt(), "content.xml", _cut_in_half))
    (inbox / "P8.odt").write_bytes(_long_odt(20))
    report = ingest_paths(store, [inbox], settings)
    assert [(Path(f.path).name, f.status) for f in report.files] == [
        ("P7_cut.odt", "error"),
        ("P8.odt", "new"),
    ]
    assert [t.name for t in store.transcripts()] == ["P8"]
    assert store.failures()[0][1].endswith("P7_cut.odt")


def test_docx_with_document_cut_in_half_fails_with_its_reason(tmp_path: Path):
    path = tmp_path / "I-20.docx"
    path.write_bytes(_rewrite(_long_docx(), "word/document.xml", _cut_in_half))
    with pytest.raises(ReadError, match=r"word/document\.xml is not complete XML"):
        read_transcript(path)


def test_xml_entity_declarations_are_refused(tmp_path: Path):
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
    )

    def with_entities(blob: bytes) -> bytes:
        return bomb + blob[blob.index(b"<office:document-content") :]

    path = tmp_path / "entities.odt"
    path.write_bytes(_rewrite(_long_odt(4), "content.xml", with_entities))
    with pytest.raises(ReadError, match="declares the XML entity 'a'"):
        read_transcript(path)


# ---------------------------------------------------------------------- bounded decompression


def _bomb(path: Path, fmt: str, megabytes: int) -> None:
    """A DOCX/ODT whose main part inflates to ``megabytes`` MB of XML (streamed, so the
    test never holds it in memory)."""
    main = "word/document.xml" if fmt == "docx" else "content.xml"
    base = _docx_bytes() if fmt == "docx" else _odt_bytes()
    chunk = b"<w:p><w:r><w:t>" + b"a" * 4000 + b"</w:t></w:r></w:p>"
    with zipfile.ZipFile(io.BytesIO(base)) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            kind = zipfile.ZIP_STORED if info.filename == "mimetype" else zipfile.ZIP_DEFLATED
            if info.filename != main:
                zout.writestr(info.filename, zin.read(info.filename), compress_type=kind)
                continue
            member = zipfile.ZipInfo(main)
            member.compress_type = zipfile.ZIP_DEFLATED
            with zout.open(member, "w", force_zip64=True) as fh:
                fh.write(b'<?xml version="1.0"?><w:document><w:body>')
                for _ in range(megabytes * 1_000_000 // len(chunk)):
                    fh.write(chunk)
                fh.write(b"</w:body></w:document>")


@pytest.mark.parametrize("fmt", ["docx", "odt"])
def test_zip_bomb_fails_fast_with_the_reason(tmp_path: Path, fmt: str):
    """200 MB of XML in a file of well under a megabyte: refused from the ZIP directory,
    before anything is inflated (today: not finished after 600 s)."""
    path = tmp_path / f"bomb.{fmt}"
    _bomb(path, fmt, 200)
    assert path.stat().st_size < 1_500_000
    started = time.monotonic()
    with pytest.raises(ReadError) as info:
        read_transcript(path)
    assert time.monotonic() - started < 5
    assert "MB of XML" in info.value.reason and "reader_max_xml_mb" in info.value.reason


def test_xml_limit_is_a_setting(tmp_path: Path, store, settings):
    from qualflow.ingest import ingest_paths

    path = tmp_path / "long.docx"
    path.write_bytes(_long_docx(400))
    assert read_transcript(path).format == "docx"  # fine under the default
    small = settings.model_copy(update={"reader_max_xml_mb": 0.05})
    [outcome] = ingest_paths(store, [path], small).files
    assert outcome.status == "error" and "over the limit of 0 MB" in outcome.reason


def test_declared_size_that_lies_fails_the_crc_not_memory(tmp_path: Path):
    """A member that inflates past its declared size is cut at that size by zipfile
    and fails its CRC check: a damaged container, never unbounded inflation."""
    data = bytearray(_long_odt(50))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo("content.xml")
    # Patch the declared size of content.xml in the central directory (and local header).
    small = (1000).to_bytes(4, "little")
    central = data.rfind(b"PK\x01\x02", 0, data.rfind(b"content.xml"))
    data[central + 24 : central + 28] = small
    local = info.header_offset
    data[local + 22 : local + 26] = small
    path = tmp_path / "lying.odt"
    path.write_bytes(bytes(data))
    with pytest.raises(ReadError, match="damaged"):
        read_transcript(path)


# ---------------------------------------------------------------------- captions


BAD_VTT = """WEBVTT

1
00:00:01.000 --> 00:00:04.000
<v Sam>How often do you look at the leaderboard?

2
00:00:05.000 -> 00:00:09.000
<v Alex>Every single day, first thing.

3
00:00:12.000 --> 00:00:10.000
<v Alex>It ends before it starts.

4
99:99:99.999 --> 100:00:00.000
<v Alex>An impossible time.

5
<v Alex>No timing line at all.

6
00:00:20.000 --> 00:00:22.000
<v Sam>Thank you.
"""


def test_bad_cues_keep_their_speech_and_are_reported_with_line_and_reason(tmp_path: Path):
    path = tmp_path / "I-21_zoom.vtt"
    path.write_text(BAD_VTT, encoding="utf-8")
    warnings: list[str] = []
    t = read_transcript(path, warnings=warnings)
    for said in ("Every single day", "ends before it starts", "impossible time", "No timing"):
        assert said in t.text  # no speech dropped
    assert [w.split(":")[1] for w in warnings] == ["8", "12", "16", "19"]
    assert all(w.startswith(f"{path}:") for w in warnings)
    assert "unparseable timing line '00:00:05.000 -> 00:00:09.000'" in warnings[0]
    assert "ends (00:00:10.000) before it starts (00:00:12.000)" in warnings[1]
    assert "impossible time '99:99:99.999'" in warnings[2]
    assert "without a timing line" in warnings[3]
    assert not any(s in w for w in warnings for s in ("Every single", "first thing"))
    alex = [turn for turn in t.turns if turn.speaker == "Alex"]
    assert alex and alex[0].start_time is None  # its first cue had no usable time
    sam = [turn for turn in t.turns if turn.speaker == "Sam"]
    assert sam[0].start_time == 1.0 and sam[-1].start_time == 20.0


def test_bad_srt_cue_keeps_speech(tmp_path: Path):
    path = tmp_path / "I-22.srt"
    path.write_text(
        "1\n00:00:01,000 --> 00:00:02,000\nHello there.\n\n"
        "2\n00:00:03,000 --> 00:0x:04,000\nThis line must not vanish.\n\n"
        "3\n00:00:05,000 --> 00:00:06,000\nBye.\n",
        encoding="utf-8",
    )
    warnings: list[str] = []
    t = read_transcript(path, warnings=warnings)
    assert "This line must not vanish." in t.text
    assert len(warnings) == 1 and ":6: unparseable timing line" in warnings[0]


def test_good_captions_have_no_warnings():
    warnings: list[str] = []
    read_transcript(Path(REPO / "examples" / "I-9_zoom.vtt"), warnings=warnings)
    read_transcript(Path(REPO / "examples" / "I-12_captions.srt"), warnings=warnings)
    assert warnings == []


def test_ingest_reports_and_records_cue_warnings(tmp_path: Path, store, settings):
    from qualflow.ingest import ingest_paths

    path = tmp_path / "I-21_zoom.vtt"
    path.write_text(BAD_VTT, encoding="utf-8")
    [outcome] = ingest_paths(store, [path], settings).files
    assert outcome.status == "new" and len(outcome.warnings) == 4
    [stored] = store.transcripts()
    assert stored.metadata["read_warnings"].count("I-21_zoom.vtt:") == 4


# ---------------------------------------------------------------------- UTF-16 without BOM


@pytest.mark.parametrize(
    ("codec", "label"), [("utf-16-le", "UTF-16 LE"), ("utf-16-be", "UTF-16 BE")]
)
def test_utf16_without_bom_is_named_with_the_fix(tmp_path: Path, codec: str, label: str):
    path = tmp_path / "I-23.txt"
    path.write_bytes("Interviewer: Hello.\n\nP1: We look at it daily.\n".encode(codec))
    with pytest.raises(ReadError) as info:
        read_transcript(path)
    reason = info.value.reason
    assert f"looks like {label} without a byte-order mark" in reason
    assert f"iconv -f {label.replace(' ', '')} -t UTF-8" in reason


def test_real_binary_is_still_binary(tmp_path: Path):
    path = tmp_path / "blob.txt"
    path.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(ReadError, match="binary data"):
        read_transcript(path)


def test_ingest_command_prints_cue_warnings(tmp_path: Path):
    from typer.testing import CliRunner

    from qualflow.cli import app

    ws = tmp_path / "ws"
    assert CliRunner().invoke(app, ["init", str(ws)]).exit_code == 0
    path = tmp_path / "I-21_zoom.vtt"
    path.write_text(BAD_VTT, encoding="utf-8")
    result = CliRunner().invoke(app, ["ingest", str(path), "-w", str(ws)])
    assert result.exit_code == 0, result.output
    assert result.output.count("warning") == 4 and "impossible time" in result.output
