"""Plain-text transcripts: Otter.ai exports, 'Name:' dialogue, Markdown, paragraphs."""

from __future__ import annotations

import re

from qualflow.readers.base import RawTurn, looks_like_speaker, turns_from_blocks

# "Jane Doe  0:03", "Speaker 1  1:02:03", "Unknown Speaker  12:40", or a bare "0:03".
_OTTER_HEADER = re.compile(
    r"^(?P<name>\S(?:.{0,58}\S)?)?[ \t]+(?P<ts>\d{1,2}:\d{2}(?::\d{2})?)[ \t]*$|"
    r"^(?P<ts_only>\d{1,2}:\d{2}(?::\d{2})?)[ \t]*$"
)
_OTTER_FOOTER = re.compile(r"^\s*Transcribed by\s+https?://otter\.ai\S*\s*$", re.IGNORECASE)


def seconds(stamp: str) -> float:
    """'1:02:03' -> 3723.0; '0:03' -> 3.0; also 'hh:mm:ss.mmm' and 'hh:mm:ss,mmm'."""
    total = 0.0
    for part in stamp.replace(",", ".").split(":"):
        total = total * 60 + float(part)
    return total


def _otter_header(line: str) -> tuple[str | None, float] | None:
    m = _OTTER_HEADER.match(line)
    if not m:
        return None
    if m.group("ts_only"):
        return None, seconds(m.group("ts_only"))
    name = m.group("name") or ""
    if name and not looks_like_speaker(name):
        return None
    return name or None, seconds(m.group("ts"))


def is_otter(text: str) -> bool:
    """An Otter export opens with a speaker/timestamp line and has text after it."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2 or _otter_header(lines[0]) is None:
        return False
    return _otter_header(lines[1]) is None


def read_otter(text: str) -> list[RawTurn]:
    turns: list[RawTurn] = []
    for line in text.splitlines():
        if _OTTER_FOOTER.match(line):
            continue
        header = _otter_header(line)
        if header is not None:
            turns.append(RawTurn(header[0], "", start_time=header[1]))
        elif turns:
            turns[-1].text += "\n" + line
        elif line.strip():
            turns.append(RawTurn(None, line))
    return turns


def blocks(text: str) -> list[list[str]]:
    """Paragraphs (separated by blank lines) as lists of lines."""
    out: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip():
            out[-1].append(line)
        elif out[-1]:
            out.append([])
    return [b for b in out if b]


def read_text(text: str) -> list[RawTurn]:
    return turns_from_blocks(blocks(text))


_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(?P<body>.*?)\n---[ \t]*(?:\n|\Z)", re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_HEADING = re.compile(r"^#{1,6}\s+(?P<title>.*?)\s*#*\s*$")
_RULE = re.compile(r"^\s*(?:[-*_]\s*){3,}$")
_EMPHASIS = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")


def read_markdown(text: str) -> tuple[list[RawTurn], dict[str, str]]:
    """Markdown: front matter, comments, headings and rules are not speech.

    The first heading becomes ``metadata['title']``; front matter 'key: value' lines
    become metadata too. Bold markers are dropped; labels like '**Interviewer:**'
    still count as speaker labels.
    """
    meta: dict[str, str] = {}
    m = _FRONT_MATTER.match(text)
    if m:
        for line in m.group("body").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip():
                meta[key.strip()] = value.strip().strip("\"'")
        text = text[m.end() :]
    text = _COMMENT.sub("", text)
    kept: list[str] = []
    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            meta.setdefault("title", heading.group("title"))
            kept.append("")
        elif _RULE.match(line):
            kept.append("")
        else:
            kept.append(line)
    turns = turns_from_blocks(blocks("\n".join(kept)))
    for t in turns:
        t.text = _EMPHASIS.sub(r"\2", t.text)
    return turns, meta
