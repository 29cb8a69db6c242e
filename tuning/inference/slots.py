"""Decoding in fixed slots: a static key/value cache of `rows` x `width` columns, one CUDA graph per step.

The dynamic batch of tuning/inference/engine.py re-concatenates caches when rows join and runs transformers' eager forward
every step, whose host work (~50 ms a step for a 28-layer 4-bit model) bounds decoding on a GPU. Here every row
of the batch lives in a slot of preallocated per-layer key/value buffers, right-aligned at one shared write
column `c`: [padding | the run's prefix (P keys/values) | prompt | generated]. A P-tuning v2 prefix is exactly a
block of keys/values in front of the text, so it is written into the slot once, and decoding needs no prefix
hook: a plain attention over the slot with a 4D mask (what each row sees) and explicit positions (text positions
start at the row's P). Every step has the same shapes, so on CUDA it is captured once as a CUDA graph and replayed.

Joining rows are prefilled in the same layout (`prefill`: a block [padding | prefix | prompt] per row, attended
under a 4D mask) and copied into free slots at columns [c - block, c); when the rows' content would not fit to the
left of `c`, or `c` reaches the end, the slots are shifted.
"""

from __future__ import annotations

import warnings

import torch


def grouped_decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention of one new token per row over its slot, query heads grouped by their key/value head.

    transformers' sdpa path repeats every key/value head for its query heads whenever a mask is given
    (`repeat_kv`): for a 6B GLM with 2 key/value heads and 32 query heads that wrote ~7.5 GB a step at 64 rows
    (31 % of the step on an H200, benchmarks/RESULTS.md). Here each key/value head is read once:
    (B, kv, group * q, D) @ (B, kv, D, T). `attention_mask`: (B, 1, 1 or q, T) bool, True = attend."""
    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, (heads // kv_heads) * q_len, dim)
    scale = scaling if scaling is not None else dim ** -0.5
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * scale
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value).reshape(batch, heads, q_len, dim)
    return out.transpose(1, 2).contiguous(), None


def prefill_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention, whatever attention the model was loaded with: a prefill's 4D bool mask (True =
    attend) is what sdpa takes, while an eager attention would add it to the scores."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


#: Prefills run at start, (rows, prompt width, block width), so that no request's prefill waits for a compile:
#: the general graph (symbolic sizes; a second shape makes them so where the steps did not) and one for a single row.
PREFILL_WARM_UP = ((2, 5, 9), (3, 7, 12), (1, 6, 10), (1, 8, 13))


class SlotCache:
    """What transformers' attention layers call on `past_key_values`: `update` writes the step's key/value at the
    shared column and returns the whole slot buffers (duck-typed like transformers' caches)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], column: torch.Tensor,
                 compiled: bool = True):
        self.keys, self.values, self.column = keys, values, column
        self.compiled = compiled  # False: fused layers run their eager forward for this call (a prefill's fallback)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.keys[layer_idx].index_copy_(2, self.column, key_states)
        self.values[layer_idx].index_copy_(2, self.column, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def layer(self, idx: int) -> "SlotCache":
        """Layer `idx`'s buffers alone, as layer 0 (tuning/inference/fused_decode.py traces one layer for all)."""
        return SlotCache([self.keys[idx]], [self.values[idx]], self.column, self.compiled)

    def get_seq_length(self, layer_idx: int = 0) -> int:  # only asked when no positions are given (never here)
        return int(self.column)

    def __len__(self) -> int:
        return len(self.keys)


class Slots:
    """`rows` slots of `width` columns on the model's device; `step()` decodes one token for every slot."""

    def __init__(self, model, rows: int, width: int, layers: int, kv_heads: int, head_dim: int, dtype,
                 graphs: bool):
        device = model.get_input_embeddings().weight.device
        self.model, self.rows, self.width, self.device = model, rows, width, device
        shape = (rows, kv_heads, width, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.visible = torch.zeros((rows, 1, 1, width), dtype=torch.bool, device=device)
        self.input_ids = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.positions = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.column = torch.zeros((1,), dtype=torch.long, device=device)
        self.c = 0  # the next column written (host copy of `column`)
        self.start = [width] * rows  # first used column of each slot (width = free)
        self.graphs = graphs and device.type == "cuda"
        self._graphs: dict[int, tuple] = {}  # rows of the step (a power of two) -> (graph, its logits)
        self._pool = None
        self.compile_prefill = False  # the engine sets it when the layers are fused (`prefill`)

    # -- placing rows ------------------------------------------------------------------------------------
    def free_slots(self) -> list[int]:
        """Free slots, lowest first: rows stay packed at the front, so a step runs only the first few slots."""
        return [s for s in range(self.rows) if self.start[s] == self.width]

    def bucket(self) -> int:
        """How many leading slots a step computes: the next power of two over the last used slot (at most all)."""
        used = [s for s in range(self.rows) if self.start[s] < self.width]
        last = (max(used) + 1) if used else 1
        size = 1
        while size < last:
            size *= 2
        return min(size, self.rows)

    def place(self, slot: int, blocks: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Put a row into `slot`: `blocks` per layer (keys, values) of shape (kv_heads, n, head_dim), the prefix's
        and the prompt's concatenated; they end just before column c."""
        n = blocks[0][0].shape[1]
        self._make_room(n)
        lo = self.c - n
        for layer, (k, v) in enumerate(blocks):
            self.keys[layer][slot, :, lo:self.c] = k
            self.values[layer][slot, :, lo:self.c] = v
        self.visible[slot] = False
        self.visible[slot, 0, 0, lo:self.c] = True
        self.start[slot] = lo

    def new_blocks(self, n: int, total: int) -> torch.Tensor:
        """Zeroed keys/values for `n` rows of `total` columns, laid out as a slot: (layers, 2 = keys|values, n,
        kv_heads, total, head_dim). The engine writes each row's prefix into it, `prefill` the prompts."""
        _, heads, _, dim = self.keys[0].shape
        return torch.zeros((len(self.keys), 2, n, heads, total, dim), dtype=self.keys[0].dtype, device=self.device)

    def prefill(self, input_ids: torch.Tensor, positions: torch.Tensor, blocks: torch.Tensor,
                seen: torch.Tensor) -> torch.Tensor:
        """Prefill n new rows straight into slot-shaped `blocks` (`new_blocks`, each row's prefix already in the
        columns before the last W): the prompts' keys/values are written into the last W columns, and each prompt
        token attends over the block under a 4D mask, as a decode step attends over its slot. `input_ids` and
        `positions`: (n, W), left-padded; `seen`: (n, total) bool, the prefix and prompt columns of each row
        (False: padding). A padding query sees its own column: an empty attention row gives NaN, which would reach
        the real rows through their masked columns (0 x NaN). Returns the last column's logits (n, vocab), float.
        No prefix hook, no DynamicCache; with fused layers (fused_decode.py) the decode step's compiled layer code
        runs here too. The mask is made outside inference mode, as the step's is (torch.compile guards on that)."""
        width, total = input_ids.shape[1], seen.shape[1]
        columns = torch.arange(total, device=self.device)
        own = torch.arange(total - width, total, device=self.device)  # each query's column
        mask = (seen[:, None, :] & (columns[None, None, :] <= own[None, :, None])) | (columns == own[:, None])[None]
        compiled = self.compile_prefill and width > 1  # a one-token prompt would need graphs of its own (size 1)
        try:
            return self._prefill_forward(input_ids, positions, blocks, mask[:, None], own, compiled)
        except (torch.cuda.OutOfMemoryError, getattr(torch, "AcceleratorError", torch.cuda.OutOfMemoryError)):
            raise  # the device's own failure (memory, a device-side assert): eager would not do better
        except Exception as exc:  # the compiled prefill failed: if the eager one works, keep to it from now on
            if not compiled:
                raise
            logits = self._prefill_forward(input_ids, positions, blocks, mask[:, None], own, compiled=False)
            self.compile_prefill = False
            from tasktune.errors import TaskTuneWarning
            warnings.warn(f"the compiled prefill failed ({type(exc).__name__}: {exc}); prefilling with eager "
                          f"layers from now on (decode steps stay compiled)", TaskTuneWarning, stacklevel=2)
            return logits

    @torch.inference_mode()
    def _prefill_forward(self, input_ids, positions, blocks, mask, own, compiled: bool) -> torch.Tensor:
        from tasktune.tuning.model.prefix import ATTENTION_KWARG

        cache = SlotCache(list(blocks[:, 0].unbind(0)), list(blocks[:, 1].unbind(0)), own, compiled)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=1, **{ATTENTION_KWARG: prefill_attention})
        return out.logits[:, -1, :].float()

    def place_blocks(self, slots: list[int], blocks: torch.Tensor, seen: torch.Tensor) -> None:
        """Put n prefilled rows (`prefill`'s `blocks` and `seen`) into `slots`, two copies a layer for all of them.
        Every row gets the same block of columns ending just before column c; `visible` hides its padding.
        Decoding reads keys through that mask and explicit positions, so where in the slot a row's keys sit does
        not matter: `place` packs a row, this leaves the batch's padding in place (a few columns a row)."""
        self._make_room(seen.shape[1])
        lo, index = self.c - seen.shape[1], torch.tensor(slots, device=self.device)
        for layer, (keys, values) in enumerate(zip(self.keys, self.values)):
            keys[index, :, lo:self.c] = blocks[layer, 0]
            values[index, :, lo:self.c] = blocks[layer, 1]
        self.visible[index] = False
        self.visible[index, 0, 0, lo:self.c] = seen
        for slot in slots:
            self.start[slot] = lo

    def release(self, slot: int) -> None:
        self.start[slot] = self.width
        self.visible[slot] = False

    def _make_room(self, n: int) -> None:
        """Make columns [c - n, c) free for a new row and leave room to write at c."""
        if n > self.width - 1:
            raise RuntimeError(f"a row of {n} keys/values does not fit a slot of {self.width} columns")
        used = [self.start[s] for s in range(self.rows) if self.start[s] < self.width]
        if not used:
            self.c = n
            return
        if self.c >= self.width:
            self._shift(-min(used))
        if self.c < n:
            self._shift(n - self.c)

    def _shift(self, by: int) -> None:
        """Move every slot's content `by` columns (right if positive); the write column moves with it."""
        if by == 0:
            return
        for buf in (*self.keys, *self.values):
            buf.copy_(torch.roll(buf, shifts=by, dims=2))
        self.visible.copy_(torch.roll(self.visible, shifts=by, dims=3))
        if by > 0:
            self.visible[..., :by] = False
        else:
            self.visible[..., by:] = False
        self.start = [s if s == self.width else s + by for s in self.start]
        self.c += by

    def compact(self) -> None:
        """Before a step at the last column: shift the slots left past the padding they all have."""
        if self.c >= self.width:
            used = [self.start[s] for s in range(self.rows) if self.start[s] < self.width]
            self._shift(-(min(used) if used else self.c))

    def warm_up(self) -> int:
        """Capture the step's CUDA graph for every bucket of rows now (1, 2, 4, ... up to all slots), before any
        request: else the first request at each new batch size waited for its capture, and for the compile of
        fused layers (seconds to a minute cold). Only on empty slots; returns how many graphs there are.

        The capture's forwards run on empty slots, so each sees its write column (as `step` sets it) lest a row
        that sees no key at all gives NaN keys/values to the next layers, and the buffers are cleared after: a
        NaN left in a column that a later row has masked still reaches its output (0 x NaN), which made rows
        placed past column 0 answer garbage (tests/serve/test_engine.py). Then a few prefills (`PREFILL_WARM_UP`,
        into blocks of their own) compile fused layers for the prefill's shapes."""
        if not self.graphs or any(s < self.width for s in self.start):
            return 0
        size = 1
        while True:
            self.column.fill_(self.c)
            self.visible[:size, 0, 0, self.c] = True
            if size not in self._graphs:
                self._graphs[size] = self._capture(size)
            if size >= self.rows:
                break
            size = min(2 * size, self.rows)
        for buf in (*self.keys, *self.values):
            buf.zero_()
        self.visible.zero_()
        self.c = 0
        for n, width, total in PREFILL_WARM_UP if self.compile_prefill else ():  # eager layers need no warm-up
            self.prefill(torch.zeros((n, width), dtype=torch.long, device=self.device),
                         torch.arange(width, device=self.device).expand(n, -1), self.new_blocks(n, total),
                         torch.ones((n, total), dtype=torch.bool, device=self.device))
        return len(self._graphs)

    # -- one step ----------------------------------------------------------------------------------------
    def step(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        """Decode one token for the leading `bucket()` slots (free ones compute garbage, ignored): logits
        (bucket, vocab), float; the caller's lists cover every slot."""
        self.compact()
        rows = self.bucket()
        self.input_ids[:rows].copy_(torch.tensor(tokens[:rows], dtype=torch.long).view(-1, 1), non_blocking=True)
        self.positions[:rows].copy_(torch.tensor(positions[:rows], dtype=torch.long).view(-1, 1), non_blocking=True)
        self.column.fill_(self.c)
        self.visible[:rows, 0, 0, self.c] = True
        if not self.graphs:
            logits = self._forward(rows)
        else:
            if rows not in self._graphs:
                self._graphs[rows] = self._capture(rows)
            graph, logits = self._graphs[rows]
            graph.replay()
        self.c += 1
        return logits.float()

    @torch.inference_mode()
    def _forward(self, rows: int) -> torch.Tensor:
        cache = SlotCache([k[:rows] for k in self.keys], [v[:rows] for v in self.values], self.column)
        from tasktune.tuning.model.prefix import ATTENTION_KWARG

        out = self.model(input_ids=self.input_ids[:rows], attention_mask=self.visible[:rows],
                         position_ids=self.positions[:rows], past_key_values=cache, use_cache=True, logits_to_keep=1,
                         **{ATTENTION_KWARG: grouped_decode_attention})
        return out.logits[:, -1, :]

    def _capture(self, rows: int):
        """Warm up on a side stream, then capture one step of `rows` slots (the write column is read from
        `column`; the warm-up writes the same column the replay then writes). All graphs share one memory pool
        (they never run at once)."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(rows)
        torch.cuda.current_stream().wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._forward(rows)
        return graph, logits
