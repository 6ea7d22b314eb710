"""Write examples/I-14_interview.docx, an invented interview (see README.md).

Run: .venv/bin/python examples/make_docx.py
The .docx is committed too; rerunning rewrites it with the same text.
"""

from __future__ import annotations

from pathlib import Path

TURNS = [
    ("Interviewer", "Can you tell me about your relationship to AI and machine learning?"),
    (
        "I-14",
        "I'm a PhD student, so, um, I build models but I also build benchmarks. "
        "My second paper was a benchmark for reasoning over tables.",
    ),
    ("Interviewer", "What is a benchmark that you recently used, and how did you choose it?"),
    (
        "I-14",
        "Last month I used a math word-problem set, mostly because my advisor asked "
        "for it... Every paper in the area reports it, so reviewers expect it. "
        "I didn't pick it because I think it's good, honestly.",
    ),
    ("Interviewer", "What are your biggest pet peeves with benchmarks?"),
    (
        "I-14",
        "Leaderboards without error bars. A model goes from 81.2 to 81.9 and it's a "
        "headline, but if you rerun with a different seed it moves more than that. "
        "We ran everything five times and reported the spread, and a reviewer asked "
        "why our numbers were lower than the leaderboard!",
    ),
    ("Interviewer", "Are you aware of collaborative efforts to develop benchmarks in your field?"),
    (
        "I-14",
        "Yeah, there's a shared effort where labs contribute tasks [inaudible] and a "
        "committee reviews them. I like it. It's slow, but the tasks are much better "
        "documented than the ones we make alone.",
    ),
]


def main(out: Path | None = None) -> Path:
    import docx

    out = out or Path(__file__).with_name("I-14_interview.docx")
    doc = docx.Document()
    doc.core_properties.title = "Interview I-14"
    doc.core_properties.comments = (
        "Invented example interview written for qualflow; not a real person."
    )
    doc.core_properties.author = "qualflow examples"
    doc.add_heading("Interview I-14", level=1)
    for speaker, text in TURNS:
        p = doc.add_paragraph()
        p.add_run(f"{speaker}:").bold = True
        p.add_run(f" {text}")
    doc.save(str(out))
    return out


if __name__ == "__main__":
    print(main())
