"""Layouts: how one parsed JSON object maps onto the text fields of a prompt family, found without configuration.

A layout takes an object (a JSONL line, a JSON-array element or a Parquet row) and returns the family's fields as
raw text, or None when it does not apply. The caller normalises the text, checks the required fields and hashes
them into the record id, so a layout's output for a given object must never change once released: the layouts
marked (*) are the original ones and their output is pinned by `tests/fixtures/layouts/sample_golden.json`.

QA families (`qa_with_think`, `qa`: question, thinking, answer), tried in this order:

- `responses_rollout`: OpenAI Responses API rollouts as written by NVIDIA NeMo-Gym / NeMo-RL
  (`responses_create_params.input` + `response.output` items: message, reasoning, function_call, ...).
- `question_answer` (*): `question` + `answer` (GSM8K-style dumps), optional `thinking`.
- `prompt_solution` (*): DeepSeek-R1 distill dumps: `prompt` ending in `<think>`, `solution` = thinking
  `</think>` answer.
- `instruction_response` (*): Marco-o1 CoT: `instruction` + `response` with `<Thought>`/`<Output>` or `<think>`.
- `lean_cot_proof` (*): Kimina-Prover: `cot` (`<think>` + Lean) + `correct_proof`.
- `lean_formal` (*): DeepSeek-Prover few-shot: `informal_prefix`, `formal_statement`, `formal_proof`.
- `chat_messages` (*): OpenAI chat `messages`; content parts keyed `text` or `value` (Anthropic `tool_use` /
  `tool_result` blocks, OpenAI `refusal` parts and Assistants `text.value` too); thinking from reasoning
  parts, DeepSeek `reasoning_content` / vLLM `reasoning` / `thinking` fields, else a `<think>` block.
- `sharegpt`: ShareGPT / LLaMA-Factory / FastChat `conversations` (`from`/`value`), and lmsys-chat / WildChat
  `conversation` (`role`/`content`).
- `alpaca`: Stanford Alpaca `alpaca_data.json`: `instruction`, `input`, `output`.
- `qa_fields`: anything else with a question and an answer under common names (MATH, NuminaMath, MetaMathQA,
  math evaluation outputs...): see `_QUESTION_KEYS`, `_THINKING_KEYS`, `_ANSWER_KEYS`.

Agent family (task, trajectory, outcome):

- `responses_rollout`: as above; the trajectory renders every input and output item in order.
- `agent_turns` (*): SWE-agent / SWE-smith trajectories and OpenHands outputs (`history`), chat `messages`.
- `sharegpt`: ShareGPT-style tool conversations (`function_call`, `observation` turns).

`match` takes the first layout whose fields fill the family's required fields, so a later layout gets its chance
when an earlier one recognises the keys but finds them blank; when none fills them, the first that found some text
is returned, so the caller can say which field is empty. No layout raises, and all run in time linear in the input
(no backtracking regex over record text). A chat content part that holds no text (an image, audio, a file) is
rendered as `[non-text part: image_url]`: the scorer is told it is there, and the original keeps it (a required
field holding nothing else is empty: records.to_fields).

Changes to the original layouts touch only objects they used to mis-read: content parts keyed `value` /
`thinking` (read as empty before), reasoning parts and fields of chat messages (now thinking, not answer), roles
`human` / `gpt`, and objects whose required fields came out empty (quarantined before, now offered to later
layouts).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any, Literal

from mira_dagster.core.config import Family

Fields = dict[str, str]
Layout = Callable[[dict[str, Any]], Fields | None]

# The text fields of each prompt family, and those a record must have (non-empty after normalisation).
FAMILY_FIELDS: dict[Family, tuple[str, ...]] = {
    "qa_with_think": ("question", "thinking", "answer"),
    "qa": ("question", "thinking", "answer"),
    "agent": ("task", "trajectory", "outcome"),
}
REQUIRED: dict[Family, tuple[str, ...]] = {
    "qa_with_think": ("question", "answer"),
    "qa": ("question", "answer"),
    "agent": ("trajectory",),
}


# ---------------------------------------------------------------------------------------------
# Text of JSON values


def normalise_text(text: str) -> str:
    """What a record's text fields hold: NFC, line ends as LF, no surrounding whitespace."""
    text = unicodedata.normalize("NFC", text)
    if "\r" in text:  # one scan instead of two replaces for the usual text without any
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.strip()


class WrittenFloat(float):
    """A JSON number with a fraction or an exponent, which remembers how its line wrote it ("1.10", "1e-5"): a
    float's repr would show "1.1" and "1e-05", not what the source wrote."""

    __slots__ = ("text",)

    def __new__(cls, value: float, text: str) -> WrittenFloat:
        number = super().__new__(cls, value)
        number.text = text
        return number

    def __reduce__(self) -> tuple[type[WrittenFloat], tuple[float, str]]:  # copies and pickles keep the text
        return WrittenFloat, (float(self), self.text)


