"""Batched decoding that drops the rows that have finished.

transformers' `generate` computes every row of a batch until the last one stops: a row that
ended at its first token keeps paying for a full forward pass at every step while the batch's
longest answer runs to its limit. On a CPU, where a batch is compute-bound, that is most of an
evaluation's or a self-dialogue generation's cost (docs/performance.md, "SmolLM2 on 2 cores").
Here a row leaves the batch, and the KV cache, as soon as it stops, so a step costs what the
rows still writing cost. Greedy decoding gives the same tokens as `generate` (each row's
logits do not depend on the other rows; tests/test_decode.py checks it); sampling draws the
same distribution, but from the random stream in another order, so other samples come out.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)


class GrowingLayer(DynamicLayer):
    """transformers' DynamicLayer, but its keys and values live in a buffer that doubles when
    full, so appending a token writes one slot instead of copying the whole cache (`torch.cat`
    at every step: quadratic in the length, and most of a CPU's time once turns run to
    thousands of tokens). `keys` and `values` are views of the filled part: the same values."""

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._k, self._v = key_states, value_states  # the prompt: the first fill
            self.keys, self.values = self._k, self._v
            return self.keys, self.values
        n, new = self.keys.shape[-2], key_states.shape[-2]
        if n + new > self._k.shape[-2]:
            capacity = max(2 * self._k.shape[-2], n + new)
            self._k, self._v = (torch.cat([t[..., :n, :], t.new_empty(
                (*t.shape[:-2], capacity - n, t.shape[-1]))], dim=-2) for t in (self._k, self._v))
        self._k[..., n: n + new, :] = key_states
        self._v[..., n: n + new, :] = value_states
        self.keys, self.values = self._k[..., : n + new, :], self._v[..., : n + new, :]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            n = self.keys.shape[-2]
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[..., :n, :], self._v[..., :n, :]


def growing_cache(config) -> DynamicCache:
    """A DynamicCache whose full-attention layers grow in place (GrowingLayer); sliding-window
    and other layer types stay transformers' own."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer
                    for layer in cache.layers]
    return cache


def picker(temperature: float, top_p: float = 1.0, top_k: int | None = None):
    """The next-token rule `generate` applies for these settings: argmax at temperature 0,
    else temperature, top-k, top-p (generate's order) and a draw from what is left."""
    if not temperature:
        return lambda ids, logits: logits.argmax(-1)
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))

    def pick(ids, logits):
        probs = torch.softmax(warpers(ids, logits.float()), dim=-1)
        return torch.multinomial(probs, num_samples=1).squeeze(1)

    return pick


def length_groups(lengths: list[int]) -> list[list[int]]:
    """Rows grouped for the prompt pass, longest first: a row joins the current group while
    it is at least half as long as the group's longest, so padding at most doubles a group's
    work, instead of every row paying for the batch's longest prompt."""
    groups: list[list[int]] = []
    for row in sorted(range(len(lengths)), key=lambda r: -lengths[r]):
        if groups and 2 * lengths[row] >= lengths[groups[-1][0]]:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def prefill(model, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
            grouped: bool = True) -> tuple[torch.Tensor, DynamicCache]:
    """The prompt pass: the last position's logits and the KV cache of the left-padded batch.
    Rows of similar length run together (`length_groups`), each group cut to its own longest
    prompt, and their caches are laid into one left-padded cache: the padded slots hold zeros,
    which the attention mask hides as it hides padding. One runaway 1280-token user turn no
    longer makes fifty short ones pay for 1280 positions each. Each row's values are what one
    padded pass computes, up to float rounding of other matrix shapes."""
    rows, length = input_ids.shape
    cache = growing_cache(model.config)
    groups = length_groups(mask.sum(-1).tolist()) if grouped else [list(range(rows))]
    if len(groups) == 1 or not all(isinstance(layer, GrowingLayer) for layer in cache.layers):
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                       cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        return logits, cache
    logits, merged = None, None
    for group in groups:
        index = torch.tensor(group, device=input_ids.device)
        start = length - int(mask[index].sum(-1).max())
        part = growing_cache(model.config)
        out = model(input_ids=input_ids[index, start:], attention_mask=mask[index, start:],
                    position_ids=positions[index, start:], cache=part, use_cache=True,
                    logits_to_keep=1).logits[:, -1]
        if logits is None:
            logits = out.new_empty(rows, out.shape[-1])
            merged = [(layer.keys.new_zeros(rows, *layer.keys.shape[1:2], length,
                                            layer.keys.shape[-1]),
                       layer.values.new_zeros(rows, *layer.values.shape[1:2], length,
                                              layer.values.shape[-1])) for layer in part.layers]
        logits[index] = out
        for (keys, values), layer in zip(merged, part.layers):
            keys[index, :, start:] = layer.keys
            values[index, :, start:] = layer.values
    for layer, (keys, values) in zip(cache.layers, merged):
        layer.update(keys, values)
    return logits, cache


