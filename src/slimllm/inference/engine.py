"""The generation engine: one llama.cpp context driven from one worker thread.

The context holds `slots` sequences. Each step the worker builds one batch from every active
slot — a chunk of prompt for slots still reading their prompt, the last sampled token for slots
that are generating — decodes it once, and samples each slot's next token with that slot's own
sampler chain. Requests wait in a bounded queue for a free slot. Everything that touches llama.cpp
happens on the worker thread; the HTTP side only exchanges plain Python objects with it.

Batch invariance. llama.cpp's CPU kernels do not all add up in the same order for every batch
shape, so a prompt's greedy text could change with the requests that share its batch. With
`batch_invariant` (and more than one slot) every token goes through kernels whose result for one
row does not depend on the other rows: no weight repacking (its 8x8 Q4_K kernels differ from the
one-row ones and by column position) and no tiled K-quant matmul, so each weight matrix is
multiplied row by row the same way; flash attention over one KV stream per slot, so a sequence's
cells keep their order whatever else runs; and keys stored as Q8_0, which keeps flash attention on
its one-row-at-a-time kernel (its tiled kernel for 64+ query rows and its split-KV kernel for a
lone row over 512+ cells only take F16/F32 keys).
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import math
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimllm.inference import binding
from slimllm.inference.chat_templates import (
    BuiltinChatTemplate,
    ChatRenderer,
    JinjaChatTemplate,
    builtin_template_names,
)
from slimllm.inference.tools import GENERIC, MARKERS, detect

log = logging.getLogger("slimllm.inference")

# What the worker reports to a request, in order: zero or more ("text", str), each preceded, when
# the job asks for log probabilities, by the ("token", TokenLogprob) entries of the tokens it
# holds, then exactly one ("done", Finished) or ("error", str).
Event = tuple[str, Any]
# llama.cpp's pooling types, by the names the settings use.
POOLING = {"mean": 1, "cls": 2, "last": 3}
# Parsed grammars kept for reuse: a few distinct schemas or tool sets in use at once.
GRAMMARS_KEPT = 8


class EngineError(RuntimeError):
    """The model cannot be loaded or the engine cannot run; the message is one line."""


class QueueFull(RuntimeError):
    """The request queue is at its bound."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    # llama-server's extension: never end on an end-of-generation token (benchmarks, fixed lengths).
    ignore_eos: bool = False


@dataclass(frozen=True)
class Finished:
    reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV cache the slot already held