def as_text(value: Any) -> str:
    """Any JSON (or Parquet) value as text: answers may be numbers, booleans or lists and must not read as empty.

    A JSON number is shown as its line wrote it; other floats keep `repr` ("42.0", "1e-05"), not a rounding."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return _int_text(value)
    if isinstance(value, WrittenFloat):
        return value.text
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""  # NaN or infinity (a Parquet null in disguise): no text
    if isinstance(value, list | tuple):
        if all(_is_scalar(v) for v in value):
            return ", ".join(as_text(v) for v in value)
        return _dumps(value)
    if isinstance(value, dict):
        return _dumps(value)
    return _scalar_text(value)


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, list | tuple | dict)


def _int_text(value: int) -> str:
    try:
        return str(value)
    except ValueError:  # over Python's int-to-str digit limit: hex is exact and has no limit
        return hex(value)


def _scalar_text(value: Any) -> str:
    """Parquet-only scalars: bytes, timestamps, decimals."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    try:
        return str(value)
    except Exception:  # an arbitrary object's __str__: rendering must not stop a read
        return ""


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=_scalar_text)
    except (TypeError, ValueError, RecursionError):  # non-string keys, pathological nesting
        return ""


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _blank(text: str) -> bool:
    # `not text.strip()` without copying the text: isspace stops at the first visible character
    return not text or text.isspace()


def _find_after(text: str, tag: str, start: int = 0) -> int:
    """Index just past the first `tag` at or after `start`, or -1."""
    i = text.find(tag, start)
    return -1 if i < 0 else i + len(tag)


def _until_tag_or_end(text: str, start: int, closing: str) -> str:
    """What `<tag>(.*?)(?:</tag>|$)` captures from `start`: up to the closing tag, else to the end (before a final
    newline, as `$` matches there). Written with `find`, since the regex is quadratic when the tag repeats."""
    end = text.find(closing, start)
    if end < 0:
        end = len(text) - 1 if text.endswith("\n") else len(text)
    return text[start:end]


def _split_think(text: str) -> tuple[str, str]:
    """(thinking, answer) of a reply that may open with a `<think>...</think>` block; no closing tag: all answer."""
    thinking, sep, answer = text.partition("</think>")
    if not sep:
        return "", text
    return thinking.replace("<think>", ""), answer


# ---------------------------------------------------------------------------------------------
# Chat turns (OpenAI messages, ShareGPT conversations)

# Part keys holding text: OpenAI `text`; several chat exporters `value`; Anthropic `thinking`; others `reasoning`.
_PART_TEXT_KEYS = ("text", "value", "thinking", "reasoning")
# Anthropic's `redacted_thinking` holds no text: shown in the thinking as `[non-text part: redacted_thinking]`.
_REASONING_PART_TYPES = frozenset({"reasoning", "thinking", "reasoning_text", "reasoning_content", "redacted_thinking"})
# Message-level reasoning: DeepSeek API `reasoning_content`, vLLM / OpenRouter `reasoning`, others `thinking`.
_REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")
# Roles compare lower-cased: Cohere writes System / User / Chatbot; Gemini (Vertex AI tuning) names the reply `model`.
_ROLE_ALIASES = {
    "human": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "chatbot": "assistant",
    "model": "assistant",
}


# How a content part without text shows in the text: `[non-text part: image_url]`.
NON_TEXT = "non-text part: "
# Part types that are text by name (OpenAI chat, Responses API): one without its text key is an empty text.
_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text", *_REASONING_PART_TYPES} - {"redacted_thinking"})


def _part_text(part: Any, calls: dict[str, str] | None = None) -> str:
    if not isinstance(part, dict):
        return _str(part)
    # Gemini parts: a function call or its response in place of text
    if isinstance(call := part.get("functionCall"), dict):
        return f"[tool_call] {as_text(call.get('name'))}({as_text(call.get('args', ''))})"
    if isinstance(result := part.get("functionResponse"), dict):
        return f"[tool_result] {as_text(result.get('name'))}: {as_text(result.get('response', ''))}"
    kind = part.get("type")
    # Anthropic Messages content blocks: a tool call and its result; OpenAI's refusal part
    if kind == "tool_use":
        return f"[tool_call] {as_text(part.get('name'))}({as_text(part.get('input', ''))})"
    if kind == "tool_result":  # the tool it answers (by its call's id), and a failed call says so (`is_error`)
        tool = (calls or {}).get(_str(part.get("tool_use_id")), "")
        flag = (f" {tool}" if tool else "") + (", error" if part.get("is_error") is True else "")
        return f"[tool_result{flag}] {_content_text(part.get('content'))}"
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return part["refusal"]
    for key in _PART_TEXT_KEYS:
        value = part.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list):  # Mistral thinking chunks nest one list of text parts
            return "\n".join(_str(v.get("text")) if isinstance(v, dict) else _str(v) for v in value)
        if isinstance(value, dict) and isinstance(value.get("value"), str):  # OpenAI Assistants: text.value
            return value["value"]
    if kind in _TEXT_PART_TYPES or any(key in part for key in _PART_TEXT_KEYS) or not part:
        return ""
    # an image, audio, a file: the scorer cannot see it, but is told it is there (never dropped without a word)
    return f"[{NON_TEXT}{kind if isinstance(kind, str) and kind else next(iter(part))}]"


