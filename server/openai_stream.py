"""Streaming for `POST /v1/chat/completions`: incremental detokenisation and the server-sent events of
one completion, fed by the engine's per-token queue while the batch decodes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from server.errors import APIError
from server.openai_errors import openai_error

log = logging.getLogger("vital.server")


def usage(prompt: int, completion: int) -> dict[str, int]:
    """OpenAI's `usage` object."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class DeltaDecoder:
    """Incremental detokenisation: feed token ids, get the new text, never half a multi-byte character."""

    def __init__(self, tokenizer):
        self.tokenizer, self.tokens, self.emitted = tokenizer, [], ""

    def push(self, token: int) -> str:
        """The text this token completes ("" while a character or a word's spacing is incomplete)."""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True).strip()
        if text.endswith("\ufffd") or not text.startswith(self.emitted) or len(text) == len(self.emitted):
            return ""  # an incomplete multi-byte character, or nothing new yet
        piece, self.emitted = text[len(self.emitted) :], text
        return piece

    def finish(self, final: str) -> str:
        """What is left of `final` (the whole answer's text) after the pieces sent so far."""
        if not final.startswith(self.emitted):  # cannot happen with a prefix-stable tokenizer
            log.warning("streamed text %r is not a prefix of the answer %r", self.emitted, final)
            return ""
        piece, self.emitted = final[len(self.emitted) :], final
        return piece


def token_deltas(tokenizer, tokens: list[int], final: str) -> list[str]:
    """Text pieces, one per token where it completes a character, that concatenate to `final`."""
    dec = DeltaDecoder(tokenizer)
    pieces = [dec.push(t) for t in tokens]
    return [p for p in (*pieces, dec.finish(final)) if p]


class Stream:
    """Server-sent events of one streamed completion: a role chunk, one chunk per text delta as the engine
    decodes, the finish chunk, usage (when asked), [DONE]."""

    def __init__(
        self, tokenizer, cid: str, created: int, model: str, max_new: int, prompt_tokens: int | None
    ):
        self.tokenizer, self.cid, self.created, self.model = tokenizer, cid, created, model
        self.max_new, self.prompt_tokens = max_new, prompt_tokens

    def chunk(self, delta: dict | None, finish_reason: str | None = None, usage: dict | None = None) -> str:
        """One `chat.completion.chunk` event."""
        body = {
            "id": self.cid,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
            if delta is not None
            else [],
        }
        if self.prompt_tokens is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    async def events(self, first: int | None, tokens: asyncio.Queue, job: asyncio.Task) -> AsyncIterator[str]:
        """The events, as tokens arrive on `tokens` (None: the job ended); a client gone cancels the job."""
        dec = DeltaDecoder(self.tokenizer)
        try:
            yield self.chunk({"role": "assistant", "content": ""})
            tok = first
            while tok is not None:
                piece = dec.push(tok)
                if piece:
                    yield self.chunk({"content": piece})
                tok = await tokens.get()
            try:
                res = job.result()
            except APIError as exc:  # e.g. the timeout, after the response started: an error event (OpenAI's)
                yield f"data: {json.dumps(openai_error(exc.status, exc.code, exc.message))}\n\n"
                return
            except Exception:
                log.exception("chat completion failed while streaming")
                err = openai_error(500, "internal_error", "internal server error; see the server log")
                yield f"data: {json.dumps(err)}\n\n"
                return
            piece = dec.finish(res.text)
            if piece:
                yield self.chunk({"content": piece})
            yield self.chunk({}, "length" if len(res.tokens) >= self.max_new else "stop")
            if self.prompt_tokens is not None:
                yield self.chunk(None, usage=usage(self.prompt_tokens, len(res.tokens)))
            yield "data: [DONE]\n\n"
        finally:
            if not job.done():  # the client went away mid-stream: drop the job (decoding stops if alone)
                job.cancel()
