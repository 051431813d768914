"""A tiny causal language model made in code: a Llama config with random weights and a
byte-level BPE tokenizer trained here with the ``tokenizers`` package, saved as a Hugging
Face model directory (``config.json``, ``model.safetensors``, tokenizer files, a chat
template).  Nothing comes from a hub.  The tests and ``benchmarks/llm_bench.py`` use it.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = """Modelyard serves models over an API. A registry keeps every version of a model,
an operator rolls them out with Helm, and a model server answers requests in batches.
The quick brown fox jumps over the lazy dog. Large models are served as a service.
Tokens are counted, prompts are checked, and streams may stop at any point.
""" * 20

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


def train_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer trained on CORPUS, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<|pad|>", bos_token="<|bos|>",
                                      eos_token="<|end|>")
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def make_tiny_lm(directory: Path, *, hidden: int = 64, layers: int = 2, context: int = 256, seed: int = 0,
                 chat_template: bool = True, dtype: str = "float32") -> Path:
    """Save a tiny Llama (random weights, seeded) with its tokenizer under ``directory``, in ``dtype``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer()
    if not chat_template:
        tokenizer.chat_template = None
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=context, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval().to(getattr(torch, dtype))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