def _content_text(content: Any, calls: dict[str, str] | None = None) -> str:
    """Chat content as text: a string, or a list of content parts (each part's text, one per line); `calls` names
    the tool of each call id, for the results that name their call by id alone."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_part_text(p, calls) for p in content)
    return ""


def _is_reasoning_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") in _REASONING_PART_TYPES


_RESULT_ROLES = frozenset({"tool", "function", "ipython"})  # turns that carry a tool's output


def _role(turn: dict[str, Any]) -> str:
    role = (_str(turn.get("role")) or _str(turn.get("from"))).lower()
    return _ROLE_ALIASES.get(role, role)


def _body(turn: dict[str, Any]) -> Any:
    """A turn's content: OpenAI `content`, ShareGPT `value`, Gemini `parts`."""
    content = turn.get("content")
    if content is None:
        content = turn.get("value")
    return turn.get("parts") if content is None else content


def _reply(message: dict[str, Any]) -> tuple[str, str]:
    """(thinking, answer) of an assistant turn: reasoning fields and parts, else the `<think>` block of its text."""
    content = _body(message)
    reasoning = [_content_text(message.get(key)) for key in _REASONING_FIELDS]
    if isinstance(content, list):
        reasoning += [_part_text(p) for p in content if _is_reasoning_part(p)]
        content = [p for p in content if not _is_reasoning_part(p)]
    thinking = "\n\n".join(r for r in reasoning if not _blank(r))
    text = _content_text(content)
    return (thinking, text) if thinking else _split_think(text)


def _tool_calls_text(message: dict[str, Any]) -> str:
    """An assistant turn's tool calls (OpenAI `tool_calls`, the older `function_call`), one per line."""
    calls = message.get("tool_calls")
    calls = list(calls) if isinstance(calls, list) else []
    if isinstance(message.get("function_call"), dict):
        calls.append({"function": message["function_call"]})
    lines = []
    for call in calls:
        if not isinstance(call, dict):
            continue
        fn = call.get("function") if isinstance(call.get("function"), dict) else call
        lines.append(f"[tool_call] {as_text(fn.get('name'))}({as_text(fn.get('arguments', fn.get('input', '')))})")
    return "\n".join(lines)


def _with_calls(text: str, message: dict[str, Any]) -> str:
    calls = _tool_calls_text(message)
    return f"{text}\n{calls}" if text and calls else text or calls


def _call_names(turns: Iterable[Any]) -> dict[str, str]:
    """The function each tool call id names, over a conversation's calls: a result may name its call by id alone."""
    names = {}
    for turn in turns:
        if not isinstance(turn, dict):
            continue
        calls = list(turn["tool_calls"]) if isinstance(turn.get("tool_calls"), list) else []
        if isinstance(content := _body(turn), list):  # Anthropic: `tool_use` blocks among the content parts
            calls += [p for p in content if isinstance(p, dict) and p.get("type") == "tool_use"]
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) and isinstance(call.get("function"), dict) else call
            if isinstance(call, dict) and _str(call.get("id")) and _str(fn.get("name")):
                names[call["id"]] = fn["name"]
    return names


def _labelled(role: str, turn: dict[str, Any], calls: dict[str, str]) -> str:
    """A tool result's role with the tool that answered (its `name`, else its call's): which call a result answers,
    when calls ran in parallel."""
    if role not in _RESULT_ROLES:
        return role
    tool = _str(turn.get("name")) or calls.get(_str(turn.get("tool_call_id")), "")
    return f"{role} ({tool})" if tool else role


def _turn_transcript(message: dict[str, Any], calls: dict[str, str] | None = None) -> tuple[str, str]:
    """(role, text) of one turn of a conversation's context: its content, its reasoning as a `<think>` block,
    its tool calls."""
    role = _role(message) or "turn"
    if role != "assistant":
        return _labelled(role, message, calls or {}), _with_calls(_content_text(_body(message), calls), message)
    thinking, text = _reply(message)
    text = f"<think>\n{thinking}\n</think>\n{text}" if not _blank(thinking) else text
    return role, _with_calls(text, message)


def _qa_from_turns(turns: Any, system: str = "") -> Fields | None:
    """A whole conversation as one QA record: the last assistant turn with a reply is the answer (its reasoning
    the thinking, its tool calls appended), every turn before it (system included) the question, rendered as a
    transcript with roles; a question that is one user turn alone stays its bare text. Turns after the answer
    (a last user turn nobody answered) go to `_tail`: hashed into the record id, not shown to the scorer."""
    if not isinstance(turns, list):
        return None
    msgs = [t for t in turns if isinstance(t, dict)]
    if not _blank(system):
        msgs = [{"role": "system", "content": system}, *msgs]
    at = next((i for i in range(len(msgs) - 1, -1, -1) if _role(msgs[i]) == "assistant" and _answers(msgs[i])), None)
    if at is None or not any(_role(m) == "user" for m in msgs[:at]):
        return None
    thinking, answer = _reply(msgs[at])
    calls = _call_names(msgs)
    context = [(m, _turn_transcript(m, calls)) for m in msgs[:at]]
    said = [(m, turn) for m, turn in context if not _blank(turn[1])]
    # the first release's single-turn records keep their text (and record ids): one user turn is the bare question
    if len(said) == 1 and said[0][1][0] == "user":
        question = _content_text(_body(said[0][0]))
    else:
        question = _render(turn for _, turn in context)
    fields = {"question": question, "thinking": thinking, "answer": _with_calls(answer, msgs[at])}
    if msgs[at + 1 :]:
        fields["_tail"] = _render(_turn_transcript(m, calls) for m in msgs[at + 1 :])
    return fields


