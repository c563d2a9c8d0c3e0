"""`python -m bot doctor`: real checks on good and broken settings (offline model, Milvus Lite)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import discord
import pytest

from bot import doctor
from bot.doctor import Status
from bot.metrics import Metrics, start_metrics_server
from rag_core.config import Settings
from tests.conftest import offline_model_path
from tests.fake_discord import FakeDiscord

ROOT = Path(__file__).resolve().parents[1]
# Shaped like a real bot token (base64 of a snowflake . timestamp . HMAC); not a real one.
GOOD_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456"


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "embedding_model": offline_model_path(),
        "embedding_device": "cpu",
        "discord_token": GOOD_TOKEN,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg, arg-type]


def by_name(results: list[doctor.CheckResult]) -> dict[str, doctor.CheckResult]:
    return {r.name: r for r in results}


# -- token ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "status", "words"),
    [
        (GOOD_TOKEN, Status.OK, "looks valid"),
        ("", Status.FAIL, "not set"),
        ("not-a-token", Status.FAIL, "malformed"),
        (f"Bot {GOOD_TOKEN}", Status.FAIL, "malformed"),
        (f'"{GOOD_TOKEN}"', Status.FAIL, "malformed"),
        ("abcdefghijklmnopqrstuvwxyz.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456", Status.WARN, "id"),
    ],
)
def test_token_shape_never_printed(token: str, status: Status, words: str) -> None:
    result = doctor.check_discord_token(token)
    assert result.status is status and words in result.message
    text = doctor.format_results([result])
    for part in filter(None, token.replace(" ", ".").split(".")):
        if len(part) > 6:  # the short middle part could appear in any text
            assert part not in text
    if status is not Status.OK:
        assert "Developer Portal" in result.fix or "token" in result.fix


# -- settings -------------------------------------------------------------------------------------


def test_unwritable_data_dir(tmp_path: Path) -> None:
    # Root may write anywhere, so block the folder with a file in its way instead of chmod.
    (tmp_path / "blocker").write_text("a file, not a folder")
    settings = make_settings(tmp_path, data_dir=tmp_path / "blocker" / "data")
    result = doctor.check_data_dir(settings)
    assert result.status is Status.FAIL and "not writable" in result.message
    assert "DATA_DIR" in result.message and "chown" in result.fix


def test_remote_url_shape(tmp_path: Path) -> None:
    check = doctor.check_llm_settings
    assert check(make_settings(tmp_path, llm_backend="remote")).status is Status.FAIL
    bad = make_settings(tmp_path, llm_backend="remote", llm_remote_url="gpu1:8000")
    assert check(bad).status is Status.FAIL
    no_v1 = check(make_settings(tmp_path, llm_backend="remote", llm_remote_url="http://g:8000"))
    assert no_v1.status is Status.WARN and "http://g:8000/v1" in no_v1.fix
    ok = make_settings(tmp_path, llm_backend="remote", llm_remote_url="http://g:8000/v1")
    assert check(ok).status is Status.OK


def test_milvus_uri_shape(tmp_path: Path) -> None:
    bad = doctor.check_milvus_settings(make_settings(tmp_path, milvus_uri="localhost:19530"))
    assert bad.status is Status.FAIL and "http://host:19530" in bad.fix
    server = make_settings(tmp_path, milvus_uri="http://root:secret@milvus:19530")
    result = doctor.check_milvus_settings(server)
    assert result.status is Status.OK and "secret" not in result.message


async def test_unreachable_remote_server(tmp_path: Path) -> None:
    from tests.llm_fixtures import free_port

    settings = make_settings(
        tmp_path,
        llm_backend="remote",
        llm_remote_url=f"http://127.0.0.1:{free_port()}/v1",
        llm_api_key="sk-secret-value",
    )
    result = await doctor.check_remote_engine(settings)
    assert result.status is Status.FAIL and "cannot reach" in result.message
    assert "sk-secret-value" not in doctor.format_results([result])


# -- models ---------------------------------------------------------------------------------------


def test_missing_local_model_paths(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        embedding_model=str(tmp_path / "no-such-model"),
        llm_model=str(tmp_path / "no-such-llm"),
    )
    embedding, dim = doctor.check_embedding_model(settings)
    assert embedding.status is Status.FAIL and dim is None
    assert "does not exist" in embedding.message and "EMBEDDING_MODEL" in embedding.message
    llm = doctor.check_llm_model(settings)
    assert llm.status is Status.FAIL and "LLM_MODEL" in llm.message
    (tmp_path / "empty").mkdir()
    not_a_model = doctor.check_llm_model(make_settings(tmp_path, llm_model=str(tmp_path / "empty")))
    assert not_a_model.status is Status.FAIL and "config.json" in not_a_model.message


def test_uncached_hub_model_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = make_settings(tmp_path, llm_model="meta-llama/Llama-3.1-8B-Instruct-not-cached")
    result = doctor.check_llm_model(settings)
    assert result.status is Status.FAIL and "not in the Hugging Face cache" in result.message


def test_gated_advice_names_hf_token() -> None:
    problem = doctor._gated("meta-llama/Llama-3.1-8B-Instruct", None)
    assert "HF_TOKEN is not set" in problem.message and "huggingface.co/meta-llama" in problem.fix


# -- storage --------------------------------------------------------------------------------------

_HOLD_LITE = textwrap.dedent(
    """
    import sys
    from rag_core.search.store import KnowledgeStore
    store = KnowledgeStore(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.read()  # hold the lock until the test closes our stdin
    store.close()
    """
)


def test_locked_lite_db_gives_in_use_advice(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    settings.data_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LITE, settings.milvus_target],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        result = doctor.check_milvus(settings, dim=None)
        assert result.status is Status.WARN
        assert "in use by another process" in result.message
        assert "/reindex" in result.fix and "MILVUS_URI" in result.fix
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)


def test_empty_lite_folder_and_feedback_db(tmp_path: Path) -> None:
    result = doctor.check_milvus(make_settings(tmp_path), dim=None)
    assert result.status is Status.WARN and "no knowledge base yet" in result.message


def test_the_embedding_check_loads_the_backend_the_bot_uses(tmp_path: Path) -> None:
    """EMBEDDING_BACKEND=onnx is exported under DATA_DIR like the bot does: a folder that
    cannot hold the export fails the check (torch alone would have passed it)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "models").write_text("not a folder")
    settings = make_settings(tmp_path, embedding_backend="onnx")
    embedding, dim = doctor.check_embedding_model(settings)
    assert embedding.status is Status.FAIL and dim is None, embedding
    assert "ONNX" in embedding.message and "EMBEDDING_BACKEND" in embedding.fix


