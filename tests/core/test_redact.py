"""Quarantine excerpts never carry a secret: configured keys and anything shaped like key material are masked."""

from __future__ import annotations

from mira_dagster.core.redact import MASK, redact

PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACDq2Dn8wQp2tJ0Kx7Yh5uA9m3cV1Z8bN4fG6hJ2kL0pQAAAAJgAAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----"
)


def test_configured_secrets_are_masked_longest_first() -> None:
    assert redact("key=canary-7f3a9 and canary-7f3a9-long", ["canary-7f3a9", "canary-7f3a9-long"]) == (
        f"key={MASK} and {MASK}"
    )
    assert redact("EMPTY stays, abc stays", ["EMPTY", "abc"]) == "EMPTY stays, abc stays"


def test_key_shapes_are_masked_without_configuration() -> None:
    for secret in ("sk-proj-AbCdEf0123456789xyz", "hf_AbCdEfGhIjKlMnOpQrStUv", "ghp_AbCdEfGhIjKlMnOpQrStUv12"):
        assert secret not in redact(f'{{"text": "use {secret} here"}}')
    masked = redact(PEM)
    assert "PRIVATE KEY" not in masked and "b3BlbnNz" not in masked
    assert "QyNTUxOQ" not in redact(PEM.splitlines()[2])  # one body line alone, as one JSONL line of the key file


def test_environment_dumps_lose_their_values_not_their_names() -> None:
    environ = "PATH=/usr/bin\x00OPENAI_API_KEY=abc123def\x00HF_TOKEN=zzz999\x00HOME=/root"
    masked = redact(environ)
    assert "abc123def" not in masked and "zzz999" not in masked
    assert "OPENAI_API_KEY=" in masked and "PATH=/usr/bin" in masked and "HOME=/root" in masked


def test_ordinary_record_text_is_left_alone() -> None:
    text = '{"question": "What is the derivative of sin(x)?", "id": "sha256:9f86d081884c7d659a2feaa0c55ad015"}'
    assert redact(text) == text
    assert redact("the_quick_brown_fox_jumps_over_the_lazy_dog_again_and_again") == (
        "the_quick_brown_fox_jumps_over_the_lazy_dog_again_and_again"
    )