def _answers(message: dict[str, Any]) -> bool:
    return not _blank(_reply(message)[1]) or bool(_tool_calls_text(message))


def _render(turns: Iterable[tuple[str, str]]) -> str:
    return "\n\n".join(f"### {role}\n{text}" for role, text in turns if text)


def _conversation(d: dict[str, Any]) -> Any:
    turns = d.get("conversations")
    turns = turns if isinstance(turns, list) else d.get("conversation")
    turns = turns if isinstance(turns, list) else d.get("contents")  # Gemini / Vertex AI tuning data
    if isinstance(turns, list) and turns and all(isinstance(t, dict) and "input" in t and not _role(t) for t in turns):
        # Capybara-style exchanges, `[{input, output}]`: a user turn and an assistant turn each
        return [
            {"role": role, "content": t.get(key)}
            for t in turns
            for role, key in (("user", "input"), ("assistant", "output"))
        ]
    return turns


# ---------------------------------------------------------------------------------------------
# QA layouts kept from the first release (*): their output is pinned by record ids in users' caches.


def _qa_generic(d: dict[str, Any]) -> Fields | None:
    if "question" in d and "answer" in d:
        return {"question": _str(d["question"]), "thinking": _str(d.get("thinking")), "answer": _str(d["answer"])}
    return None


def _prompt_solution(d: dict[str, Any]) -> Fields | None:
    # DeepSeek-R1 distill dumps: prompt ends with "<think>\n"; solution = thinking + "</think>" + answer.
    if "prompt" not in d or "solution" not in d:
        return None
    prompt = _str(d["prompt"])
    head = prompt.rstrip()  # what `re.sub(r"<think>\s*$", "", prompt)` did, without scanning for the tag
    question = head[: -len("<think>")] if head.endswith("<think>") else prompt
    thinking, sep, answer = _str(d["solution"]).partition("</think>")
    if not sep:
        thinking, answer = "", thinking
    return {"question": question, "thinking": thinking, "answer": answer}


def _instruction_response(d: dict[str, Any]) -> Fields | None:
    # Marco-o1 style: <Thought>...</Thought><Output>...</Output>, or <think>...</think> answer.
    if "instruction" not in d or "response" not in d or not isinstance(d["response"], str):
        return None
    resp, question = d["response"], _str(d["instruction"])
    if not _blank(context := as_text(d.get("context"))):  # databricks-dolly-15k: the passage the instruction reads
        question = f"{question}\n\n{context}"
    start = _find_after(resp, "<Thought>")
    end = resp.find("</Thought>", start) if start >= 0 else -1
    if end >= 0:
        out = _find_after(resp, "<Output>")  # searched from the start, as before: <Output> may precede the thought
        answer = _until_tag_or_end(resp, out, "</Output>") if out >= 0 else resp[end + len("</Thought>") :]
        return {"question": question, "thinking": resp[start:end], "answer": answer}
    thinking, answer = _split_think(resp)
    return {"question": question, "thinking": thinking, "answer": answer}


def _theorem_statement(proof: str) -> str | None:
    """What `(theorem\\s.*?:=)` matched: the first `theorem` + whitespace, through the next `:=`."""
    i = proof.find("theorem")
    while i >= 0 and not proof[i + 7 : i + 8].isspace():  # str.isspace is re's \s for str patterns
        i = proof.find("theorem", i + 1)
    end = proof.find(":=", i + 8) if i >= 0 else -1
    return proof[i : end + 2] if end >= 0 else None


def _lean_cot_proof(d: dict[str, Any]) -> Fields | None:
    # Kimina-Prover: `cot` = <think>...</think> + Lean, `correct_proof` = the verified Lean file.
    if "cot" not in d or "correct_proof" not in d:
        return None
    proof, cot = _str(d["correct_proof"]), _str(d["cot"])
    stmt = _theorem_statement(proof)
    start = _find_after(cot, "<think>")
    thinking = _until_tag_or_end(cot, start, "</think>") if start >= 0 else ""
    question = f"Prove in Lean 4: {stmt}" if stmt else f"Prove in Lean 4: {_str(d.get('name'))}"
    return {"question": question, "thinking": thinking, "answer": proof}


