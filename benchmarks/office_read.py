"""Reading time and peak memory of DOCX/ODT transcripts by size, and the time to refuse a
ZIP bomb: the figures behind the ``reader_max_xml_mb`` default.

Usage:
    .venv/bin/python benchmarks/office_read.py [--paragraphs 1000,4000,16000]

Each document is constructed test data: labelled turns of about 25 words, every turn
with a bold run (as word processors write them). Each size is read in a fresh
process (``read_transcript``: container checks, parsing, turns); the time is wall
clock, the memory the process's peak resident set (VmHWM, Linux) minus its peak
before reading. The bomb is a DOCX whose document part inflates to 200 MB of XML.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

TURN = "we look at the leaderboard every single day and then compare it with the baseline"

# VmHWM (this process's own peak), not ru_maxrss: that one is inherited from the
# parent at exec and would report the benchmark's own size.
MEASURE = """
import json, sys, time
from pathlib import Path
from qualflow.readers import read_transcript
def hwm_kb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
path = Path(sys.argv[1])
before = hwm_kb()
started = time.perf_counter()
t = read_transcript(path, max_xml_bytes=10**10)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "mb": (hwm_kb() - before) / 1024, "turns": len(t.turns)}))
"""


def make_docx(paragraphs: int) -> bytes:
    import docx

    doc = docx.Document()
    for i in range(paragraphs):
        p = doc.add_paragraph(f"{'Interviewer' if i % 2 == 0 else 'P1'}: turn {i}, ")
        p.add_run("really, ").bold = True
        p.add_run(f"{TURN} numbers we had before.")
    out = io.BytesIO()
    doc.save(out)
    return out.getvalue()


def make_odt(paragraphs: int) -> bytes:
    from odf.opendocument import OpenDocumentText
    from odf.text import P, Span

    doc = OpenDocumentText()
    for i in range(paragraphs):
        p = P(text=f"{'MODERATOR' if i % 2 == 0 else 'P1'}: turn {i}, ")
        p.addElement(Span(text="really, "))
        p.addText(f"{TURN} numbers we had before.")
        doc.text.addElement(p)
    out = io.BytesIO()
    doc.write(out)
    return out.getvalue()


def xml_mb(data: bytes) -> float:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return sum(i.file_size for i in zf.infolist() if i.filename.endswith(".xml")) / 1e6


def measure(path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bomb(path: Path, megabytes: int = 200) -> None:
    chunk = b"<w:p><w:r><w:t>" + b"a" * 4000 + b"</w:t></w:r></w:p>"
    with zipfile.ZipFile(io.BytesIO(make_docx(1))) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            if info.filename != "word/document.xml":
                zout.writestr(info.filename, zin.read(info.filename), zipfile.ZIP_DEFLATED)
                continue
            member = zipfile.ZipInfo(info.filename)
            member.compress_type = zipfile.ZIP_DEFLATED
            with zout.open(member, "w", force_zip64=True) as fh:
                fh.write(b"<w:document><w:body>")
                for _ in range(megabytes * 1_000_000 // len(chunk)):
                    fh.write(chunk)
                fh.write(b"</w:body></w:document>")


def main(argv: list[str] | None = None) -> int:
    from qualflow.readers import ReadError, read_transcript

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paragraphs", default="1000,4000,16000")
    args = ap.parse_args(argv)
    sizes = [int(n) for n in args.paragraphs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        head = ("format", "paragraphs", "XML MB", "read s", "s/MB", "peak MB")
        print("{:<6} {:>10} {:>8} {:>8} {:>6} {:>8}".format(*head))
        for fmt, make in (("docx", make_docx), ("odt", make_odt)):
            for n in sizes:
                data = make(n)
                path = Path(tmp) / f"doc-{n}.{fmt}"
                path.write_bytes(data)
                mb = xml_mb(data)
                got = measure(path)
                print(
                    f"{fmt:<6} {n:>10} {mb:>8.1f} {got['seconds']:>8.2f} "
                    f"{got['seconds'] / mb:>6.2f} {got['mb']:>8.0f}"
                )
        path = Path(tmp) / "bomb.docx"
        bomb(path)
        started = time.perf_counter()
        try:
            read_transcript(path)
            verdict = "read (unexpected)"
        except ReadError as exc:
            verdict = exc.reason.split(";")[0]
        print(
            f"ZIP bomb: {path.stat().st_size / 1e6:.1f} MB file, 200 MB of XML: "
            f"{time.perf_counter() - started:.3f} s -> {verdict}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
