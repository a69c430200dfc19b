"""Prompt template files (Jinja2, see core/prompts.py): the shipped ones or a group's own, read and compiled."""

from __future__ import annotations

from pathlib import Path

from mira_dagster.core.prompts import PromptTemplateError, PromptTemplates, compile_templates
from mira_dagster.package_data import TEMPLATES_DIR

SHIPPED_TEMPLATES = TEMPLATES_DIR


def load_templates(system_path: Path | None = None, user_path: Path | None = None) -> PromptTemplates:
    """Read and compile both templates (None = the shipped one); a syntax error is raised here, naming file:line."""
    system_path = Path(system_path or SHIPPED_TEMPLATES / "system.j2")
    user_path = Path(user_path or SHIPPED_TEMPLATES / "user.j2")
    return compile_templates(_read(system_path), _read(user_path), system_path, user_path)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptTemplateError(f"{path}: cannot read the prompt template: {exc}") from None