def _lean_formal(d: dict[str, Any]) -> Fields | None:
    # DeepSeek-Prover few-shot: informal statement as a Lean comment, formal statement, tactic proof.
    if "formal_statement" not in d or "formal_proof" not in d:
        return None
    question = _str(d.get("informal_prefix")) + _str(d["formal_statement"])
    return {"question": question, "thinking": "", "answer": _str(d["formal_statement"]) + _str(d["formal_proof"])}


def _chat_qa(d: dict[str, Any]) -> Fields | None:
    # Amazon Bedrock (Claude fine-tuning) and Anthropic's Messages API keep the system prompt beside the messages,
    # under `system`: a string, or a list of text blocks (Bedrock Converse, Anthropic)
    return _qa_from_turns(d.get("messages"), _system(d) if isinstance(d.get("system"), str | list) else "")


# ---------------------------------------------------------------------------------------------
# New QA layouts


def _sharegpt_qa(d: dict[str, Any]) -> Fields | None:
    # LLaMA-Factory keeps the system prompt beside the turns, under `system`; Gemini under `systemInstruction`
    return _qa_from_turns(_conversation(d), _system(d))


def _system(d: dict[str, Any]) -> str:
    """A system prompt kept beside the turns: a string, a list of text blocks (Anthropic, Bedrock Converse), or
    Gemini's `systemInstruction` content with its parts."""
    system = d.get("system")
    if system is None:
        system = d.get("systemInstruction", d.get("system_instruction"))
    if isinstance(system, dict):
        return _content_text(_body(system))
    if isinstance(system, list):
        return _content_text(system)
    return _str(system)


def _alpaca(d: dict[str, Any]) -> Fields | None:
    # Alpaca joins instruction and input with a blank line; an empty input is just absent.
    if "instruction" not in d or "output" not in d:
        return None
    instruction, extra = as_text(d["instruction"]), as_text(d.get("input"))
    thinking, answer = _split_think(as_text(d["output"]))
    question = f"{instruction}\n\n{extra}" if not _blank(extra) else instruction
    return {"question": question, "thinking": thinking, "answer": answer}


# Aliases in order of preference. Questions: "input" last, as Alpaca-like data uses it for context.
_QUESTION_KEYS = (
    *("question", "problem", "prompt", "query", "instruction", "user_prompt", "input"),
    *("Question", "Problem", "Prompt", "Query", "Instruction", "Input"),
)
# Reasoning: a worked solution or a model's full generation next to a (short) answer.
_THINKING_KEYS = (
    *("reasoning_content", "reasoning", "thinking", "thought", "thoughts", "rationale", "cot", "chain_of_thought"),
    *("solution", "worked_solution", "generation", "model_output", "explanation", "deepseek_reasoning"),
    *("Reasoning", "Rationale", "Solution", "Explanation"),
)
# Answers may be numbers, booleans or lists (math evaluation outputs, labels).
_ANSWER_KEYS = (
    *("answer", "final_answer", "output", "response", "completion", "target", "expected_answer", "ground_truth"),
    *("correct_answer", "reference_answer", "gold", "gt", "label"),
    *("Answer", "Final Answer", "Output", "Response", "Target", "Correct Answer", "Best Answer", "best_answer"),
    "answers",  # Salesforce xlam function calling: the calls, as a JSON string
)


def _is_chat(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and _role(m) for m in value)


def _field_text(value: Any, role: str, render: Callable[[Any], str]) -> str:
    """A field's text; a list of chat turns (TRL conversational prompt/completion) gives its last `role` turn."""
    if _is_chat(value):
        return next((t for m in reversed(value) if _role(m) == role and not _blank(t := _content_text(_body(m)))), "")
    return render(value)


def _prose(value: Any) -> str:
    # Questions and reasoning are prose: a flag or a number under such a key is not one.
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return _str(value)


def _first(d: dict[str, Any], keys: tuple[str, ...], role: str, render: Callable[[Any], str]) -> str:
    texts = (_field_text(d[k], role, render) for k in keys if k in d)
    return next((t for t in texts if not _blank(t)), "")


def _qa_fields(d: dict[str, Any]) -> Fields | None:
    if ranked_answers(d) is not None:  # ranked answers are `ranked_answers`'s: never all of them as one answer
        return None
    question = _first(d, _QUESTION_KEYS, "user", _prose)
    thinking = _first(d, _THINKING_KEYS, "assistant", _prose)
    answer = _first(d, _ANSWER_KEYS, "assistant", as_text)
    if _blank(answer):  # MATH-style: the worked solution is the answer
        thinking, answer = "", thinking
    if _blank(thinking):
        thinking, answer = _split_think(answer)
    return {"question": question, "thinking": thinking, "answer": answer}


# ---------------------------------------------------------------------------------------------
# OpenAI Responses API rollouts (NeMo-Gym / NeMo-RL)