async def test_good_offline_settings_pass(
    indexed_settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with FakeDiscord() as fake:  # the doctor asks Discord which servers the bot is in
        home = fake.add_guild("Docs")
        helpers = home.add_role("Helpers", discord.Permissions.none(), mentionable=True)
        desk = home.add_forum("help-desk")
        settings = Settings(
            helper_role_id=helpers.id,
            handoff_forum_id=desk.id,
            _env_file=None,  # type: ignore[call-arg]
            data_dir=indexed_settings.data_dir,
            embedding_model=offline_model_path(),
            embedding_device="cpu",
            llm_model=str(tiny_model_dir),
            discord_token=GOOD_TOKEN,  # type: ignore[arg-type]
            discord_home_guild_ids=[home.id],
            feedback_db=str(tmp_path / "feedback.db"),
            relevance_threshold=0.44,
        )
        results = await doctor.run_checks(settings)
    report = doctor.format_results(results)
    assert doctor.exit_code(results) == 0, report
    assert all(r.status is Status.OK for r in results), report
    checks = by_name(results)
    assert "384-d" in checks["embedding model"].message
    assert "'Helpers' in 'Docs', mentionable" in checks["helper role"].message
    assert checks["hand-off forum"].message == f"forum 'help-desk' in home server {home.id}"
    assert "chunks" in checks["knowledge base"].message
    assert GOOD_TOKEN not in report


async def test_a_helper_role_that_is_missing_or_silent_is_reported() -> None:
    async with FakeDiscord() as fake:
        home = fake.add_guild("Docs")
        quiet = home.add_role("Helpers", discord.Permissions.none(), mentionable=False)
        elsewhere = fake.add_guild("Other").add_role("Helpers", discord.Permissions.none())
        results = {}
        for role in (quiet, elsewhere):
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                discord_token=GOOD_TOKEN,  # type: ignore[arg-type]
                discord_home_guild_ids=[home.id],
                helper_role_id=role.id,
            )
            results[role.id] = await doctor.check_helper_role(settings)
    assert (
        results[quiet.id].status is Status.WARN and "not mentionable" in results[quiet.id].message
    )
    missing = results[elsewhere.id]
    assert missing.status is Status.FAIL and "none of the home servers" in missing.message


async def test_a_hand_off_forum_that_is_no_forum_or_elsewhere_is_reported() -> None:
    async with FakeDiscord() as fake:
        home = fake.add_guild("Docs")
        elsewhere = fake.add_guild("Other").add_forum("help")
        results = {}
        for channel_id in (home.channel("general").id, elsewhere.id, 42):
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                discord_token=GOOD_TOKEN,  # type: ignore[arg-type]
                discord_home_guild_ids=[home.id],
                handoff_forum_id=channel_id,
            )
            results[channel_id] = await doctor.check_handoff_forum(settings)
    text, other, unknown = results.values()
    assert text.status is Status.FAIL and "is not a forum" in text.message
    assert other.status is Status.FAIL and "not in a home server" in other.message
    assert unknown.status is Status.FAIL and "42" in unknown.message


def test_learning_says_what_keeps_people_s_answers_from_the_moderators(tmp_path: Path) -> None:
    unset = doctor.check_learning(make_settings(tmp_path))
    assert unset.status is Status.OK and "MODERATORS_CHANNEL_ID" in unset.message
    blind = doctor.check_learning(make_settings(tmp_path, moderators_channel_id=5))
    assert blind.status is Status.WARN and "DISCORD_MESSAGE_CONTENT" in blind.fix
    on = make_settings(tmp_path, moderators_channel_id=5, discord_message_content=True)
    assert (
        doctor.check_learning(on).status is Status.OK and "🧩" in doctor.check_learning(on).message
    )
    off = doctor.check_learning(make_settings(tmp_path, learn_from_helpers=False))
    assert off.status is Status.OK and "off" in off.message


