"""Build a tiny random-weight Qwen2 model folder for a real vLLM server on the CPU (`--load-format dummy`).

Run with the vLLM environment's Python (it has `tokenizers`):  python tiny_model.py OUT_DIR
Nothing is downloaded: the byte-level BPE tokenizer is trained here on a few lines of text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "[A1] Factual Correctness: 7/10 — The answer is correct and the steps are justified.",
    "overall: 72\ntraining_recommendation: keep\ndomain_tag: math\nbrief: A clean worked solution.",
    "Score this record. ## Question ## Thinking ## Answer ## Task ## Trajectory ## Outcome",
    "def f(x):\n    return x + 1\n",
    "theorem mathd_algebra_182 (y : ℂ) : 7 * (3 * y + 2) = 21 * y + 14 := by ring",
    "The quick brown fox jumps over the lazy dog. 0123456789 — – - : / ( ) [ ] { } < > | & *",
]


def build(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": None,
                "chat_template": CHAT_TEMPLATE,
                "model_max_length": 8192,
            }
        )
    )
    (out / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["Qwen2ForCausalLM"],
                "model_type": "qwen2",
                "hidden_size": 128,
                "intermediate_size": 256,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "head_dim": 64,
                "vocab_size": vocab,
                "max_position_embeddings": 8192,
                "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0,
                "tie_word_embeddings": True,
                "torch_dtype": "bfloat16",
                "bos_token_id": tok.token_to_id("<|endoftext|>"),
                "eos_token_id": tok.token_to_id("<|im_end|>"),
            }
        )
    )
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": tok.token_to_id("<|im_end|>")}))


if __name__ == "__main__":
    build(Path(sys.argv[1]))