def _rollout_items(d: dict[str, Any]) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]] | None:
    """(instructions, input items, output items), or None when `d` is not a rollout."""
    params, response = d.get("responses_create_params"), d.get("response")
    if not isinstance(params, dict) or not isinstance(response, dict) or not isinstance(response.get("output"), list):
        return None
    raw = params.get("input")
    inputs = [{"type": "message", "role": "user", "content": raw}] if isinstance(raw, str) else raw
    inputs = [i for i in inputs if isinstance(i, dict)] if isinstance(inputs, list) else []
    outputs = [i for i in response["output"] if isinstance(i, dict)]
    return _str(params.get("instructions")), inputs, outputs


def _item_type(item: dict[str, Any]) -> str:
    # Input messages may omit `type` (EasyInputMessage).
    return _str(item.get("type")) or ("message" if "role" in item else "")


def _joined(value: Any) -> str:
    if isinstance(value, list):
        return "\n\n".join(t for t in map(_part_text, value) if not _blank(t))
    return _str(value)


def _reasoning_text(item: dict[str, Any]) -> str:
    # The API returns summaries; open models served through it also return the raw reasoning as `content`.
    return next((t for t in (_joined(item.get("summary")), _joined(item.get("content"))) if not _blank(t)), "")


def _message_texts(items: list[dict[str, Any]], role: str) -> list[str]:
    texts = (_content_text(i.get("content")) for i in items if _item_type(i) == "message" and i.get("role") == role)
    return [t for t in texts if not _blank(t)]


def _responses_qa(d: dict[str, Any]) -> Fields | None:
    rollout = _rollout_items(d)
    if rollout is None:
        return None
    _, inputs, outputs = rollout
    questions, answers = _message_texts(inputs, "user"), _message_texts(outputs, "assistant")
    thinking = "\n\n".join(t for i in outputs if _item_type(i) == "reasoning" and not _blank(t := _reasoning_text(i)))
    answer = answers[-1] if answers else _str(d["response"].get("output_text"))
    if _blank(thinking):
        thinking, answer = _split_think(answer)
    return {"question": questions[-1] if questions else "", "thinking": thinking, "answer": answer}


def _item_turn(item: dict[str, Any]) -> tuple[str, str]:
    kind = _item_type(item)
    if kind == "message":
        return _str(item.get("role")) or kind, _content_text(item.get("content"))
    if kind == "reasoning":
        return kind, _reasoning_text(item)
    if kind.endswith("_call"):  # function_call, custom_tool_call, computer_call, ...
        args = next((item[k] for k in ("arguments", "input", "action") if k in item), "")
        return kind, f"{as_text(item.get('name'))}({as_text(args)})"
    if kind.endswith("_call_output"):
        output = item.get("output")
        return kind, _content_text(output) if isinstance(output, list) else as_text(output)
    return kind, ""  # other items (web search, images) carry no text worth scoring


def _responses_agent(d: dict[str, Any]) -> Fields | None:
    rollout = _rollout_items(d)
    if rollout is None:
        return None
    instructions, inputs, outputs = rollout
    turns = [("system", instructions)] + [_item_turn(i) for i in inputs + outputs]
    tasks, outcomes = _message_texts(inputs, "user"), _message_texts(outputs, "assistant")
    return {
        "task": tasks[0] if tasks else "",
        "trajectory": _render(turns),
        "outcome": outcomes[-1] if outcomes else "",
    }


# ---------------------------------------------------------------------------------------------
# Agent layouts


def _turn_text(turn: dict[str, Any], calls: dict[str, str] | None = None) -> tuple[str, str]:
    # (*) SWE-agent / OpenHands turns: role or source, content or message, plus thought, command, code, action.
    if not turn.get("role") and _item_type(turn).endswith(("_call", "_call_output", "reasoning")):
        return _item_turn(turn)  # Responses items in a saved run (OpenAI Agents SDK `to_input_list()`)
    role = _str(turn.get("role")) or _str(turn.get("source"))
    if not role:
        role = "observation" if "observation" in turn else "action" if "action" in turn else "event"
    parts = [_content_text(turn.get("content"), calls) or _str(turn.get("message"))]
    thought = _str(turn.get("thought"))
    if thought and thought not in parts[0]:
        parts.insert(0, thought)
    for key in ("command", "code"):
        if _str(turn.get(key)) and _str(turn.get(key)) not in parts[-1]:
            parts.append(f"[{key}] {turn[key]}")
    action = turn.get("action")
    if isinstance(action, str) and action and role in ("assistant", "agent") and action not in "\n".join(parts):
        parts.append(f"[action] {action}")
    # chat-format agents: reasoning fields before the reply, tool calls after it (read as empty before)
    reasoning = "\n\n".join(t for k in _REASONING_FIELDS if not _blank(t := _content_text(turn.get(k))))
    if reasoning and reasoning not in parts[0]:
        parts.insert(0, f"<think>\n{reasoning}\n</think>")
    if not action:  # SWE-agent writes each call again as its `action`, rendered above
        parts.append(_tool_calls_text(turn))
    return _labelled(role, turn, calls or {}), "\n".join(p for p in parts if p)


