"""Tiny GGUF models of other architectures than Gemma, written with the `gguf` package.

Each kind is a real llama.cpp model: a `llama` or `qwen2` architecture with seeded random weights
(64-wide, 2 layers, 4 query heads over 2 KV heads, F32, well under a megabyte), a GPT-2 byte-level
BPE vocabulary (all 256 byte tokens, so any UTF-8 text tokenizes, plus merges learnt from a short
built-in text and the kind's special tokens, marked as control tokens so each special string is
one token) and the chat template of the model family it stands for, or none at all. The weights
are noise, so generated text is noise too (printable ASCII, see _tensors); what the tests rely on
is the architecture, the vocabulary and the metadata: the chat template a server must pick and
the prompt it must render.

`expected_prompt` writes, with plain string formatting and independently of the Jinja templates,
the prompt each kind's template renders, so tests can compare a server's rendering against it.
"""

# ruff: noqa: E501  (the tool kinds' chat templates are data, one Jinja statement a line)
from __future__ import annotations

import hashlib
import itertools
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt

# The shape every kind shares: tiny, but with grouped-query attention like the real models.
N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
CONTEXT_LENGTH = 2048
HEAD_DIM = N_EMBD // N_HEAD
N_MERGES = 240

# What llama.cpp (llama-server, and slimllm's server) uses when a model carries no chat template.
FALLBACK_TEMPLATE = "chatml"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Qwen2-Instruct's template: ChatML with a default system message when the chat has none.
QWEN2_DEFAULT_SYSTEM = "You are a helpful assistant."
QWEN2_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + QWEN2_DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Meta-Llama-3-Instruct's template: the BOS comes from the `bos_token` variable (the template text
# does not contain it) and each message's content is trimmed.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
LLAMA3_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)


@dataclass(frozen=True)
class Kind:
    """One generated model: what it is and what a server should make of it."""

    kind: str
    general_name: str
    architecture: str
    # tokenizer.ggml.pre: the pre-tokenizer llama.cpp splits text with before BPE.
    pre_tokenizer: str
    special_tokens: tuple[str, ...]
    bos: str
    eos: str
    # tokenizer.ggml.add_bos_token: whether tokenizing a prompt puts the BOS token first.
    add_bos: bool
    chat_template: str | None
    rope_freq_base: float
    rms_eps: float

    @property
    def file_name(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.general_name.lower()).strip("-") + ".gguf"


KINDS: dict[str, Kind] = {
    kind.kind: kind
    for kind in (
        Kind(
            kind="chatml",
            general_name="Tiny ChatML Llama",
            architecture="llama",
            pre_tokenizer="smollm",
            special_tokens=CHATML_SPECIALS,
            bos="<|endoftext|>",
            eos="<|im_end|>",
            add_bos=False,
            chat_template=CHATML_TEMPLATE,
            rope_freq_base=10000.0,
            rms_eps=1e-5,
        ),
        Kind(
            kind="llama3",
            general_name="Tiny Llama 3",
            architecture="llama",
            pre_tokenizer="llama-bpe",
            special_tokens=LLAMA3_SPECIALS,
            bos="<|begin_of_text|>",
            eos="<|eot_id|>",
            add_bos=True,
            chat_template=LLAMA3_TEMPLATE,
            rope_freq_base=500000.0,
            rms_eps=1e-5,
        ),
        Kind(
            # A base model: no chat template, so servers fall back to ChatML, whose special
            # strings its vocabulary knows; unlike the others, it asks for a BOS on every prompt.
            kind="none",
            general_name="Tiny Untemplated Llama",
            architecture="llama",
            pre_tokenizer="gpt-2",
            special_tokens=("<s>", "</s>", "<|im_start|>", "<|im_end|>"),
            bos="<s>",
            eos="</s>",
            add_bos=True,
            chat_template=None,
            rope_freq_base=10000.0,
            rms_eps=1e-5,
        ),
        Kind(
            kind="qwen2",
            general_name="Tiny Qwen2",
            architecture="qwen2",
            pre_tokenizer="qwen2",
            special_tokens=CHATML_SPECIALS,
            bos="<|endoftext|>",
            eos="<|im_end|>",
            add_bos=False,
            chat_template=QWEN2_TEMPLATE,
            rope_freq_base=1000000.0,
            rms_eps=1e-6,
        ),
    )
}

# -- models that call tools ------------------------------------------------------------------
# Templates in the way of their families' own (shortened, same structure and markers): each reads
# the `tools` variable and writes earlier calls and tool results back, and the model answers with
# calls in the family's format (tool_calls "format" below, as the server must detect it).

