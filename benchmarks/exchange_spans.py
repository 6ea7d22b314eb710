"""Spans through the exchange formats on the real SERDIF corpus; prints figures.

Usage:
    .venv/bin/python benchmarks/exchange_spans.py

Needs ../shared (skips with a message when it is absent). Three checks, each in fresh
SQLite stores in a temporary folder, with wall-clock times:

1. Gold JSONL: the SERDIF Taguette project imported (1,166 highlights), its gold set
   exported as JSONL spans and imported into a fresh store holding the same
   transcripts: are the spans and the scope the same?
2. Machine spans in .qdpx: the span codings of P3, P6 and P10 by a strong language
   model (``model-spans/spans.jsonl``), placed in qualflow's reading of the raw ODT
   files and stored as one coding run on chunks (each span in the chunk that holds
   it, every chunk answered, no code where the model gave none), exported as .qdpx and
   imported into a fresh store: are the machine's spans the same?
3. Paper tables on the SERDIF gold: highlights and sentences per code.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    from qualflow.resources import shared_dir

    shared = shared_dir()
    if shared is None:
        print("../shared is absent: nothing to measure", file=sys.stderr)
        return 2
    serdif = shared / "corpora" / "serdif-usability"
    with tempfile.TemporaryDirectory() as tmp:
        ok = gold_jsonl(serdif, Path(tmp))
        ok &= machine_qdpx(serdif, Path(tmp))
        tables(serdif, Path(tmp))
    return 0 if ok else 1


def _copy_transcripts(src, dst) -> None:
    for t in src.transcripts():
        dst.save_transcript(t, src.passages(transcript_id=t.id))


def gold_jsonl(serdif: Path, tmp: Path) -> bool:
    from qualflow.exchange.taguette import import_taguette
    from qualflow.gold import export_gold, import_gold
    from qualflow.store import Store

    store = Store.open(f"sqlite:///{tmp}/gold-a.sqlite3")
    result = import_taguette(store, serdif / "taguette-project.sqlite3")
    out = tmp / "gold.jsonl"
    t0 = time.perf_counter()
    lines = export_gold(store, result.gold_set, out)
    t_export = time.perf_counter() - t0
    fresh = Store.open(f"sqlite:///{tmp}/gold-b.sqlite3")
    _copy_transcripts(store, fresh)
    t0 = time.perf_counter()
    report = import_gold(fresh, out, "back")
    t_import = time.perf_counter() - t0
    (before,) = store.gold_codings(result.gold_set).values()
    (after,) = fresh.gold_codings("back").values()
    same_spans = sorted(before.spans) == sorted(after.spans)
    same_scope = before.scope == after.scope
    size = out.stat().st_size
    store.close()
    fresh.close()
    print(f"gold JSONL: {len(before.spans)} spans of '{result.gold_set}'")
    print(f"  export: {lines} records, {size / 1024:.0f} KiB, {t_export:.2f} s")
    print(f"  import into a fresh store: {report.summary()}; {t_import:.2f} s")
    print(f"  same spans: {same_spans}; same scope: {same_scope}")
    return same_spans and same_scope


def machine_qdpx(serdif: Path, tmp: Path) -> bool:
    from tests.model_replay import load_model_spans

    from qualflow.codebook import load_codebook
    from qualflow.exchange.refiqda import export_qdpx, find_schema_dir, import_qdpx
    from qualflow.ingest import ingest_paths
    from qualflow.settings import Settings
    from qualflow.store import Store

    settings = Settings(workspace=tmp / "ws")
    store = Store.open(f"sqlite:///{tmp}/machine-a.sqlite3")
    names = ("P3_GMT20211125", "P6_GMT20211126", "P10_GMT20211130")
    ingest_paths(store, [serdif / "raw" / f"{n}.odt" for n in names], settings)
    replay = load_model_spans(serdif / "model-spans" / "spans.jsonl", store.transcripts())
    codebook = load_codebook(serdif / "codebooks" / "codebook_20220303_8.csv")
    version = store.save_codebook(codebook)
    run_id, chunks, invalid = _store_run(store, settings, replay.spans, version)
    stored = store.span_coding("model", run_id=run_id)
    schema_dir = find_schema_dir()
    t0 = time.perf_counter()
    report = export_qdpx(store, tmp / "machine.qdpx", schema_dir=schema_dir, name="replay")
    t_export = time.perf_counter() - t0
    fresh = Store.open(f"sqlite:///{tmp}/machine-b.sqlite3")
    t0 = time.perf_counter()
    back = import_qdpx(fresh, tmp / "machine.qdpx", schema_dir=schema_dir, gold_set="g")
    t_import = time.perf_counter() - t0
    (coder,) = fresh.gold_codings("g").values()
    names_a = {t.id: t.name for t in store.transcripts()}
    names_b = {t.id: t.name for t in fresh.transcripts()}
    original = sorted((names_a[s.transcript_id], s.start, s.end, s.code) for s in stored.spans)
    returned = sorted((names_b[s.transcript_id], s.start, s.end, s.code) for s in coder.spans)
    same = original == returned
    scope_before = sum(b - a for r in stored.scope.values() for a, b in r)
    scope_after = sum(b - a for r in coder.scope.values() for a, b in r)
    store.close()
    fresh.close()
    validated = "validated" if schema_dir else "NOT validated (no schema)"
    print(
        f"machine spans: {len(replay.spans)} model spans placed ({len(replay.unplaced)} not), "
        f"stored as run {run_id} on {chunks} chunks (chunk:{settings.chunk_words}); "
        f"{len(stored.spans)} valid, {invalid} in moderator turns (context, invalid)"
    )
    print(f"  qdpx export: {report.summary()}; {validated}; {t_export:.2f} s")
    print(f"  re-import into a fresh store: {back.summary()}; {t_import:.2f} s")
    print(f"  same machine spans (codes, exact offsets): {same} ({len(original)})")
    print(
        f"  scope: {scope_before} characters answered, {scope_after} read back as judged "
        "(a source with a 'no code applies' selection: its selections)"
    )
    for notice in report.notices:
        print(f"  notice: {notice}")
    return same


def _store_run(store, settings, spans, codebook_version: str) -> tuple[int, int, int]:
    """The model's spans as one run on chunks: each chunk answered (no span = no code);
    a span in a context turn of its chunk (the moderator's: not codable by default) is
    an invalid proposal with that reason, as the coder's validation makes it. Returns
    the run id, the chunks and the invalid proposals."""
    from qualflow.chunk import chunks_for
    from qualflow.models import CodeProposal, ProposalSet
    from qualflow.store import ProposalKey

    key = ProposalKey("llm", "replayed-model", "replay", codebook_version)
    run_id = store.start_run(key)
    n = invalid = 0
    for t in store.transcripts():
        units = chunks_for(t, settings)
        store.add_passages(units)
        mine = [s for s in spans if s.transcript == t.name]
        for unit in units:
            valid, context = [], []
            for s in mine:
                for piece in unit.layout():
                    if piece.char_start <= s.start and s.end <= piece.char_end:
                        (valid if piece.codable else context).append(s)
            props = [_proposal(s, CodeProposal) for s in valid] + [
                _proposal(s, CodeProposal, "the quote lies only in context turns") for s in context
            ]
            invalid += len(context)
            store.save_proposal_set(
                ProposalSet(
                    passage_id=unit.id,
                    coder=key.coder,
                    model=key.model,
                    prompt_version=key.prompt_version,
                    codebook_version=key.codebook_version,
                    proposals=[p for p in props if p.valid],
                    invalid=[p for p in props if not p.valid],
                ),
                run_id=run_id,
            )
            n += 1
    store.finish_run(run_id, status="done")
    return run_id, n, invalid


def _proposal(span, model, reason: str | None = None):
    return model(
        code=span.code,
        rationale=span.rationale,
        evidence=span.quote,
        start=span.start,
        end=span.end,
        evidence_start=span.start,
        evidence_end=span.end,
        confidence=span.confidence,
        located="exact",
        valid=reason is None,
        invalid_reason=reason,
    )


def tables(serdif: Path, tmp: Path) -> None:
    from qualflow.exchange.tables import (
        HIGHLIGHTS,
        SENTENCES,
        code_frequency,
        resolve_source,
        source_codebook,
    )
    from qualflow.exchange.taguette import import_taguette
    from qualflow.store import Store

    store = Store.open(f"sqlite:///{tmp}/tables.sqlite3")
    result = import_taguette(store, serdif / "taguette-project.sqlite3")
    t0 = time.perf_counter()
    source = resolve_source(store, f"gold:{result.gold_set}")
    table = code_frequency(store, source, source_codebook(store, source))
    elapsed = time.perf_counter() - t0
    store.close()
    spans = sum(r[HIGHLIGHTS] for r in table.rows)
    sentences = sum(r[SENTENCES] for r in table.rows)
    print(f"paper tables (code frequency of the SERDIF gold): {table.notes[0]}")
    print(f"  per code, summed: {spans} highlights, {sentences} sentence-code pairs")
    widest = max(table.rows, key=lambda r: r[SENTENCES] / max(1, r[HIGHLIGHTS]))
    print(
        f"  most sentences per highlight: '{widest['title']}' "
        f"({widest[HIGHLIGHTS]} highlights, {widest[SENTENCES]} sentences); {elapsed:.2f} s"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(main())
