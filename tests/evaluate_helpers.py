"""Helpers for the evaluation tests: LoRA adapters for the tiny Llama, and a fake OpenAI-compatible server that
answers chat completions as a generator (canned answers) and as a judge (a deterministic preference, returned as
``top_logprobs`` the way OpenAI returns them)."""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

JUDGE_MODEL = "fake-judge"
OUTPUT_M = re.compile(r'"model_identifier": "m",\s*"output": """(.*?)"""', re.DOTALL)
OUTPUT_BIG_M = re.compile(r'"model_identifier": "M",\s*"output": """(.*?)"""', re.DOTALL)


def make_lora_adapters(base: Path, out: Path, seeds: tuple[int, ...] = (1, 2), scale: float = 0.5) -> list[Path]:
    """Rank-8 LoRA adapters on ``base`` with random A and B (PEFT zero-initialises B, which would change nothing),
    so each adapter visibly changes the tiny model's outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    folders = []
    for seed in seeds:
        model = get_peft_model(
            LlamaForCausalLM.from_pretrained(base),
            LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "up_proj"], lora_dropout=0.0),
        )
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * scale)
        folder = out / f"adapter-{seed}"
        model.save_pretrained(folder)
        folders.append(folder)
    return folders


def judge_probability(first: str, second: str) -> float:
    """The fake judge's probability that the first of two outputs is better: longer is better, smoothly."""
    return 1.0 / (1.0 + math.exp(-(len(first) - len(second)) / 20.0))


class FakeOpenAI:
    """An OpenAI-compatible ``/v1/chat/completions`` server on a local port, in a thread.

    Requests for :data:`JUDGE_MODEL` are judged with :func:`judge_probability` (reply ``m``/``M`` with both
    identifiers' log-probabilities in ``top_logprobs``); any other model answers the last user message with
    ``answer(text)``. Every request body and its ``Authorization`` header are recorded.
    """

    def __init__(self, answer: Callable[[str], str] = lambda text: "I do not know.") -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                fake.auth.append(self.headers.get("Authorization", ""))
                reply = fake.reply(body)
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The base URL (``http://127.0.0.1:PORT/v1``)."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def judged(self) -> list[dict[str, Any]]:
        """The judge requests received."""
        return [r for r in self.requests if r["model"] == JUDGE_MODEL]

    def generated(self) -> list[dict[str, Any]]:
        """The generation requests received."""
        return [r for r in self.requests if r["model"] != JUDGE_MODEL]

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        """The response to one chat-completions request."""
        last = body["messages"][-1]["content"]
        if body["model"] == JUDGE_MODEL:
            first, second = OUTPUT_M.search(last).group(1), OUTPUT_BIG_M.search(last).group(1)
            p = judge_probability(first, second)
            top = [
                {"token": "m", "logprob": math.log(p), "bytes": [109]},
                {"token": "M", "logprob": math.log1p(-p), "bytes": [77]},
                {"token": "The", "logprob": -30.0, "bytes": [84, 104, 101]},
            ]
            best = top[0] if p >= 0.5 else top[1]
            choices = [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": best["token"]},
                    "finish_reason": "length",
                    "logprobs": {"content": [{**best, "top_logprobs": top}]},
                }
            ]
        else:
            text = self.answer(last)
            choices = [
                {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                for i in range(body.get("n") or 1)
            ]
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": choices,
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        }

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
