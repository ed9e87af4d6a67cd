"""Jinja chat templates that render the original DeepStack / LLaVA prompt strings.

``VICUNA_V1_TEMPLATE`` (``conv_mode vicuna_v1``, the released Vicuna checkpoints)::

    {system} USER: <image>\\n{question} ASSISTANT: {answer}</s>USER: {question2} ASSISTANT:

The system prompt is followed by one space; a user turn is ``"USER: " + text + " "``; a finished assistant
turn is ``"ASSISTANT: " + text + "</s>"`` (the original's second separator, so the next ``USER:`` follows the
``</s>`` directly); the generation prompt is ``"ASSISTANT:"`` with no trailing space.
The ``{% generation %}`` block (``return_assistant_tokens_mask``) is the space after ``ASSISTANT:``, the answer
and ``</s>``: the tokens the original supervises in training (the space is a token of its own when the answer's
first character does not merge with it).

``PHI3_INSTRUCT_TEMPLATE`` (``conv_mode phi3_instruct``)::

    <|system|>\\nYou are a helpful AI assistant.<|end|>\\n<|user|>\\n<image>\\n{question}<|end|>\\n<|assistant|>\\n

Every turn is ``"\\n<|user|>\\n"`` or ``"\\n<|assistant|>\\n"`` + text + ``"<|end|>"``; the generation prompt is
``"\\n<|assistant|>\\n"``. The ``{% generation %}`` block is the answer from its first non-whitespace character on
(``<|assistant|>`` strips the whitespace after it) and its ``<|end|>``.

Both templates accept plain-string contents and Hugging Face content lists
(``[{"type": "image"}, {"type": "text", "text": ...}]``). Each image item of a message renders as
``<image>\\n`` and each video item (``{"type": "video", "path" | "url" | "video": ...}``) as ``<video>\\n``, in
their order, before the message's text (the original puts the image first: ``"<image>\\n" + question``; the
processor turns each video into one grid image, docs/video.md);
several text items are joined with ``"\\n"``. A leading ``system`` message replaces the default system prompt.
Neither template writes BOS: the tokenizer adds it, as in the original.

``PLAIN_TEMPLATE`` (``conv_mode plain``, LLaVA-1.5's pretraining format, for training only)::

    <image>{caption}\\n

Each user turn contributes only its images (``<image>`` each, no newline; its text is dropped, as the original's
``preprocess_plain`` replaces the instruction by the image); each assistant turn is its text + ``"\\n"``. The
``{% generation %}`` block holds the images before the caption too: the original supervises every token after the
image, including the word-boundary token that starts the caption chunk, which the tokenizer attaches to the image
marker. Image tokens themselves are never supervised (the model and ``DeepStackDataCollator`` mask them).

``CHATML_TEMPLATE`` (Qwen2-style ChatML, for DeepStack models built on a Qwen2 decoder; the original has none)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n<image>\\n{question}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>\\n

The generation prompt is ``"<|im_start|>assistant\\n"``; the supervised part of a turn is the answer and its
``<|im_end|>``.
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
    "{{ 'ASSISTANT:' }}{% generation %}{{ ' ' }}{{ render_content(message['content']) }}{{ '</s>' }}{% endgeneration %}"
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
    "{%- set answer = render_content(message['content']) -%}"
    "{%- set leading = answer[: answer | length - answer.lstrip() | length] -%}"
    "{{ '\\n<|assistant|>\\n' }}{{ leading }}{% generation %}{{ answer.lstrip() }}{{ '<|end|>' }}{% endgeneration %}"
    "{%- else -%}"
    "{{ raise_exception('phi3_instruct supports user and assistant turns after an optional system message, got role '"
    " + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '\\n<|assistant|>\\n' }}{%- endif -%}"
)

PLAIN_TEMPLATE = (
    _RENDER_CONTENT
    + "{%- set pending = namespace(images='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' and message['content'] is not string -%}"
    "{%- for item in message['content'] if item['type'] == 'image' -%}"
    "{%- set pending.images = pending.images + '<image>' -%}"
    "{%- endfor -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{% generation %}{{ pending.images }}{{ render_content(message['content']) }}{{ '\\n' }}{% endgeneration %}"
    "{%- set pending.images = '' -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{ pending.images }}"
)

CHATML_SYSTEM_PROMPT = "You are a helpful assistant."

CHATML_TEMPLATE = (
    _RENDER_CONTENT
    + '{%- set default_system = "'
    + CHATML_SYSTEM_PROMPT
    + '" -%}'
    + _SYSTEM_SELECTION
    + "{{ '<|im_start|>system\\n' }}{{ system_prompt }}{{ '<|im_end|>\\n' }}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ '<|im_start|>user\\n' }}{{ render_content(message['content']) }}{{ '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ render_content(message['content']) }}{{ '<|im_end|>' }}"
    "{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}"
    "{{ raise_exception('chatml supports user and assistant turns after an optional system message, got role '"
    " + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

CHAT_TEMPLATES = {
    "vicuna_v1": VICUNA_V1_TEMPLATE,
    "phi3_instruct": PHI3_INSTRUCT_TEMPLATE,
    "chatml": CHATML_TEMPLATE,
    "plain": PLAIN_TEMPLATE,
}

__all__ = [
    "CHATML_SYSTEM_PROMPT",
    "CHATML_TEMPLATE",
    "CHAT_TEMPLATES",
    "PHI3_INSTRUCT_TEMPLATE",
    "PHI3_SYSTEM_PROMPT",
    "PLAIN_TEMPLATE",
    "VICUNA_V1_SYSTEM_PROMPT",
    "VICUNA_V1_TEMPLATE",
]
