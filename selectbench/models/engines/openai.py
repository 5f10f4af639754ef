"""The OpenAI-compatible engine: chat completions from an endpoint (OpenAI, a ``vllm serve`` server, Together, ...).
Generation only: an endpoint serves its own adapters and gives no token losses."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from selectbench.errors import SelectbenchError
from selectbench.models.engines.base import Conversation, Decoding, identity


def api_key_from_env(name: str | None) -> str:
    """The API key held by environment variable ``name`` (``none``: a server that takes no key)."""
    if name is None or str(name).lower() == "none":
        return "no-key"
    value = os.environ.get(name)
    if not value:
        raise SelectbenchError(
            f"the API key variable {name} is not set; export it (the key is read from the environment and never "
            "written anywhere), name another variable with api_key_env=NAME, or api_key_env=none for a server "
            "that takes no key"
        )
    return value


@dataclass
class OpenAIEngine:
    """An OpenAI-compatible chat-completions endpoint. The server applies the chat template; the model name is used
    as given.

    Args:
        model: the model name the endpoint serves.
        base_url: the endpoint, e.g. ``http://localhost:8000/v1``; default OpenAI's.
        api_key_env: the environment variable that holds the API key (the key itself is never written anywhere);
            ``none`` for servers that take no key.
        concurrency: requests in flight at once.
        timeout_s: seconds per request.
        max_retries: retries per request (with the client's backoff).
        progress: show a progress bar.
    """

    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    timeout_s: float = 600.0
    max_retries: int = 5
    name: str = "openai"
    progress: bool = True

    @property
    def fingerprint(self) -> str:
        """The endpoint and model name (an API model's weights cannot be fingerprinted)."""
        return endpoint_fingerprint(self.base_url, self.model)

    def _client(self) -> Any:
        import openai

        return openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key_from_env(self.api_key_env),
            timeout=self.timeout_s,
            max_retries=self.max_retries,
        )

    def generate(
        self, conversations: Sequence[Conversation], decoding: Decoding, *, adapter: str | None = None
    ) -> list[list[str]]:
        """One list of ``decoding.n`` completions per conversation (see :class:`~.base.Generator`)."""
        if adapter is not None:
            raise SelectbenchError(
                "engine 'openai' cannot load an adapter; serve the adapter on the endpoint (e.g. vllm serve "
                "--lora-modules NAME=DIR) and pass its name as --model"
            )
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        client = self._client()

        def one(conversation: Conversation) -> list[str]:
            reply = client.chat.completions.create(
                model=self.model,
                messages=list(conversation),
                max_tokens=decoding.max_new_tokens,
                temperature=decoding.temperature,
                top_p=decoding.top_p,
                seed=decoding.seed,
                n=decoding.n,
            )
            return [choice.message.content or "" for choice in reply.choices]

        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(
                tqdm(
                    pool.map(one, conversations),
                    total=len(conversations),
                    desc="generating (openai)",
                    file=sys.stderr,
                    disable=not self.progress or len(conversations) < 8,
                )
            )

    def describe(self) -> dict[str, Any]:
        """Engine, endpoint and model for ``meta.json`` (the variable's name, never the key)."""
        return {
            **identity(self),
            "base_url": self.base_url,
            "api_key_env": self.api_key_env,
            "concurrency": self.concurrency,
        }

    def close(self) -> None:
        """Nothing to free."""


def endpoint_fingerprint(base_url: str | None, model: str) -> str:
    """What identifies an endpoint's model in caches: its URL (OpenAI's by default) and the model name."""
    return f"openai:{base_url or 'https://api.openai.com/v1'}:{model}"
