"""A character-level chat tokenizer, built offline with the `tokenizers` library.

It behaves like a hub tokenizer where the pipeline cares: it is a `PreTrainedTokenizerFast`
with special tokens and a Jinja chat template, so `apply_chat_template`, assistant masks,
`generate` and lm-eval's HF wrapper all work on it unchanged.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {
    "pad_token": "<|pad|>",
    "bos_token": "<|bos|>",
    "eos_token": "<|end|>",  # ends every turn, so generation stops at the end of a turn
    "unk_token": "<|unk|>",
}
ROLE_TOKENS = ["<|user|>", "<|assistant|>", "<|system|>"]

# The user turn header alone is what self-dialogue generation prompts with (the Magpie trick).
# `{% generation %}` marks assistant content so `return_assistant_tokens_mask` works.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|end|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

CHARACTERS = string.ascii_letters + string.digits + " .,!?:;'\"-+=*/()#\n"


def build_tokenizer() -> PreTrainedTokenizerFast:
    specials = list(SPECIAL_TOKENS.values()) + ROLE_TOKENS
    vocab = {tok: i for i, tok in enumerate(specials + list(CHARACTERS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    # Every character is its own token; special tokens are matched before this split runs.
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        additional_special_tokens=ROLE_TOKENS,
        chat_template=CHAT_TEMPLATE,
        padding_side="right",
        **SPECIAL_TOKENS,
    )
    return tokenizer
