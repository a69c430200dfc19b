"""Redaction of text we write about the user's input (quarantine excerpts): a dataset nobody vetted may hold the
machine's secrets (a link to a key file or to the process environment), and an excerpt must never carry them on."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

# A PEM block whole (or its head when the excerpt cut it), before anything else looks at its lines.
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY[- ]*.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S)
# Tokens of the shapes the usual services issue (OpenAI and Anthropic `sk-`, Hugging Face, GitHub, Slack, AWS ids).
_TOKEN = re.compile(
    r"(?<![A-Za-z0-9])(?:sk-[A-Za-z0-9_-]{8,}|hf_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{16,}|"
    r"github_pat_[A-Za-z0-9_]{16,}|xox[abprs]-[A-Za-z0-9-]{10,}|A[KS]IA[0-9A-Z]{16})"
)
# `NAME=value` where the name says it is a secret (an environment dump such as /proc/self/environ).
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)((?:^|(?<=[\s\x00\"',;{]))[A-Z0-9_.-]*(?:KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL)[A-Z0-9_.-]*\s*[=:]\s*)"
    r"[^\s\x00\"',;}]+"
)
# A long unbroken run of base64 (a key file's body lines, a bearer token): never useful in an excerpt.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{40,}={0,2}")


def _looks_random(run: str) -> bool:
    """Base64 of key material mixes cases and digits; a long word or identifier in a record does not."""
    return any(c.isdigit() for c in run) and any(c.isupper() for c in run) and any(c.islower() for c in run)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """The text with every configured secret and everything that looks like key material replaced by ***."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4 and s != "EMPTY"}, key=len, reverse=True):
        text = text.replace(secret, MASK)  # vLLM's placeholder key "EMPTY" is no secret
    text = _PRIVATE_KEY.sub(MASK, text)
    text = _TOKEN.sub(MASK, text)
    text = _SECRET_ASSIGNMENT.sub(lambda m: m.group(1) + MASK, text)
    return _BASE64_RUN.sub(lambda m: MASK if _looks_random(m.group(0)) else m.group(0), text)
