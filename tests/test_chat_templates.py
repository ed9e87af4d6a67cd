"""Chat templates render exactly the original prompt strings (llava/conversation.py vicuna_v1, phi3_instruct)."""

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from deepstack_hf.chat_templates import PHI3_INSTRUCT_TEMPLATE, VICUNA_V1_TEMPLATE

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
IMAGE_QUESTION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
TWO_TURNS = IMAGE_QUESTION + [
    {"role": "assistant", "content": [{"type": "text", "text": "A red car."}]},
    {"role": "user", "content": "Is it parked?"},
]


def render(template, messages, add_generation_prompt=False, **kwargs):
    prompts, _ = render_jinja_template(
        conversations=[messages], chat_template=template, add_generation_prompt=add_generation_prompt, **kwargs
    )
    return prompts[0]


VICUNA_CASES = [
    (IMAGE_QUESTION, True, SYSTEM + " USER: <image>\nWhat is shown? ASSISTANT:"),
    (IMAGE_QUESTION, False, SYSTEM + " USER: <image>\nWhat is shown? "),
    (TWO_TURNS, True, SYSTEM + " USER: <image>\nWhat is shown? ASSISTANT: A red car.</s>USER: Is it parked? ASSISTANT:"),
    (TWO_TURNS, False, SYSTEM + " USER: <image>\nWhat is shown? ASSISTANT: A red car.</s>USER: Is it parked? "),
    (TWO_TURNS[:2], False, SYSTEM + " USER: <image>\nWhat is shown? ASSISTANT: A red car.</s>"),
    ([{"role": "user", "content": "Hi"}], True, SYSTEM + " USER: Hi ASSISTANT:"),
]

PHI3_HEAD = "<|system|>\nYou are a helpful AI assistant.<|end|>"
PHI3_CASES = [
    (IMAGE_QUESTION, True, PHI3_HEAD + "\n<|user|>\n<image>\nWhat is shown?<|end|>\n<|assistant|>\n"),
    (IMAGE_QUESTION, False, PHI3_HEAD + "\n<|user|>\n<image>\nWhat is shown?<|end|>"),
    (
        TWO_TURNS,
        True,
        PHI3_HEAD
        + "\n<|user|>\n<image>\nWhat is shown?<|end|>\n<|assistant|>\nA red car.<|end|>\n<|user|>\nIs it parked?<|end|>"
        + "\n<|assistant|>\n",
    ),
    (
        TWO_TURNS,
        False,
        PHI3_HEAD
        + "\n<|user|>\n<image>\nWhat is shown?<|end|>\n<|assistant|>\nA red car.<|end|>\n<|user|>\nIs it parked?<|end|>",
    ),
]


@pytest.mark.parametrize("messages, generation, expected", VICUNA_CASES)
def test_vicuna_v1(messages, generation, expected):
    assert render(VICUNA_V1_TEMPLATE, messages, generation) == expected


@pytest.mark.parametrize("messages, generation, expected", PHI3_CASES)
def test_phi3_instruct(messages, generation, expected):
    assert render(PHI3_INSTRUCT_TEMPLATE, messages, generation) == expected


def test_spec_single_turn_strings():
    # the original's vicuna_v1 prompt, verbatim (docs/design.md, "Chat templates")
    assert render(VICUNA_V1_TEMPLATE, IMAGE_QUESTION, True) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is shown? ASSISTANT:"
    )
    assert render(PHI3_INSTRUCT_TEMPLATE, IMAGE_QUESTION, True) == (
        "<|system|>\nYou are a helpful AI assistant.<|end|>\n<|user|>\n<image>\nWhat is shown?<|end|>\n<|assistant|>\n"
    )


def test_image_after_text_and_two_images_render_first():
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Compare."}, {"type": "image"}, {"type": "image"}],
        }
    ]
    assert render(VICUNA_V1_TEMPLATE, messages, True) == SYSTEM + " USER: <image>\n<image>\nCompare. ASSISTANT:"


def test_system_message_overrides_default():
    messages = [{"role": "system", "content": "Be brief."}] + IMAGE_QUESTION
    assert render(VICUNA_V1_TEMPLATE, messages, True) == "Be brief. USER: <image>\nWhat is shown? ASSISTANT:"
    assert render(PHI3_INSTRUCT_TEMPLATE, messages, True).startswith("<|system|>\nBe brief.<|end|>\n<|user|>\n")


def test_continue_final_message():
    messages = IMAGE_QUESTION + [{"role": "assistant", "content": "A red"}]
    assert (
        render(VICUNA_V1_TEMPLATE, messages, continue_final_message=True)
        == SYSTEM + " USER: <image>\nWhat is shown? ASSISTANT: A red"
    )


def test_unknown_role_raises():
    with pytest.raises(Exception, match="role"):
        render(VICUNA_V1_TEMPLATE, [{"role": "tool", "content": "x"}])