def trim_columns(mask: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
    """Drop the leading columns that every remaining row pads (left padding: the rows that
    needed them have left the batch) from the mask and from each GrowingLayer of the cache;
    returns the mask. Positions come from the mask's sums, which do not change."""
    first = int((mask.sum(0) > 0).nonzero()[0])
    if first == 0 or not all(isinstance(layer, GrowingLayer) for layer in cache.layers):
        return mask
    for layer in cache.layers:
        layer._k, layer._v = layer._k[..., first:, :], layer._v[..., first:, :]
        layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
    return mask[:, first:]


@torch.inference_mode()
def decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
           stop_ids: list[int], pad_id: int, pick=None, stops_at=None,
           trim_padding: bool = False) -> torch.Tensor:
    """Continue each left-padded row of `input_ids` until it writes one of `stop_ids` (kept, as
    `generate` keeps it) or `max_new_tokens`; `stops_at(row_tokens) -> bool`, if given, ends a
    row early as well (a stop string). Returns the prompts and what followed, padded with
    `pad_id` after each row's end: the shape and content of `generate`'s output.
    `trim_padding`: the prompt pass in length groups (`prefill`), and once the longest
    prompts' rows have left, the padding columns no row still needs dropped from the mask and
    the cache (`trim_columns`): for self-dialogue answers, whose prompts range from a few tokens
    to a runaway turn. The values are those of the padded batch up to float rounding (masked
    columns weigh exactly zero). Off for evaluation, whose batches lm-eval sorts by length
    already, so its greedy replies stay bit for bit those of one padded pass."""
    pick = pick or picker(0.0)
    rows, length = input_ids.shape
    out = torch.full((rows, length + max_new_tokens), pad_id, dtype=input_ids.dtype,
                     device=input_ids.device)
    out[:, :length] = input_ids
    alive = torch.arange(rows, device=input_ids.device)  # rows of `out` still in the batch
    stop = torch.tensor(stop_ids, device=input_ids.device)
    mask = attention_mask.long()
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    logits, cache = prefill(model, input_ids, mask, positions, trim_padding)
    written = 0
    for step in range(max_new_tokens):
        token = pick(out[alive, : length + step], logits)
        out[alive, length + step] = token
        written = step + 1
        done = torch.isin(token, stop)
        if stops_at is not None:
            done |= torch.tensor([stops_at(out[r, length: length + step + 1]) for r in alive.tolist()],
                                 device=done.device)
        if done.all() or step + 1 == max_new_tokens:
            break
        if done.any():  # the finished rows leave the batch and the cache
            keep = (~done).nonzero().squeeze(1)
            alive, token, mask = alive[keep], token[keep], mask[keep]
            cache.batch_select_indices(keep)
            if trim_padding:
                mask = trim_columns(mask, cache)
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
        logits = model(input_ids=token[:, None], attention_mask=mask,
                       position_ids=mask.sum(-1, keepdim=True) - 1, cache=cache,
                       use_cache=True).logits[:, -1]
    return out[:, : length + written]
