"""Jinja chat templates that render the original DeepStack / LLaVA prompt strings.

``VICUNA_V1_TEMPLATE`` (``conv_mode vicuna_v1``, the released Vicuna checkpoints)::

    {system} USER: <image>\\n{question} ASSISTANT: {answer}</s>USER: {question2} ASSISTANT:

The system prompt is followed by one space; a user turn is ``"USER: " + text + " "``; a finished assistant
turn is ``"ASSISTANT: " + text + "</s>"`` (the original's second separator, so the next ``USER:`` follows the
``</s>`` directly); the generation prompt is ``"ASSISTANT:"`` with no trailing space.

``PHI3_INSTRUCT_TEMPLATE`` (``conv_mode phi3_instruct``)::

    <|system|>\\nYou are a helpful AI assistant.<|end|>\\n<|user|>\\n<image>\\n{question}<|end|>\\n<|assistant|>\\n

Every turn is ``"\\n<|user|>\\n"`` or ``"\\n<|assistant|>\\n"`` + text + ``"<|end|>"``; the generation prompt is
``"\\n<|assistant|>\\n"``.

Both templates accept plain-string contents and Hugging Face content lists
(``[{"type": "image"}, {"type": "text", "text": ...}]``). Each image item of a message renders as
``<image>\\n`` and each video item (``{"type": "video", "path" | "url" | "video": ...}``) as ``<video>\\n``, in
their order, before the message's text (the original puts the image first: ``"<image>\\n" + question``; the
processor turns each video into one grid image, docs/video.md);
several text items are joined with ``"\\n"``. A leading ``system`` message replaces the default system prompt.
Neither template writes BOS: the tokenizer adds it, as in the original.
"""

VICUNA_V1_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
PHI3_SYSTEM_PROMPT = "You are a helpful AI assistant."

# Shared macro: a message's content as the original prompt text (images and videos first, as "<image>\n" /
# "<video>\n").
_RENDER_CONTENT = (
    "{%- macro render_content(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}"
    "{%- for item in content if item['type'] in ('image', 'video') -%}{{ '<' + item['type'] + '>\\n' }}{%- endfor -%}"
    "{%- for item in content if item['type'] == 'text' -%}"
    "{{ item['text'] }}{%- if not loop.last -%}{{ '\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
)

_SYSTEM_SELECTION = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_prompt = render_content(messages[0]['content']) -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_prompt = default_system -%}"
    "{%- set turns = messages -%}"
    "{%- endif -%}"
)

VICUNA_V1_TEMPLATE = (
    _RENDER_CONTENT
    + '{%- set default_system = "'
    + VICUNA_V1_SYSTEM_PROMPT
    + '" -%}'
    + _SYSTEM_SELECTION
    + "{{ system_prompt }}{{ ' ' }}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ 'USER: ' }}{{ render_content(message['content']) }}{{ ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'ASSISTANT: ' }}{% generation %}{{ render_content(message['content']) }}{{ '</s>' }}{% endgeneration %}"
    "{%- else -%}"
    "{{ raise_exception('vicuna_v1 supports user and assistant turns after an optional system message, got role '"
    " + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

PHI3_INSTRUCT_TEMPLATE = (
    _RENDER_CONTENT
    + '{%- set default_system = "'
    + PHI3_SYSTEM_PROMPT
    + '" -%}'
    + _SYSTEM_SELECTION
    + "{{ '<|system|>\\n' }}{{ system_prompt }}{{ '<|end|>' }}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ '\\n<|user|>\\n' }}{{ render_content(message['content']) }}{{ '<|end|>' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '\\n<|assistant|>\\n' }}{% generation %}{{ render_content(message['content']) }}{{ '<|end|>' }}"
    "{% endgeneration %}"
    "{%- else -%}"
    "{{ raise_exception('phi3_instruct supports user and assistant turns after an optional system message, got role '"
    " + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '\\n<|assistant|>\\n' }}{%- endif -%}"
)

CHAT_TEMPLATES = {"vicuna_v1": VICUNA_V1_TEMPLATE, "phi3_instruct": PHI3_INSTRUCT_TEMPLATE}

__all__ = [
    "CHAT_TEMPLATES",
    "PHI3_INSTRUCT_TEMPLATE",
    "PHI3_SYSTEM_PROMPT",
    "VICUNA_V1_SYSTEM_PROMPT",
    "VICUNA_V1_TEMPLATE",
]