@dataclass(frozen=True)
class Alternative:
    text: str
    raw: bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A sampled token's log probability under the model (its raw logits, before any sampler),
    and the `top` most likely tokens at that place."""

    token: Alternative
    top: list[Alternative]


@dataclass
class Job:
    prompt: list[int]
    max_tokens: int
    sampling: Sampling
    stop: list[str]
    emit: Callable[[Event], None]
    grammar: str | None = None  # GBNF the output must follow (structured outputs, forced tool calls)
    logprobs: int | None = None  # None: off; n: each token's log probability and its n best rivals
    cache_prompt: bool = True  # keep the longest prefix the slot's KV cache shares with the prompt
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.monotonic)

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class Stats:
    """Counters read by /metrics. Written by the worker thread only."""

    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    predicted_tokens: int = 0
    predicted_seconds: float = 0.0
    decode_calls: int = 0
    busy_slots_in_decodes: int = 0
    requests_finished: int = 0
    prompt_tokens_cached: int = 0


@dataclass
class _Slot:
    index: int
    job: Job | None = None
    pending_prompt: list[int] = field(default_factory=list)
    position: int = 0
    generated: int = 0
    last_token: int = -1
    sampler: Any = None
    text: _StopScanner | None = None
    decoder: Any = None
    prompt_started: float = 0.0
    predict_started: float = 0.0
    # The tokens whose keys and values the slot's sequence holds, from position 0 on: the last
    # request's prompt and what it generated. The next request keeps their common prefix.
    cached: list[int] = field(default_factory=list)
    reused: int = 0


class Engine:
    def __init__(
        self,
        model_path: Path,
        *,
        ctx_size: int = 4096,
        threads: int | None = None,
        batch_size: int = 512,
        slots: int = 1,
        queue_size: int = 16,
        chat_format: str | None = None,
        chat_template: str | None = None,
        chat_template_origin: str = "file",
        batch_invariant: bool = True,
        embeddings: bool = False,
        pooling: str | None = None,
    ) -> None:
        self.model_path = model_path
        self.slots_count = max(1, slots)
        # One slot never shares a batch: nothing to keep invariant, so nothing to pay for it.
        self.batch_invariant = batch_invariant and self.slots_count > 1
        self.queue_size = queue_size
        self.threads = threads or len(os.sched_getaffinity(0))
        self.batch_size = batch_size
        self.stats = Stats()
        self.last_progress = time.monotonic()
        self.busy = False
        self._pending: queue.Queue[Job] = queue.Queue()
        self._submit_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lib = binding.load()
        self._silence_logs()
        self._load(ctx_size)
        self.chat = self._choose_chat_renderer(chat_format, chat_template, chat_template_origin)
        # How the model writes tool calls, as its template shows; llama.cpp's built-in
        # templates know no tools, so their models are told the generic format.
        self.tool_format = detect(self.chat.template) if isinstance(self.chat, JinjaChatTemplate) else GENERIC
        # Tool-call markers are control tokens in some vocabularies (Mistral's [TOOL_CALLS]);
        # their text must reach the answer for the call to be read back, as llama-server keeps it.
        self._preserved = {
            ids[0] for ids in (self.tokenize(m, add_bos=False) for m in MARKERS) if len(ids) == 1
        }
        self._slots = [_Slot(i) for i in range(self.slots_count)]
        self._batch = self._lib.llama_batch_init(max(self.batch_size, self.slots_count), 0, self.slots_count)
        self._piece_buf = ctypes.create_string_buffer(256)
        # Events wait here until the next llama_decode is under way; see _deliver.
        self._outbox: list[tuple[Job, Event]] = []
        self._eog: list[int] | None = None
        # Parsed grammars by their text, newest last (check_grammar, _grammar_sampler).
        self._grammars: OrderedDict[str, Any] = OrderedDict()
        self._grammar_lock = threading.Lock()
        self.embeddings = embeddings
        self._embed_lock = threading.Lock()
        self._embed_ctx: Any = None
        self.pooling = self._choose_pooling(pooling) if embeddings else None

    # -- loading -----------------------------------------------------------------------------

    def _silence_logs(self) -> None:
        lib = self._lib

        def forward(level: int, text: bytes, _user: object) -> None:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("llama.cpp: %s", text.decode("utf-8", errors="replace").rstrip())

        # Keep a reference: llama.cpp calls this pointer for the life of the process.
        self._log_callback = lib.llama_log_callback(forward)
        lib.llama_log_set(self._log_callback, None)

    def _load(self, ctx_size: int) -> None:
        lib = self._lib
        if self.batch_invariant:
            # ggml reads it once per process, at the first matrix multiplication.
            os.environ["GGML_CPU_TILED_MM"] = "0"
        lib.llama_backend_init()
        mparams = lib.llama_model_default_params()
        mparams.use_extra_bufts = not self.batch_invariant
        self._model = lib.llama_model_load_from_file(str(self.model_path).encode(), mparams)
        if not self._model:
            raise EngineError(
                f"llama.cpp cannot load {self.model_path} (corrupt, truncated or unsupported GGUF)"
            )
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_ctx_train = int(lib.llama_model_n_ctx_train(self._model))
        self.ctx_per_slot = ctx_size if ctx_size > 0 else self.n_ctx_train
        cparams = lib.llama_context_default_params()
        # Like llama-server's -np: the context is split evenly, each slot gets ctx_size tokens.
        cparams.n_ctx = self.ctx_per_slot * self.slots_count
        cparams.n_batch = self.batch_size
        cparams.n_ubatch = min(self.batch_size, 512)
        cparams.n_seq_max = self.slots_count
        # As llama-server: sliding-window layers (Gemma 3) keep their window, not the whole context
        # (Gemma 3 270M at 4096 tokens: 27 MB of KV cache per slot instead of 72 MB). Prefix reuse
        # still works while the kept prefix's last window is in the cache (see _reusable): in a
        # chat, the next turn's prompt goes back only over the last answer.
        cparams.swa_full = False
        cparams.n_threads = self.threads
        cparams.n_threads_batch = self.threads
        cparams.no_perf = True
        if self.batch_invariant:
            cparams.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
            cparams.kv_unified = False
            cparams.type_k = lib.GGML_TYPE_Q8_0
            log.info("batch invariance on: keys cached as Q8_0, flash attention, no weight repacking")
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise EngineError(
                f"llama.cpp cannot create a context of {cparams.n_ctx} tokens for {self.model_path}"
            )
        self._memory = lib.llama_get_memory(self._ctx)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        self.add_bos = bool(lib.llama_vocab_get_add_bos(self._vocab))
        self.metadata = self._read_metadata()
        self.n_params = int(lib.llama_model_n_params(self._model))
        self.size_bytes = int(lib.llama_model_size(self._model))
        self.n_swa = int(lib.llama_model_n_swa(self._model))
        self.n_embd = int(lib.llama_model_n_embd(self._model))

    def _read_metadata(self) -> dict[str, str]:
        lib = self._lib
        meta: dict[str, str] = {}
        buf = ctypes.create_string_buffer(1 << 16)
        for i in range(int(lib.llama_model_meta_count(self._model))):
            if lib.llama_model_meta_key_by_index(self._model, i, buf, len(buf)) < 0:
                continue
            key = buf.value.decode("utf-8", errors="replace")
            n = lib.llama_model_meta_val_str_by_index(self._model, i, buf, len(buf))
            if n >= len(buf):  # long values (chat templates) need a bigger buffer
                big = ctypes.create_string_buffer(n + 1)
                lib.llama_model_meta_val_str_by_index(self._model, i, big, len(big))
                meta[key] = big.value.decode("utf-8", errors="replace")
            elif n >= 0:
                meta[key] = buf.value.decode("utf-8", errors="replace")
        return meta

    @property
    def general_name(self) -> str:
        return self.metadata.get("general.name", "")

    @property
    def architecture(self) -> str:
        return self.metadata.get("general.architecture", "")

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        text = self._lib.llama_vocab_get_text(self._vocab, token)
        return text.decode("utf-8", errors="replace") if text else ""

    def _choose_chat_renderer(
        self, chat_format: str | None, template: str | None, template_origin: str
    ) -> ChatRenderer:
        self.bos_token = bos = self._token_text(int(self._lib.llama_vocab_bos(self._vocab)))
        self.eos_token = eos = self._token_text(int(self._lib.llama_vocab_eos(self._vocab)))
        if template:
            try:
                return JinjaChatTemplate(template, bos, eos, template_origin)
            except ValueError as exc:
                raise EngineError(str(exc)) from None
        if chat_format:
            names = builtin_template_names(self._lib)
            if chat_format not in names:
                raise EngineError(f"unknown chat format '{chat_format}'; llama.cpp knows: {', '.join(names)}")
            return BuiltinChatTemplate(self._lib, chat_format, "chat format setting")
        gguf_template = self.metadata.get("tokenizer.chat_template")
        if gguf_template:
            try:
                return JinjaChatTemplate(gguf_template, bos, eos, "GGUF metadata")
            except ValueError:
                log.warning(
                    "the GGUF chat template is not valid Jinja; trying llama.cpp's template detection"
                )
                try:
                    return BuiltinChatTemplate(self._lib, gguf_template, "detected from GGUF metadata")
                except ValueError:
                    pass
        # llama-server does the same when a model carries no usable template.
        log.warning(
            "%s has no usable chat template; using chatml (set a chat format to change)", self.model_path
        )
        return BuiltinChatTemplate(self._lib, "chatml", "fallback: the model has no chat template")

    # -- text <-> tokens ---------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            tokens = (self._lib.llama_token * capacity)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), tokens, capacity, add_bos, True)
            if n >= 0:
                return list(tokens[:n])
            capacity = -n

    def chat_tokens(self, rendered: str) -> list[int]:
        """The tokens of a rendered chat prompt: BOS added unless the rendered text starts with it
        (a template may write it literally or through `bos_token`), as llama.cpp's chat code does."""
        wrote_bos = bool(self.bos_token) and rendered.startswith(self.bos_token)
        return self.tokenize(rendered, add_bos=self.add_bos and not wrote_bos)

    def completion_prompt(self, text: str) -> list[int]:
        return self.tokenize(text, add_bos=self.add_bos)

    # -- requests ----------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue a job. Raises QueueFull when every slot is busy and `queue_size` requests wait."""
        with self._submit_lock:
            if self._pending.qsize() + self.active >= self.slots_count + self.queue_size:
                raise QueueFull
            self._pending.put(job)
        self._wake.set()

    @property
    def waiting(self) -> int:
        return self._pending.qsize()

    @property
    def active(self) -> int:
        return sum(1 for slot in self._slots if slot.job is not None)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llama-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the worker --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._admit()
                if not any(slot.job for slot in self._slots):
                    self._deliver()
                    self.busy = False
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                self.busy = True
                self.last_progress = time.monotonic()
                self._step()
                self.last_progress = time.monotonic()
        except Exception:
            log.exception("the engine worker stopped")
            for slot in self._slots:
                if slot.job is not None:
                    self._outbox.append((slot.job, ("error", "the inference engine failed")))
            raise
        finally:
            self._deliver()  # a stop or a failure between steps leaves events here
            self.busy = False

    def _admit(self) -> None:
        while True:
            free = [slot for slot in self._slots if slot.job is None]
            if not free:
                return
            try:
                job = self._pending.get_nowait()
            except queue.Empty:
                return
            if job.cancelled.is_set():
                continue
            # The slot whose cache shares the longest prefix with the prompt; among equals, the
            # one holding least, so the others keep what they hold for their conversations.
            slot = max(free, key=lambda s: (_common_prefix(s.cached, job.prompt), -len(s.cached)))
            self._assign(slot, job)

    def _reusable(self, slot: _Slot, prompt: list[int]) -> int:
        """How many leading prompt tokens the slot's cache can keep. At least the last prompt
        token is always decoded again: its logits give the first sampled token."""
        keep = min(_common_prefix(slot.cached, prompt), len(prompt) - 1)
        if keep <= 0:
            return 0
        if self.n_swa > 0:
            # A sliding-window cache (swa_full off) holds only the last window of positions:
            # going back to `keep` needs the window before it, which may have been dropped.
            oldest = int(self._lib.llama_memory_seq_pos_min(self._memory, slot.index))
            if oldest > max(0, keep - self.n_swa):
                return 0
        return keep

    def _assign(self, slot: _Slot, job: Job) -> None:
        lib = self._lib
        keep = self._reusable(slot, job.prompt) if job.cache_prompt else 0
        if keep < len(slot.cached) and not lib.llama_memory_seq_rm(self._memory, slot.index, keep, -1):
            keep = 0  # this memory cannot drop a suffix (recurrent models): start from empty
        if keep == 0:
            lib.llama_memory_seq_rm(self._memory, slot.index, -1, -1)
        del slot.cached[keep:]
        slot.reused = keep
        self.stats.prompt_tokens_cached += keep
        slot.job = job
        slot.pending_prompt = list(job.prompt[keep:])
        slot.position = keep
        slot.generated = 0
        slot.last_token = -1
        slot.sampler = self._make_sampler(job.sampling, job.grammar)
        slot.text = _StopScanner(job.stop)
        slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.prompt_started = time.monotonic()

    def check_grammar(self, grammar: str) -> None:
        """Raise EngineError when llama.cpp cannot parse the grammar (called before queueing).
        The parsed grammar is kept for the job's sampler, and for the next request with the same
        schema or tools, which clients usually send on every call."""
        with self._grammar_lock:
            if grammar in self._grammars:
                self._grammars.move_to_end(grammar)
                return
        parsed = self._lib.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        if not parsed:
            raise EngineError("llama.cpp cannot parse the grammar")
        with self._grammar_lock:
            old = self._grammars.pop(grammar, None)
            self._grammars[grammar] = parsed
            if old is not None:
                self._lib.llama_sampler_free(old)
            while len(self._grammars) > GRAMMARS_KEPT:
                self._lib.llama_sampler_free(self._grammars.popitem(last=False)[1])

    def _grammar_sampler(self, grammar: str) -> Any:
        with self._grammar_lock:
            parsed = self._grammars.get(grammar)
            if parsed is not None:
                return self._lib.llama_sampler_clone(parsed)
        return self._lib.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")

    def _make_sampler(self, s: Sampling, grammar: str | None = None) -> Any:
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if grammar:
            # First, so every sampler after it only sees tokens the grammar allows.
            lib.llama_sampler_chain_add(chain, self._grammar_sampler(grammar))
        if s.ignore_eos:
            # As llama-server does: a -inf bias on every end-of-generation token.
            eog = self._eog_tokens()
            biases = (lib.llama_logit_bias * len(eog))()
            for entry, token in zip(biases, eog, strict=True):
                entry.token, entry.bias = token, float("-inf")
            lib.llama_sampler_chain_add(
                chain, lib.llama_sampler_init_logit_bias(self.n_vocab, len(eog), biases)
            )
        if s.repeat_penalty != 1.0 or s.presence_penalty or s.frequency_penalty:
            lib.llama_sampler_chain_add(
                chain,
                lib.llama_sampler_init_penalties(
                    self.n_vocab, 64, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
                ),
            )
        if s.temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        seed = lib.LLAMA_DEFAULT_SEED if s.seed is None else s.seed & 0xFFFFFFFF
        if s.top_k > 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(s.top_k))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(s.top_p, 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(s.min_p, 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(s.temperature))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
        return chain

    def _eog_tokens(self) -> list[int]:
        if self._eog is None:
            self._eog = [t for t in range(self.n_vocab) if self._lib.llama_vocab_is_eog(self._vocab, t)]
        return self._eog

    def _step(self) -> None:
        lib = self._lib
        batch = self._batch
        budget = self.batch_size
        n = 0
        sample_at: list[tuple[_Slot, int]] = []
        prompt_tokens_in_batch = 0
        for slot in self._slots:
            job = slot.job
            if job is None:
                continue
            if job.cancelled.is_set():
                self._finish(slot, "cancelled")
                continue
            if slot.pending_prompt:
                take = slot.pending_prompt[: max(0, budget - n)]
                if not take:
                    continue
                del slot.pending_prompt[: len(take)]
                last = not slot.pending_prompt
                for i, token in enumerate(take):
                    self._batch_add(n, token, slot.position, slot.index, last and i == len(take) - 1)
                    slot.position += 1
                    n += 1
                slot.cached.extend(take)
                prompt_tokens_in_batch += len(take)
                if last:
                    sample_at.append((slot, n - 1))
            elif n < budget:
                self._batch_add(n, slot.last_token, slot.position, slot.index, True)
                slot.cached.append(slot.last_token)
                slot.position += 1
                sample_at.append((slot, n))
                n += 1
        if n == 0:
            return
        batch.n_tokens = n
        self._deliver()
        started = time.monotonic()
        rc = lib.llama_decode(self._ctx, batch)
        elapsed = time.monotonic() - started
        self.stats.decode_calls += 1
        self.stats.busy_slots_in_decodes += self.active
        if rc != 0:
            for slot in self._slots:
                slot.cached.clear()  # what the failed batch left in the cache is unknown
            for slot, _ in sample_at:
                self._fail(slot, f"llama_decode failed (code {rc})")
            return
        if prompt_tokens_in_batch:
            self.stats.prompt_tokens += prompt_tokens_in_batch
            self.stats.prompt_seconds += elapsed * prompt_tokens_in_batch / n
        generated_in_batch = n - prompt_tokens_in_batch
        if generated_in_batch:
            self.stats.predicted_seconds += elapsed * generated_in_batch / n
        for slot, index in sample_at:
            self._sample(slot, index)

    def _deliver(self) -> None:
        """Hand the queued events to their jobs.

        Called just before llama_decode, when no slot is busy, and when the worker ends. A job's
        emit wakes the server's event loop, which then wants the GIL; woken while this thread still
        has Python work to do before the next decode, the loop would take the GIL at this thread's
        next foreign call and stall the decode by its per-token work (0.4-0.6 ms a token measured).
        Woken here, it runs while llama_decode has released the GIL.
        """
        outbox, self._outbox = self._outbox, []
        for job, event in outbox:
            job.emit(event)

    def _batch_add(self, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch = self._batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits

    def _sample(self, slot: _Slot, index: int) -> None:
        lib = self._lib
        job = slot.job
        assert job is not None and slot.text is not None
        token = int(lib.llama_sampler_sample(slot.sampler, self._ctx, index))
        if slot.generated == 0:
            slot.predict_started = time.monotonic()
        if lib.llama_vocab_is_eog(self._vocab, token):
            self._finish(slot, "stop")
            return
        slot.generated += 1
        self.stats.predicted_tokens += 1
        slot.last_token = token
        piece = self._piece(token, special=token in self._preserved)
        if job.logprobs is not None:
            self._outbox.append((job, ("token", self._logprob(index, token, piece, job.logprobs))))
        delta, stopped = slot.text.feed(slot.decoder.decode(piece))
        if delta:
            self._outbox.append((job, ("text", delta)))
        if stopped:
            self._finish(slot, "stop", flush=False)
        elif slot.generated >= job.max_tokens or slot.position >= self.ctx_per_slot:
            self._finish(slot, "length")

    def _logprob(self, index: int, token: int, piece: bytes, top: int) -> TokenLogprob:
        """Log-softmax of the raw logits at batch row `index`, for `token` and the `top` best."""
        pointer = self._lib.llama_get_logits_ith(self._ctx, index)
        logits = (ctypes.c_float * self.n_vocab).from_address(ctypes.addressof(pointer.contents))
        best = max(logits)
        # Shifted by the maximum so no exp overflows; the sum runs in C through map.
        log_total = best + math.log(sum(map(math.exp, map(best.__rsub__, logits))) or 1.0)

        def alternative(t: int, raw: bytes | None = None) -> Alternative:
            raw = self._piece(t) if raw is None else raw
            return Alternative(raw.decode("utf-8", errors="replace"), raw, logits[t] - log_total)

        rivals: list[Alternative] = []
        if top > 0:
            # Only tokens near the best can be among the top few: scan once with a margin,
            # widen if too few pass.
            margin = 8.0
            while True:
                near = [t for t, v in enumerate(logits) if v >= best - margin]
                if len(near) >= top or margin > 1e30:
                    break
                margin *= 4
            near.sort(key=lambda t: logits[t], reverse=True)
            rivals = [alternative(t) for t in near[:top]]
        return TokenLogprob(alternative(token, piece), rivals)

    # -- embeddings --------------------------------------------------------------------------

    def _choose_pooling(self, pooling: str | None) -> int:
        if pooling:
            if pooling not in POOLING:
                raise EngineError(f"unknown pooling '{pooling}'; choose one of {', '.join(POOLING)}")
            return POOLING[pooling]
        own = self.metadata.get(f"{self.architecture}.pooling_type")
        if own is not None and own.isdigit() and int(own) in POOLING.values():
            return int(own)
        return POOLING["mean"]  # a generative model has none of its own; mean is llama-server's advice

    @property
    def pooling_name(self) -> str | None:
        return next((k for k, v in POOLING.items() if v == self.pooling), None)

    def _embedding_context(self) -> Any:
        if self._embed_ctx is None:
            lib = self._lib
            cparams = lib.llama_context_default_params()
            # A pooled embedding needs the whole input in one micro-batch.
            cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = self.batch_size
            cparams.n_seq_max = 1
            cparams.embeddings = True
            cparams.pooling_type = self.pooling
            cparams.n_threads = cparams.n_threads_batch = self.threads
            cparams.no_perf = True
            ctx = lib.llama_init_from_model(self._model, cparams)
            if not ctx:
                raise EngineError(f"llama.cpp cannot create an embeddings context for {self.model_path}")
            self._embed_ctx = ctx
        return self._embed_ctx

    def embed(self, tokens: list[int]) -> list[float]:
        """The pooled, L2-normalised embedding of one input. Runs on the caller's thread, one
        input at a time, in a context of its own next to the generation worker's."""
        if not self.embeddings or self.pooling is None:
            raise EngineError("embeddings are off (start the server with --embeddings)")
        if not tokens or len(tokens) > self.batch_size:
            raise ValueError(
                f"an input must be 1 to {self.batch_size} tokens (--batch-size), not {len(tokens)}"
            )
        lib = self._lib
        with self._embed_lock:
            ctx = self._embedding_context()
            batch = lib.llama_batch_init(len(tokens), 0, 1)
            try:
                for i, token in enumerate(tokens):
                    batch.token[i] = token
                    batch.pos[i] = i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = True
                batch.n_tokens = len(tokens)
                memory = lib.llama_get_memory(ctx)
                lib.llama_memory_clear(memory, True)
                run = lib.llama_encode if lib.llama_model_has_encoder(self._model) else lib.llama_decode
                rc = run(ctx, batch)
                if rc != 0:
                    raise EngineError(f"llama.cpp could not embed the input (code {rc})")
                pointer = lib.llama_get_embeddings_seq(ctx, 0)
                if not pointer:
                    raise EngineError("llama.cpp returned no pooled embedding")
                vector = list((ctypes.c_float * self.n_embd).from_address(ctypes.addressof(pointer.contents)))
            finally:
                lib.llama_batch_free(batch)
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]

    def _piece(self, token: int, *, special: bool = False) -> bytes:
        buf = self._piece_buf
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, big, len(big), 0, special)
            return big.raw[:n]
        return buf.raw[:n]

    def _finish(self, slot: _Slot, reason: str, *, flush: bool = True) -> None:
        job = slot.job
        assert job is not None and slot.text is not None
        if flush:
            tail = slot.text.flush(slot.decoder.decode(b"", final=True))
            if tail and reason != "cancelled":
                self._outbox.append((job, ("text", tail)))
        self._outbox.append((job, ("done", Finished(reason, len(job.prompt), slot.generated, slot.reused))))
        self.stats.requests_finished += 1
        self._release(slot)

    def _fail(self, slot: _Slot, message: str) -> None:
        if slot.job is not None:
            self._outbox.append((slot.job, ("error", message)))
        self._release(slot)

    def _release(self, slot: _Slot) -> None:
        # The slot's KV cache stays: the next request placed here keeps the prefix it shares.
        if slot.sampler is not None:
            self._lib.llama_sampler_free(slot.sampler)
        slot.job = None
        slot.sampler = None
        slot.pending_prompt = []

    def close(self) -> None:
        self.stop()
        lib = self._lib
        lib.llama_batch_free(self._batch)
        for parsed in self._grammars.values():
            lib.llama_sampler_free(parsed)
        self._grammars.clear()
        if self._embed_ctx is not None:
            lib.llama_free(self._embed_ctx)
        lib.llama_free(self._ctx)
        lib.llama_model_free(self._model)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class _StopScanner:
    """Holds back text that might be the start of a stop string; cuts at the first stop string."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit now, whether a stop string was reached)."""
        if not self.stops:
            return text, False
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending = self.pending[:cut], ""
            return out, True
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out) :]
        return out, False

    def flush(self, text: str) -> str:
        out, stopped = self.feed(text)
        if stopped:
            return out
        out += self.pending
        self.pending = ""
        return out