async def test_index_built_with_another_model_fails(
    indexed_settings: Settings, tmp_path: Path
) -> None:
    result = doctor.check_milvus(indexed_settings, dim=768)
    assert result.status is Status.FAIL and "Reindex" in result.fix


# -- liveness and the command ---------------------------------------------------------------------


def test_quick_liveness_reads_the_heartbeat(tmp_path: Path) -> None:
    metrics = Metrics(process=False)
    server = start_metrics_server(0, metrics=metrics)
    try:
        settings = make_settings(tmp_path, metrics_port=server.port)
        assert doctor.check_liveness(settings).status is Status.OK  # up, no beat yet
        metrics.beat()
        metrics.set_connected(True)
        alive = doctor.check_liveness(settings)
        assert alive.status is Status.OK and "Discord connected" in alive.message
        metrics.heartbeat_ts.set(time.time() - 3600)
        stuck = doctor.check_liveness(settings)
        assert stuck.status is Status.FAIL and "stuck" in stuck.message
    finally:
        server.close()
    down = doctor.check_liveness(settings)
    assert down.status is Status.FAIL and "does not answer" in down.message


def run_doctor(
    tmp_path: Path, *args: str, module: str = "bot.doctor", **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATA_DIR": str(tmp_path / "data"),
        "METRICS_PORT": "0",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=tmp_path,  # no .env there
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_quick_command_exit_codes(tmp_path: Path) -> None:
    good = run_doctor(tmp_path, "--quick", DISCORD_TOKEN=GOOD_TOKEN)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "looks valid" in good.stdout and GOOD_TOKEN not in good.stdout + good.stderr
    bad = run_doctor(tmp_path, "--quick", DISCORD_TOKEN="oops.not-a-token")
    assert bad.returncode == 1 and "malformed" in bad.stdout
    assert "oops.not-a-token" not in bad.stdout + bad.stderr
    invalid = run_doctor(tmp_path, "--quick", TOP_K="many", DISCORD_TOKEN=GOOD_TOKEN)
    assert invalid.returncode == 2 and "TOP_K='many'" in invalid.stdout
    assert "Traceback" not in invalid.stdout + invalid.stderr


def test_relevance_threshold_must_suit_the_embedding_model(tmp_path: Path) -> None:
    """The 0.5 default is for BGE v1.5: MiniLM (or an unknown model) left at it gets a warning."""

    def check(**values: object) -> doctor.CheckResult:
        return doctor.check_relevance_threshold(
            Settings(_env_file=None, data_dir=tmp_path, **values)  # type: ignore[call-arg]
        )

    minilm = check(embedding_model="sentence-transformers/all-MiniLM-L6-v2")
    assert minilm.status is Status.WARN
    assert "0.44" in minilm.fix and "--calibrate" in minilm.fix
    chosen = check(embedding_model=offline_model_path(), relevance_threshold=0.3)
    assert chosen.status is Status.OK
    assert check().status is Status.OK  # BAAI/bge-base-en-v1.5 at its own default
    unknown = check(embedding_model="intfloat/e5-base-v2")
    assert unknown.status is Status.WARN and "never calibrated" in unknown.message
    # A model adapted to the docs (`models adapt`) has cosines of its own, not MiniLM's 0.44.
    adapted = check(embedding_model=str(tmp_path / "models" / "all-MiniLM-L6-v2-adapted"))
    assert adapted.status is Status.WARN and "never calibrated" in adapted.message
    assert "0.44" not in adapted.fix


def test_bot_doctor_subcommand_runs_every_check(tmp_path: Path) -> None:
    """`python -m bot doctor` is the full doctor (the bot's own CLI hands it over)."""
    token = f"Bot {GOOD_TOKEN}"  # pasted with its prefix: malformed, and never printed
    result = run_doctor(
        tmp_path,
        "doctor",
        module="bot",
        DISCORD_TOKEN=token,
        EMBEDDING_MODEL=offline_model_path(),
        EMBEDDING_DEVICE="cpu",
        LLM_MODEL=str(tmp_path / "no-such-llm"),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "malformed" in result.stdout and "384-d" in result.stdout  # not just --quick
    for part in GOOD_TOKEN.split("."):
        if len(part) > 6:
            assert part not in output


def test_conversations_say_what_the_message_content_setting_turns_on(tmp_path: Path) -> None:
    off = doctor.check_message_content(make_settings(tmp_path))
    assert off.status is Status.OK
    assert "follow-ups in threads and replies to answers are disabled" in off.message
    assert "/ask and @mentions work" in off.message
    assert "Privileged Gateway Intents > Message Content Intent" in off.message
    assert "DISCORD_MESSAGE_CONTENT=true" in off.message
    on = doctor.check_message_content(make_settings(tmp_path, discord_message_content=True))
    assert "follow-ups in the bot's threads" in on.message and "disabled" not in on.message
