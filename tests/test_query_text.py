"""Search queries made from pasted tracebacks, logs and code: what names the problem stays."""

from __future__ import annotations

from rag_core.config import Settings
from rag_core.search.query_text import clean_query

PY_TRACE = """Traceback (most recent call last):
  File "/srv/bot/.venv/lib/python3.11/site-packages/pymilvus/orm/collection.py", line 386, in load
    conn.load_collection(
  File "/srv/bot/.venv/lib/python3.11/site-packages/pymilvus/decorators.py", line 141, in handler
    raise e from e
  File "/srv/bot/.venv/lib/python3.11/site-packages/pymilvus/client/grpc_handler.py", line 1104, in load_collection
    check_status(response)
pymilvus.exceptions.MilvusException: <MilvusException: (code=65535, message=load collection failed: memory quota exhausted on node 0x7f3a9c2e)>"""  # noqa: E501

GO_LOG = """[2024/06/11 08:14:03.512 +00:00] [WARN] [querynodev2/segments/segment_loader.go:1021] ["no sufficient memory to load segment"] [traceID=4f9c2e7a1b3d5f60a8c9e1d2b3a4f5e6] [segmentID=450123456789012345] [memUsage=15032385536]
[2024/06/11 08:14:04.513 +00:00] [WARN] [querynodev2/segments/segment_loader.go:1021] ["no sufficient memory to load segment"] [traceID=9a8b7c6d5e4f30211f2e3d4c5b6a7980] [segmentID=450123456789012346] [memUsage=15032391680]
[2024/06/11 08:14:05.514 +00:00] [INFO] [querynodev2/services.go:212] ["received load segments request"] [collectionID=450123456789000001]"""  # noqa: E501


def test_a_plain_question_is_searched_as_asked() -> None:
    for question in (
        "How do I enable mmap?",
        "what does `queryNode.segcore.chunkRows` do, and is 1024 a good value?",
        "got `the length (398324) of json field (metadata) exceeds max length (65536)` why??",
    ):
        assert clean_query(question) == question
    assert clean_query("  two\n  lines ") == "two lines"


def test_a_python_traceback_keeps_the_error_and_the_question_first() -> None:
    query = clean_query(PY_TRACE + "\nhow do i keep field data on disk instead of in memory?")
    assert query.startswith("how do i keep field data on disk instead of in memory?")
    assert "MilvusException" in query and "memory quota exhausted" in query
    for noise in ("site-packages", "decorators", "handler", "check_status", "line 1104", "0x7f"):
        assert noise not in query, noise
    assert "Traceback" not in query


def test_log_lines_lose_times_ids_and_paths_and_repeats_count_once() -> None:
    query = clean_query(GO_LOG + "\nqueries fail after a restart, what should i change?")
    assert query.startswith("queries fail after a restart, what should i change?")
    assert query.count("no sufficient memory to load segment") == 1
    for noise in ("2024", "08:14", "traceID", "4f9c2e7a", "segment_loader.go", "15032385536"):
        assert noise not in query, noise
    assert "received load segments request" not in query  # an INFO line says nothing wrong


def test_a_code_block_gives_its_identifiers_once_after_the_question() -> None:
    question = (
        "```python\n"
        'index_params.add_index(field_name="vector", index_type="HNSW", metric_type="COSINE",'
        ' params={"M": 16, "efConstruction": 200})\n'
        'client.create_index("docs", index_params)\n'
        "```\nthen what ef do i pass at search time?"
    )
    query = clean_query(question)
    assert query.startswith("then what ef do i pass at search time?")
    words = query.split()
    for name in ("add_index", "HNSW", "COSINE", "efConstruction", "create_index", "index_params"):
        assert words.count(name) == 1, name
    assert "200" not in words and "```python" not in query


def test_a_fenced_traceback_and_docker_compose_output() -> None:
    fenced = clean_query("```\n" + PY_TRACE + "\n```\nwhy does this happen?")
    assert fenced.startswith("why does this happen?") and "memory quota exhausted" in fenced
    assert "grpc_handler" not in fenced
    compose = clean_query(
        "milvus-standalone  | SIGILL: illegal instruction\n"
        "milvus-standalone  | PC=0x7f3c2a1b4e10 m=0 sigcode=2\n"
        "milvus-standalone  | goroutine 1 [running]:\n"
        "milvus-standalone  | runtime.asmcgocall(0x7f3c2a1b4e10, 0xc000a1bd30)\n"
        "milvus-standalone  | \t/usr/local/go/src/runtime/asm_amd64.s:848 +0x42 fp=0xc000a1bd08\n"
        "it dies immediately on my old server"
    )
    assert compose == "SIGILL: illegal instruction it dies immediately on my old server"


async def test_retrieval_finds_the_page_behind_a_pasted_traceback(indexed_settings, embedder):
    """Searched as pasted, the frames fill the encoder's window before the question starts and
    BM25 ranks pages by the SDK's words; cleaned, the mmap page answers it."""
    from rag_core.runtime import open_rag

    question = (
        PY_TRACE + "\n" + GO_LOG + "\n"
        "how do I enable mmap so the whole collection does not have to fit in memory?"
    )
    # The default length limit lets such a paste through to the search.
    assert len(question) <= Settings.model_fields["max_question_chars"].default
    raw = indexed_settings.model_copy(update={"query_cleaning": False})
    async with open_rag(raw, embedder=embedder) as rag:
        as_pasted = await rag.retriever.retrieve(question, top_k=5)
    async with open_rag(indexed_settings, embedder=embedder) as rag:
        cleaned = await rag.retriever.retrieve(question, top_k=5)
    assert as_pasted.query == question
    assert cleaned.query.startswith("how do I enable mmap so the whole collection")
    assert "memory quota exhausted" in cleaned.query and "memUsage" not in cleaned.query
    assert not as_pasted.hits[0].doc_id.endswith("mmap.md")
    assert cleaned.hits[0].doc_id.endswith("mmap.md")


def test_the_search_command_shows_the_cleaned_query(indexed_settings, capsys) -> None:
    from rag_core.__main__ import main

    common = [
        "--data-dir",
        str(indexed_settings.data_dir),
        "--embedding-model",
        indexed_settings.embedding_model,
        "--embedding-device",
        "cpu",
    ]
    assert main(["search", PY_TRACE + "\nhow do i enable mmap?", *common]) == 0
    assert main(["search", "How do I enable mmap?", *common]) == 0
    out = capsys.readouterr().out
    assert out.count("searched for: ") == 1
    assert "searched for: how do i enable mmap? pymilvus.exceptions.MilvusException" in out
