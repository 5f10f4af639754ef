"""One way to turn a record into a chat, shared by fine-tuning and evaluation so both format identically."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Used when a tokenizer has no chat template of its own (documented in the README; the CLI says when it is used).
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### User:\n{{ message['content'] }}\n\n"
    "{% else %}### Assistant:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


def user_turn(record: Mapping[str, Any]) -> str:
    """The user turn of a record: the instruction, then the input (if any) after a blank line."""
    instruction, context = record["instruction"], record.get("input") or ""
    return f"{instruction}\n\n{context}" if context.strip() else instruction


def record_messages(record: Mapping[str, Any], *, with_response: bool = True) -> list[dict[str, str]]:
    """The conversation for a record: its own ``messages`` when it has them, else one user turn and the response.

    With ``with_response=False`` the final assistant turn is left out (a generation prompt).
    """
    if record.get("messages"):
        messages = [dict(m) for m in record["messages"]]
        return messages if with_response else messages[:-1]
    messages = [{"role": "user", "content": user_turn(record)}]
    if with_response:
        messages.append({"role": "assistant", "content": record["response"]})
    return messages


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer brings its own chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give ``tokenizer`` the plain template if it has none; return True if the plain template was set."""
    if has_chat_template(tokenizer):
        return False
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return True


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The text that asks the model for the next assistant turn (chat template with a generation prompt)."""
    ensure_chat_template(tokenizer)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