def _agent_turns(d: dict[str, Any]) -> Fields | None:
    # (*) The outcome is the final patch (OpenHands) or submission (SWE-agent).
    turns = d.get("messages") if isinstance(d.get("messages"), list) else d.get("history")
    if not isinstance(turns, list) or not turns:
        return None
    calls = _call_names(turns)
    rendered = [_turn_text(t, calls) for t in turns if isinstance(t, dict)]
    # a system prompt beside the messages (Anthropic, Bedrock) is the trajectory's first turn
    if isinstance(d.get("system"), str | list) and not _blank(system := _system(d)):
        rendered.insert(0, ("system", system))
    trajectory = _render(rendered)
    task = _str(d.get("instruction")) or next((text for role, text in rendered if role == "user"), "")
    test_result = d.get("test_result") if isinstance(d.get("test_result"), dict) else {}
    info = d.get("info") if isinstance(d.get("info"), dict) else {}
    outcome = _str(d.get("git_patch")) or _str(test_result.get("git_patch")) or _str(info.get("submission"))
    return {"task": task, "trajectory": trajectory, "outcome": outcome}


def _sharegpt_agent(d: dict[str, Any]) -> Fields | None:
    turns = _conversation(d)
    if not isinstance(turns, list):
        return None
    msgs = [t for t in turns if isinstance(t, dict)]
    rendered = [("system", _system(d))]
    rendered += [(_str(m.get("from")) or _str(m.get("role")), _content_text(_body(m))) for m in msgs]
    said = [(_role(m), _content_text(_body(m))) for m in msgs]
    task = next((text for role, text in said if role == "user" and not _blank(text)), "")
    outcome = next((text for role, text in reversed(said) if role == "assistant" and not _blank(text)), "")
    return {"task": task, "trajectory": _render(rendered), "outcome": outcome}


# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Preference pairs: one side is the record, the other stays in the original value.

Side = Literal["chosen", "rejected"]
_HH_MARKERS = (("\n\nHuman:", "user"), ("\n\nAssistant:", "assistant"))


def _hh_turns(text: str) -> list[dict[str, str]] | None:
    """Anthropic HH-RLHF transcripts (`\\n\\nHuman: ...\\n\\nAssistant: ...`) as chat turns; None when `text`
    is not one. Linear: one scan per marker."""
    text = text if text.startswith("\n\n") else "\n\n" + text
    cuts = sorted((i, len(marker), role) for marker, role in _HH_MARKERS for i in _all_indexes(text, marker))
    if not cuts or cuts[0][0] != 0 or not any(role == "assistant" for _, _, role in cuts):
        return None
    ends = [i for i, _, _ in cuts[1:]] + [len(text)]
    return [{"role": role, "content": text[i + n : end].strip()} for (i, n, role), end in zip(cuts, ends, strict=True)]


def hh_turns(text: str) -> list[dict[str, str]] | None:
    """The turns of a Human/Assistant transcript, for callers outside the layouts (the unused-text check)."""
    return _hh_turns(text)


def not_chosen_key(key: Any) -> bool:
    """A key holding what the producer marked as not the answer: the rejected side of a pair, or the wrong
    answers an evaluation set lists beside the right one (TruthfulQA `Incorrect Answers`). Never mapped, never
    called unused."""
    low = str(key).lower()
    return any(word in low for word in ("rejected", "incorrect", "wrong"))


def _all_indexes(text: str, sub: str) -> list[int]:
    found, i = [], text.find(sub)
    while i >= 0:
        found.append(i)
        i = text.find(sub, i + len(sub))
    return found


def _preference(d: dict[str, Any], side: Side) -> Fields | None:
    """TRL / UltraFeedback / DPO pairs: `prompt` (text or turns) with `chosen` and `rejected` (text, a completion's
    turns, or the whole conversation)."""
    if "chosen" not in d or "rejected" not in d:
        return None
    value, prompt = d[side], d.get("prompt")
    if _is_chat(value):
        if any(_role(m) == "user" for m in value):  # the whole conversation (UltraFeedback binarized)
            return _qa_from_turns(value)
        context = prompt if _is_chat(prompt) else [{"role": "user", "content": as_text(prompt)}]
        return _qa_from_turns([*context, *value])
    if not isinstance(value, str) or _hh_turns(value) is not None and prompt is None:
        return None  # not a pair this layout reads; HH transcripts are `preference_hh`'s
    if _is_chat(prompt):
        return _qa_from_turns([*prompt, {"role": "assistant", "content": value}])
    question = as_text(prompt) if prompt is not None else _first(d, _QUESTION_KEYS, "user", _prose)
    # a system prompt beside the pair (Intel/orca_dpo_pairs: system, question, chosen, rejected) is context
    system = [{"role": "system", "content": d["system"]}] if not _blank(_str(d.get("system"))) else []
    return _qa_from_turns([*system, {"role": "user", "content": question}, {"role": "assistant", "content": value}])


def _preference_hh(d: dict[str, Any], side: Side) -> Fields | None:
    """Anthropic HH-RLHF: `chosen` / `rejected` are whole transcripts sharing their turns but the last reply."""
    if "chosen" not in d or "rejected" not in d or not isinstance(d[side], str):
        return None
    turns = _hh_turns(d[side])
    return _qa_from_turns(turns) if turns else None


