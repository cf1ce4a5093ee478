"""lm-eval's HFLM with greedy generation that drops finished rows (sasft/decode.py).

HFLM hands a batch to `generate` with stop strings and runs it until every row has met one (or
max_gen_toks); a row that answered in five tokens is computed at every step of the batch's
longest answer. Here each row leaves the batch when it writes an end-of-turn token or meets a
stop string, which lm-eval would cut its reply at anyway, so the replies, and the scores, are
the same. Sampled generation, and any option this does not know, goes to HFLM unchanged.
"""

from __future__ import annotations

from lm_eval.models.huggingface import HFLM

from .decode import decode
from .generation import stop_ids


class ShrinkingBatchHFLM(HFLM):
    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        kwargs = dict(generation_kwargs)
        attention_mask = kwargs.pop("attention_mask", None)  # HFLM passes the padding mask
        if not kwargs.get("temperature"):
            kwargs.pop("temperature", None)
        if kwargs != {"do_sample": False} or attention_mask is None or self.backend != "causal":
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        tokenizer = self.tokenizer
        ids = stop_ids(self.model, tokenizer)
        words = [s for s in stop if s not in {tokenizer.decode([i]) for i in ids}]
        # As lm-eval's MultiTokenEOSCriteria: a stop string in the last few tokens' text.
        window = max((len(tokenizer.encode(s, add_special_tokens=False)) + 2 for s in words),
                     default=0)

        def stops_at(tokens) -> bool:
            text = tokenizer.decode(tokens[-window:].tolist())
            return any(s in text for s in words)

        return decode(self.model, context, attention_mask, max_length - context.shape[1], ids,
                      tokenizer.pad_token_id, stops_at=stops_at if words else None)