QWEN25_TEMPLATE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are Qwen.' }}{%- endif %}
{{- '\\n\\n# Tools\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}
{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}\\n\
</tool_call><|im_end|>\\n' }}
{%- elif messages[0]['role'] == 'system' %}
{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or \
(message.role == 'assistant' and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant' }}
{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\\n<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' + tool_call.arguments | tojson + '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

LLAMA31_TEMPLATE = """\
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
{%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}
{%- else %}{%- set system_message = '' %}{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}
{%- if tools is not none %}{{- 'Environment: ipython\\n' }}{%- endif %}
{{- system_message + '<|eot_id|>' }}
{%- if tools is not none %}
{%- set first_user_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}
{{- '<|start_header_id|>user<|end_header_id|>\\n\\nGiven the following functions, respond with a JSON for a \
function call. Respond in the format {"name": function name, "parameters": dictionary of argument name and its \
value}.\\n\\n' }}
{%- for t in tools %}{{- t | tojson(indent=4) + '\\n\\n' }}{%- endfor %}
{{- first_user_message + '<|eot_id|>' }}
{%- endif %}
{%- for message in messages %}
{%- if 'tool_calls' in message %}
{%- set tool_call = message.tool_calls[0].function %}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n{"name": "' + tool_call.name + '", "parameters": ' + \
tool_call.arguments | tojson + '}<|eot_id|>' }}
{%- elif message.role == 'tool' or message.role == 'ipython' %}
{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + message.content + '<|eot_id|>' }}
{%- else %}
{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content | trim + '<|eot_id|>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}
"""

MISTRAL_TEMPLATE = """\
{%- if messages[0]['role'] == 'system' %}
{%- set system_message = messages[0]['content'] %}{%- set loop_messages = messages[1:] %}
{%- else %}{%- set loop_messages = messages %}{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
{%- if message.role == 'user' %}
{%- if tools is not none and loop.last %}
{{- '[AVAILABLE_TOOLS][' }}{%- for tool in tools %}{{- tool | tojson }}{%- if not loop.last %}{{- ', ' }}{%- endif %}\
{%- endfor %}{{- '][/AVAILABLE_TOOLS]' }}
{%- endif %}
{%- if loop.last and system_message is defined %}{{- '[INST]' + system_message + '\\n\\n' + message.content + '[/INST]' }}
{%- else %}{{- '[INST]' + message.content + '[/INST]' }}{%- endif %}
{%- elif message.tool_calls is defined and message.tool_calls is not none %}
{{- '[TOOL_CALLS][' }}
{%- for tool_call in message.tool_calls %}
{{- {'name': tool_call.function.name, 'arguments': tool_call.function.arguments, 'id': tool_call.id} | tojson }}
{%- if not loop.last %}{{- ', ' }}{%- endif %}
{%- endfor %}
{{- ']' + eos_token }}
{%- elif message.role == 'assistant' %}{{- message.content + eos_token }}
{%- elif message.role == 'tool' %}
{{- '[TOOL_RESULTS]{"content": ' + message.content | tojson + ', "call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
{%- endif %}
{%- endfor %}
"""

TOOL_KINDS: dict[str, Kind] = {
    kind.kind: kind
    for kind in (
        Kind(
            kind="qwen25",
            general_name="Tiny Qwen2.5 Tools",
            architecture="qwen2",
            pre_tokenizer="qwen2",
            special_tokens=(*CHATML_SPECIALS, "<tool_call>", "</tool_call>"),
            bos="<|endoftext|>",
            eos="<|im_end|>",
            add_bos=False,
            chat_template=QWEN25_TEMPLATE,
            rope_freq_base=1000000.0,
            rms_eps=1e-6,
        ),
        Kind(
            kind="llama31",
            general_name="Tiny Llama 3.1 Tools",
            architecture="llama",
            pre_tokenizer="llama-bpe",
            special_tokens=(*LLAMA3_SPECIALS, "<|python_tag|>"),
            bos="<|begin_of_text|>",
            eos="<|eot_id|>",
            add_bos=True,
            chat_template=LLAMA31_TEMPLATE,
            rope_freq_base=500000.0,
            rms_eps=1e-5,
        ),
        Kind(
            kind="mistral",
            general_name="Tiny Mistral Tools",
            architecture="llama",
            pre_tokenizer="gpt-2",
            special_tokens=(
                "<s>",
                "</s>",
                "[INST]",
                "[/INST]",
                "[TOOL_CALLS]",
                "[AVAILABLE_TOOLS]",
                "[/AVAILABLE_TOOLS]",
                "[TOOL_RESULTS]",
                "[/TOOL_RESULTS]",
            ),
            bos="<s>",
            eos="</s>",
            add_bos=False,
            chat_template=MISTRAL_TEMPLATE,
            rope_freq_base=1000000.0,
            rms_eps=1e-5,
        ),
    )
}
# The call format the server must detect in each tool kind's template (GET /props).
TOOL_FORMATS = {"qwen25": "hermes", "llama31": "llama3", "mistral": "mistral"}
_ALL_KINDS = {**KINDS, **TOOL_KINDS}

CHAT_TEMPLATES: dict[str, str] = {
    name: kind.chat_template for name, kind in KINDS.items() if kind.chat_template is not None
}


def expected_prompt(kind: str, messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt `kind`'s chat template renders for `messages`, with the generation prompt.

    For "none", that is llama.cpp's built-in chatml template, which servers fall back to.
    The BOS a tokenizer adds (Kind.add_bos) is not part of the text unless the template writes it.
    """
    if kind in ("chatml", "none", "qwen2"):
        turns = [(m["role"], m["content"]) for m in messages]
        if kind == "qwen2" and turns and turns[0][0] != "system":
            turns.insert(0, ("system", QWEN2_DEFAULT_SYSTEM))
        body = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)
        return body + "<|im_start|>assistant\n"
    if kind == "llama3":
        body = "".join(
            f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
            for m in messages
        )
        return "<|begin_of_text|>" + body + "<|start_header_id|>assistant<|end_header_id|>\n\n"
    raise ValueError(f"unknown kind '{kind}'; known: {', '.join(KINDS)}")


# -- vocabulary ------------------------------------------------------------------------------

# The merges are learnt from this text, so common English words become few tokens.
_CORPUS = """\
Hello! How are you today? I am fine, thank you. What is the weather like in the city?
The quick brown fox jumps over the lazy dog. Name three colours: red, green and blue.
You are a helpful assistant. The user asks a question and the assistant answers it.
Write a short story about a robot who learns to paint. Count from one to ten, please.
What is the capital of France? Paris is the capital and the largest city of France.
This is a test of the inference server, with a tiny model that says nothing useful.
"""

# GPT-2's pre-tokenizer, without the Unicode classes `re` lacks: words with their leading space.
_WORDS = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+")


@cache
def _byte_symbols() -> tuple[str, ...]:
    """GPT-2's printable stand-in for each byte (space is "Ġ", newline "Ċ"), indexed by byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    symbol = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbol:
            symbol[b] = chr(256 + extra)
            extra += 1
    return tuple(symbol[b] for b in range(256))


def _to_symbols(text: str) -> str:
    table = _byte_symbols()
    return "".join(table[b] for b in text.encode("utf-8"))


@cache
def _bpe() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tokens, merges): the 256 byte tokens, then one token per merge learnt from _CORPUS.

    Plain BPE training: merge the most frequent adjacent pair (ties broken by the pair's text,
    so the result is the same everywhere) until N_MERGES merges are learnt.
    """
    words = Counter(tuple(_to_symbols(w)) for w in _WORDS.findall(_CORPUS))
    tokens = list(_byte_symbols())
    merges: list[str] = []
    while len(merges) < N_MERGES:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merged = best[0] + best[1]
        merges.append(f"{best[0]} {best[1]}")
        tokens.append(merged)
        words = Counter({_merge(word, best, merged): count for word, count in words.items()})
    return tuple(tokens), tuple(merges)


def _merge(word: tuple[str, ...], pair: tuple[str, str], merged: str) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(merged)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def vocabulary(kind: str) -> list[str]:
    """The kind's token texts by id: bytes, merges, then its special tokens."""
    tokens, _ = _bpe()
    return [*tokens, *_ALL_KINDS[kind].special_tokens]


# -- weights ---------------------------------------------------------------------------------


def _weights(seed: str, shape: tuple[int, ...], scale: float = 0.035) -> npt.NDArray[np.float32]:
    """Uniform noise in [-scale, scale) from SHAKE-256 of `seed`: the same bytes on every machine."""
    count = int(np.prod(shape))
    raw = np.frombuffer(hashlib.shake_256(seed.encode()).digest(4 * count), dtype="<u4")
    unit = raw.astype(np.float64) / 2.0**32
    return ((unit * 2.0 - 1.0) * scale).astype(np.float32).reshape(shape)


def _printable(token: str) -> bool:
    """Whether a BPE token's bytes are all printable ASCII (space included, newline not)."""
    printable = _byte_symbols()[0x20:0x7F]
    return all(symbol in printable for symbol in token)


def _tensors(spec: Kind, tokens: Sequence[str]) -> list[tuple[str, npt.NDArray[np.float32]]]:
    """The model's tensors, numpy shapes as (rows, columns): gguf stores them reversed, as ggml wants.

    The output projection is not tied to the embeddings (with layers this weak, a tied model
    only repeats its last token). Its rows are large on printable-ASCII tokens and zero on the
    rest (bytes above 0x7E, control characters, special tokens): replies are one line of
    printable gibberish, never empty, that in practice never ends the turn on its own, so a
    reply runs to max_tokens (finish_reason "length").
    """
    n_vocab = len(tokens)
    ones = np.ones(N_EMBD, dtype=np.float32)
    kv = N_HEAD_KV * HEAD_DIM
    seed = spec.kind
    keep = np.array([_printable(t) and t not in spec.special_tokens for t in tokens], dtype=np.float32)
    output = _weights(f"{seed}/output", (n_vocab, N_EMBD), 1.0) * keep[:, None]
    out: list[tuple[str, npt.NDArray[np.float32]]] = [
        ("token_embd.weight", _weights(f"{seed}/embd", (n_vocab, N_EMBD), 0.5)),
        ("output_norm.weight", ones),
        ("output.weight", output.astype(np.float32)),
    ]
    for i in range(N_LAYER):
        blk = f"blk.{i}"
        out += [
            (f"{blk}.attn_norm.weight", ones),
            (f"{blk}.attn_q.weight", _weights(f"{seed}/{blk}/q", (N_HEAD * HEAD_DIM, N_EMBD))),
            (f"{blk}.attn_k.weight", _weights(f"{seed}/{blk}/k", (kv, N_EMBD))),
            (f"{blk}.attn_v.weight", _weights(f"{seed}/{blk}/v", (kv, N_EMBD))),
            (f"{blk}.attn_output.weight", _weights(f"{seed}/{blk}/o", (N_EMBD, N_HEAD * HEAD_DIM))),
            (f"{blk}.ffn_norm.weight", ones),
            (f"{blk}.ffn_gate.weight", _weights(f"{seed}/{blk}/gate", (N_FF, N_EMBD))),
            (f"{blk}.ffn_up.weight", _weights(f"{seed}/{blk}/up", (N_FF, N_EMBD))),
            (f"{blk}.ffn_down.weight", _weights(f"{seed}/{blk}/down", (N_EMBD, N_FF))),
        ]
        if spec.architecture == "qwen2":  # Qwen2 has biases on the Q, K and V projections
            out += [
                (f"{blk}.attn_q.bias", _weights(f"{seed}/{blk}/qb", (N_HEAD * HEAD_DIM,))),
                (f"{blk}.attn_k.bias", _weights(f"{seed}/{blk}/kb", (kv,))),
                (f"{blk}.attn_v.bias", _weights(f"{seed}/{blk}/vb", (kv,))),
            ]
    return out


# -- the file --------------------------------------------------------------------------------


def write_model(path: Path, kind: str) -> Path:
    """Write `kind`'s model to `path` and return `path`; the same bytes on every call.

    The file is written next to `path` and renamed over it, so readers never see half a file;
    an existing file with the same bytes is left as it is.
    """
    spec = _ALL_KINDS[kind]
    tokens = vocabulary(kind)
    _, merges = _bpe()
    token_types = [gguf.TokenType.NORMAL] * (len(tokens) - len(spec.special_tokens)) + [
        gguf.TokenType.CONTROL
    ] * len(spec.special_tokens)
    token_id = {text: i for i, text in enumerate(tokens)}

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        writer = gguf.GGUFWriter(tmp, spec.architecture)
        writer.add_name(spec.general_name)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_vocab_size(len(tokens))
        writer.add_context_length(CONTEXT_LENGTH)
        writer.add_embedding_length(N_EMBD)
        writer.add_block_count(N_LAYER)
        writer.add_feed_forward_length(N_FF)
        writer.add_head_count(N_HEAD)
        writer.add_head_count_kv(N_HEAD_KV)
        writer.add_rope_dimension_count(HEAD_DIM)
        writer.add_rope_freq_base(spec.rope_freq_base)
        writer.add_layer_norm_rms_eps(spec.rms_eps)

        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(spec.pre_tokenizer)
        writer.add_token_list(tokens)
        writer.add_token_types(token_types)
        writer.add_token_merges(list(merges))
        writer.add_bos_token_id(token_id[spec.bos])
        writer.add_eos_token_id(token_id[spec.eos])
        writer.add_pad_token_id(token_id[spec.special_tokens[0]])
        writer.add_add_bos_token(spec.add_bos)
        if spec.chat_template is not None:
            writer.add_chat_template(spec.chat_template)

        for name, data in _tensors(spec, tokens):
            writer.add_tensor(name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

        if path.exists() and path.read_bytes() == tmp.read_bytes():
            tmp.unlink()
        else:
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_models(directory: Path, kinds: Mapping[str, Kind] = KINDS) -> dict[str, Path]:
    """Every kind's model (of `kinds`: KINDS or TOOL_KINDS) in `directory`, by kind."""
    return {kind: write_model(directory / spec.file_name, kind) for kind, spec in kinds.items()}
