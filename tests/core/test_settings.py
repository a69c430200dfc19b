"""Configuration comes in one way: mira_dagster/settings.py reads the environment (and names the registry), `core/`
reads none of it, and every variable has its documented source and precedence."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import mira_dagster.settings as settings_module
from mira_dagster.core.config import DEFAULT_CONFIG, PROJECT_ROOT
from mira_dagster.core.embeddings import HashedTfidfEmbedder
from mira_dagster.io.embedding_client import OpenAIEmbedder
from mira_dagster.io.endpoint import DEFAULT_TEACHER_MODEL
from mira_dagster.io.registry import load_config
from mira_dagster.settings import Settings, env_names

PACKAGE = PROJECT_ROOT / "mira_dagster"
ENV_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def _environment_uses(path: Path) -> list[str]:
    """`os.environ`, `os.getenv`, `os.putenv`, `from os import environ` ... in a module, as "file:line"."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            names = [a.name for a in node.names]
        if ENV_NAMES & set(names):
            found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
    return found


def _mira_variable_reads(path: Path) -> list[str]:
    """Reads of a MIRA_ variable (or of one whose name is built: an f-string) from the environment: os.environ[...],
    os.environ.get(...), os.getenv(...). Writes (`mira run` sets MIRA_CONFIG for Dagster) are not reads."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        key = None
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            if isinstance(node.value, ast.Attribute) and node.value.attr in ENV_NAMES:
                key = node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            owner = node.func.value
            if node.func.attr in ENV_NAMES or (isinstance(owner, ast.Attribute) and owner.attr in ENV_NAMES):
                key = node.args[0]
        if key is None:
            continue
        built = isinstance(key, ast.JoinedStr)
        if built or (isinstance(key, ast.Constant) and str(key.value).startswith("MIRA_")):
            found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
    return found


def test_core_reads_no_environment() -> None:
    files = sorted((PACKAGE / "core").rglob("*.py"))
    assert len(files) > 10
    assert [use for f in files for use in _environment_uses(f)] == []


def test_only_the_settings_module_reads_a_mira_variable() -> None:
    others = [f for f in sorted(PACKAGE.rglob("*.py")) if f != PACKAGE / "settings.py"]
    assert [use for f in others for use in _mira_variable_reads(f)] == []
    # the check finds reads where there are some
    assert _mira_variable_reads(PROJECT_ROOT / "bench" / "embeddings.py")


def test_every_variable_is_in_the_settings_table() -> None:
    doc = settings_module.__doc__ or ""
    names = list(settings_module.PATH_VARS.values())
    for prefix in settings_module.ENDPOINT_PREFIXES.values():
        names += [f"{prefix}_{var}" for var in settings_module.ENDPOINT_FIELDS.values()]
    for prefix in (settings_module.ENDPOINT_PREFIXES[r] for r in settings_module.UNIT_ROLES):
        names += [f"{prefix}_{var}_<UNIT>" for var in settings_module.UNIT_FIELDS.values()]
    for name in names:
        assert f"`{name}`" in doc, name
    # and every MIRA_ variable the package mentions is one of them (or a test-only one the docstring names)
    mentioned = set()
    for f in PACKAGE.rglob("*.py"):
        mentioned |= set(re.findall(r"\bMIRA_[A-Z0-9_]*[A-Z0-9]", f.read_text(encoding="utf-8")))
    documented = set(re.findall(r"\bMIRA_[A-Z0-9_]*[A-Z0-9]", doc))
    assert mentioned - documented - set(settings_module.ENDPOINT_PREFIXES.values()) == set()


def test_defaults_with_an_empty_environment() -> None:
    s = Settings.from_env({})
    assert s.config_path == DEFAULT_CONFIG.resolve()
    assert s.home == Path(".mira").resolve()
    assert s.tables_url is None and s.s3_endpoint_url is None
    cfg = load_config()
    assert s.endpoint("student", cfg.scorer_units()["2"]) is None  # offline stand-in
    assert s.endpoint("teacher", cfg.scorer_units()["2"]) is None
    assert isinstance(s.embedder(), HashedTfidfEmbedder)
    assert env_names({}) == {}


def test_paths_and_store_come_from_the_environment(tmp_path: Path) -> None:
    env = {
        "MIRA_CONFIG": str(tmp_path / "reg.yaml"),
        "MIRA_HOME": str(tmp_path / "home"),
        "MIRA_TABLES_URL": "s3://bucket/prefix",
        "MIRA_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
    }
    s = Settings.from_env(env)
    assert (s.config_path, s.home) == (tmp_path / "reg.yaml", tmp_path / "home")
    assert (s.tables_url, s.s3_endpoint_url) == ("s3://bucket/prefix", "http://127.0.0.1:9000")
    assert env_names(env) == {
        "config_path": "MIRA_CONFIG",
        "home": "MIRA_HOME",
        "tables_url": "MIRA_TABLES_URL",
        "s3_endpoint_url": "MIRA_S3_ENDPOINT_URL",
    }


def test_a_units_own_variable_beats_the_roles_and_the_default() -> None:
    cfg = load_config()
    units = cfg.scorer_units()
    env = {
        "MIRA_STUDENT_BASE_URL": "http://all:8000/v1/, http://all2:8000/v1",
        "MIRA_STUDENT_BASE_URL_D": "http://agent:8000/v1",
        "MIRA_STUDENT_MODEL_D": "served-agent",
        "MIRA_STUDENT_API_KEY": "sk-student",
        "MIRA_TEACHER_BASE_URL": "https://api.example.com/v1",
        "MIRA_TEACHER_MODEL_2": "kimi-for-2",
    }
    s = Settings.from_env(env)
    everyone = s.endpoint("student", units["2"])
    assert everyone is not None
    # comma-separated, trailing slashes dropped; the model is the unit's student_model; the role's key
    assert everyone.base_urls == ("http://all:8000/v1", "http://all2:8000/v1")
    assert everyone.model == units["2"].student_model and everyone.api_key == "sk-student"
    agent = s.endpoint("student", units["D"])
    assert agent is not None and agent.base_urls == ("http://agent:8000/v1",) and agent.model == "served-agent"
    teacher_2, teacher_d = s.endpoint("teacher", units["2"]), s.endpoint("teacher", units["D"])
    assert teacher_2 is not None and teacher_d is not None
    assert teacher_2.model == "kimi-for-2" and teacher_d.model == DEFAULT_TEACHER_MODEL
    assert teacher_2.api_key == teacher_d.api_key == "EMPTY"  # no key: vLLM's placeholder
    assert env_names(env)["student"] == {
        "base_url": "MIRA_STUDENT_BASE_URL",
        "api_key": "MIRA_STUDENT_API_KEY",
        "unit_base_urls": {"D": "MIRA_STUDENT_BASE_URL_D"},
        "unit_models": {"D": "MIRA_STUDENT_MODEL_D"},
    }


def test_a_source_units_key_is_upper_cased() -> None:
    cfg = load_config()
    cfg = cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"scorer_scope": "source"})})
    s = Settings.from_env({"MIRA_STUDENT_BASE_URL_LEAN_QA": "http://lean/v1"})
    lean = s.endpoint("student", cfg.unit_of("lean_qa"))
    assert lean is not None and lean.base_urls == ("http://lean/v1",)
    assert s.endpoint("student", cfg.unit_of("qwq")) is None


def test_an_empty_variable_counts_as_unset() -> None:
    unit = load_config().scorer_units()["D"]
    s = Settings.from_env({"MIRA_STUDENT_BASE_URL": "http://all/v1", "MIRA_STUDENT_BASE_URL_D": "", "MIRA_HOME": ""})
    endpoint = s.endpoint("student", unit)
    assert endpoint is not None and endpoint.base_urls == ("http://all/v1",)
    assert s.home == Path(".mira").resolve()
    assert "MIRA_STUDENT_BASE_URL_D" not in str(env_names({"MIRA_STUDENT_BASE_URL_D": ""}))


def test_given_values_beat_the_environment_but_not_a_units_own_variable() -> None:
    units = load_config().scorer_units()
    env = {"MIRA_STUDENT_BASE_URL": "http://env/v1", "MIRA_STUDENT_BASE_URL_D": "http://env-d/v1"}
    s = Settings.from_env(env, given={"home": "/srv/mira", "student": {"base_url": "http://given/v1", "model": None}})
    assert s.home == Path("/srv/mira")
    given, unit_d = s.endpoint("student", units["2"]), s.endpoint("student", units["D"])
    assert given is not None and given.base_urls == ("http://given/v1",)
    assert unit_d is not None and unit_d.base_urls == ("http://env-d/v1",)


def test_keys_stay_out_of_reprs() -> None:
    unit = load_config().scorer_units()["2"]
    s = Settings.from_env({"MIRA_TEACHER_BASE_URL": "http://t/v1", "MIRA_TEACHER_API_KEY": "sk-hidden-123"})
    endpoint = s.endpoint("teacher", unit)
    assert endpoint is not None and endpoint.api_key == "sk-hidden-123"
    for text in (repr(s), str(s), s.model_dump_json(), repr(endpoint), str(endpoint)):
        assert "sk-hidden-123" not in text


def test_the_embeddings_endpoint() -> None:
    embedder = Settings.from_env(
        {"MIRA_EMBED_BASE_URL": "http://127.0.0.1:9/v1", "MIRA_EMBED_MODEL": "minilm", "MIRA_EMBED_API_KEY": "k"}
    ).embedder()
    assert isinstance(embedder, OpenAIEmbedder)
    assert (embedder.base_url, embedder.model) == ("http://127.0.0.1:9/v1", "minilm")


def test_the_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MIRA_HOME", str(tmp_path))
    monkeypatch.setenv("MIRA_CONFIG", str(DEFAULT_CONFIG))
    assert settings_module.mira_home() == tmp_path
    assert settings_module.load_registry().path == DEFAULT_CONFIG.resolve()
    assert settings_module.open_store().home == tmp_path