def ranked_answers(d: Any) -> list[dict[str, Any]] | None:
    """Nectar-style ranked answers: `answers` as a list of `{answer, rank}` objects (rank 1 the best, as the
    berkeley-nest/Nectar card says), or None when `d` holds no such list."""
    answers = d.get("answers") if isinstance(d, dict) else None
    if not isinstance(answers, list) or len(answers) < 2:
        return None
    ok = all(
        isinstance(a, dict) and isinstance(a.get("answer"), str) and isinstance(a.get("rank"), int | float)
        for a in answers
    )
    return sorted(answers, key=lambda a: a["rank"]) if ok else None


def _ranked(d: dict[str, Any], side: Side) -> Fields | None:
    """A prompt (text or a Human/Assistant transcript) with ranked answers: the best-ranked answer is the chosen
    side, the worst-ranked the rejected side; a tie at that end is refused (None), not broken by a guess."""
    ranked = ranked_answers(d)
    if ranked is None or "prompt" not in d:
        return None
    pick, other = (ranked[0], ranked[1]) if side == "chosen" else (ranked[-1], ranked[-2])
    if pick["rank"] == other["rank"]:
        return None
    prompt = as_text(d["prompt"])
    turns = _hh_turns(prompt) or [{"role": "user", "content": prompt}]
    if turns[-1]["role"] == "assistant" and _blank(turns[-1]["content"]):  # the open `Assistant:` the answer fills
        turns = turns[:-1]
    return _qa_from_turns([*turns, {"role": "assistant", "content": pick["answer"]}])


# ---------------------------------------------------------------------------------------------


def _qa_layouts(side: Side) -> list[tuple[str, Layout]]:
    return [
        ("responses_rollout", _responses_qa),
        ("question_answer", _qa_generic),
        ("prompt_solution", _prompt_solution),
        ("instruction_response", _instruction_response),
        ("lean_cot_proof", _lean_cot_proof),
        ("lean_formal", _lean_formal),
        ("preference", lambda d: _preference(d, side)),
        ("preference_hh", lambda d: _preference_hh(d, side)),
        ("ranked_answers", lambda d: _ranked(d, side)),
        ("chat_messages", _chat_qa),
        ("sharegpt", _sharegpt_qa),
        ("alpaca", _alpaca),
        ("qa_fields", _qa_fields),
    ]


_QA_LAYOUTS = _qa_layouts("chosen")
_QA_REJECTED = _qa_layouts("rejected")
_AGENT_LAYOUTS: list[tuple[str, Layout]] = [
    ("responses_rollout", _responses_agent),
    ("agent_turns", _agent_turns),
    ("sharegpt", _sharegpt_agent),
]

LAYOUTS: dict[Family, list[tuple[str, Layout]]] = {
    "qa_with_think": _QA_LAYOUTS,
    "qa": _QA_LAYOUTS,
    "agent": _AGENT_LAYOUTS,
}
PREFERENCE_LAYOUTS = frozenset({"preference", "preference_hh", "ranked_answers"})


def as_object(value: Any) -> dict[str, Any] | None:
    """What the layouts read: an object as it is, a bare list of chat turns (a JSONL line or a JSON document that
    is one conversation or trajectory) as `{"messages": turns}` (`{"conversations": turns}` for ShareGPT turns);
    None for anything else."""
    if isinstance(value, dict):
        return value
    if _is_chat(value):  # ShareGPT turns (`from` / `value`) as ShareGPT's `conversations`, others as `messages`
        return {"conversations" if any("from" in m for m in value) else "messages": value}
    if _is_items(value):  # a Responses / Agents SDK item list (`to_input_list()`): one run's messages and calls
        return {"messages": value}
    return None


def _is_items(value: Any) -> bool:
    """A list of OpenAI Responses items: messages (a role) and typed items (function calls, their outputs,
    reasoning), at least one of them a call or a call's output."""
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        return False
    kinds = [_item_type(m) for m in value]
    return all(kinds) and any(k.endswith(("_call", "_call_output")) for k in kinds)


def match(obj: Any, family: Family, side: Side = "chosen") -> tuple[str, Fields] | None:
    """The first layout of the family that fills its required fields: (layout name, raw fields). When none does but
    one recognised the object's shape (its keys were there, a required field was blank), that one, so the caller
    can say which field is empty rather than "no layout"; None when no layout recognised the object at all.
    `side` is the side of a preference pair that becomes the record (the other layouts ignore it)."""
    obj = as_object(obj)
    if obj is None:
        return None
    partial: tuple[str, Fields] | None = None
    layouts = _QA_REJECTED if side == "rejected" and family != "agent" else LAYOUTS[family]
    for name, layout in layouts:
        fields = layout(obj)
        if fields is None:
            continue
        blank = [_blank(fields.get(k, "")) for k in REQUIRED[family]]
        if not any(blank):
            return name, fields
        if not all(blank):  # some required text was found: this layout knew the shape
            partial = partial or (name, fields)
    return partial
