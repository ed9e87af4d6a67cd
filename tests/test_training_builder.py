"""`build_deepstack_model`: a DeepStack-L, -L-HD or -V repository from a CLIP vision checkpoint and a decoder checkpoint.

The parts are tiny random checkpoints saved on the spot (`CLIPVisionModel(...).save_pretrained`,
`LlamaForCausalLM(...).save_pretrained` with a SentencePiece tokenizer, Qwen2 with a fast tokenizer, Phi-3 with its
added tokens). Expectations: the weights are the parts' own, tensor for tensor; the tokenizer gains `<image>` after
its vocabulary; and a process without `deepstack_hf` loads the repository with plain Transformers
(`trust_remote_code=True`) and computes the package's logits.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from tokenizers import AddedToken
from transformers import (
    AutoModelForCausalLM,
    CLIPVisionModel,
    GPT2Config,
    GPT2LMHeadModel,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from deepstack_hf import DeepStackForConditionalGeneration, DeepStackProcessor
from deepstack_hf.chat_templates import CHATML_TEMPLATE, PHI3_INSTRUCT_TEMPLATE, VICUNA_V1_TEMPLATE
from deepstack_hf.testing_utils.synthetic_checkpoint import build_synthetic_checkpoint
from deepstack_hf.testing_utils.tiny_sentencepiece import train_tiny_sentencepiece
from deepstack_hf.tokenization import tokenizer_from_sentencepiece
from deepstack_hf.training.model_builder import build_deepstack_model
from training_setup import tiny_parts

QUESTION = "What is in the image?"

CHILD = r"""
import json, sys
sys.modules["deepstack_hf"] = None  # as on a machine without the package
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

image_path, out, *repos = sys.argv[1:]
result = {}
for repo in repos:
    processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(repo, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image", "path": image_path}, {"type": "text", "text": "%s"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    torch.save(logits, f"{out}.{len(result)}.pt")
    result[repo] = {"class": type(model).__module__, "input_ids": inputs["input_ids"].tolist()}
json.dump(result, open(out, "w"))
""" % QUESTION


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return tiny_parts(tmp_path_factory.mktemp("parts"))


@pytest.fixture(scope="module")
def repos(parts, tmp_path_factory):
    clip, llm = parts
    root = tmp_path_factory.mktemp("built")
    return {
        "L": build_deepstack_model(clip, llm, root / "l"),
        "L-HD": build_deepstack_model(clip, llm, root / "l-hd", variant="L-HD"),
        "V": build_deepstack_model(clip, llm, root / "v", variant="V"),
        "V-extra": build_deepstack_model(clip, llm, root / "v-extra", variant="V", vision_split_layer=3),
    }


def test_built_models_hold_the_parts_weights(parts, repos):
    clip, llm = parts
    vision = CLIPVisionModel.from_pretrained(clip).state_dict()
    decoder = AutoModelForCausalLM.from_pretrained(llm)
    for variant, repo in repos.items():
        model = DeepStackForConditionalGeneration.from_pretrained(repo)
        config = model.config
        assert config.hd_layout == (variant == "L-HD")
        assert config.deepstack_variant == variant[0] if variant != "L-HD" else config.deepstack_variant == "L"
        tower = model.model.vision_tower.state_dict()
        assert all(torch.equal(tower[name], value) for name, value in vision.items())
        for name, value in decoder.model.state_dict().items():
            rows = value.shape[0] if name == "embed_tokens.weight" else None
            assert torch.equal(model.model.language_model.state_dict()[name][:rows], value), name
        assert torch.equal(model.lm_head.weight[:300], decoder.lm_head.weight)
        # <image> after the 300 pieces, the embeddings padded to 320 rows, everything from <image> on suppressed
        assert config.image_token_id == 300 and model.get_input_embeddings().weight.shape[0] == 320
        assert model.generation_config.suppress_tokens == list(range(300, 320))
        assert model.generation_config.eos_token_id == 2 and model.generation_config.pad_token_id == 0
        processor = DeepStackProcessor.from_pretrained(repo)
        assert processor.chat_template == VICUNA_V1_TEMPLATE
        assert processor.image_processor.hd_layout == (variant == "L-HD")
        assert processor.image_processor.square_grid == variant.startswith("V")
    v, extra = (DeepStackForConditionalGeneration.from_pretrained(repos[name]).config for name in ("V", "V-extra"))
    assert (v.vision_split_layer, v.vision_post_layers, v.vision_feature_layer) == (1, 0, -2)  # half of 3 layers
    assert (extra.vision_split_layer, extra.vision_post_layers, extra.vision_feature_layer) == (3, 5, -1)


def test_built_repositories_load_with_plain_transformers(repos, tmp_path):
    image_path = tmp_path / "picture.png"
    Image.new("RGB", (90, 50), (200, 60, 40)).save(image_path)
    out = tmp_path / "child.json"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    names = ["L", "L-HD", "V"]
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(image_path), str(out), *(str(repos[name]) for name in names)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    for index, name in enumerate(names):
        child = result[str(repos[name])]
        assert not child["class"].startswith("deepstack_hf")  # the repository's own copy of the modules
        processor = DeepStackProcessor.from_pretrained(repos[name])
        model = DeepStackForConditionalGeneration.from_pretrained(repos[name]).eval()
        messages = [{"role": "user", "content": [{"type": "image", "path": str(image_path)}, {"type": "text", "text": QUESTION}]}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt")
        assert inputs["input_ids"].tolist() == child["input_ids"]
        with torch.no_grad():
            torch.testing.assert_close(torch.load(f"{out}.{index}.pt"), model(**inputs).logits, rtol=0, atol=1e-6)


def test_each_decoder_family_gets_its_template_and_end_token(parts, tmp_path):
    clip, _ = parts
    # Qwen2: a fast tokenizer only (no tokenizer.model), ChatML, tied embeddings
    qwen = tmp_path / "qwen2"
    sp = train_tiny_sentencepiece(tmp_path / "sp" / "tiny.model")
    chat_tokens = [AddedToken(token, special=True, normalized=False) for token in ("<|im_start|>", "<|im_end|>")]
    tokenizer = tokenizer_from_sentencepiece(sp, image_token=None, extra_special_tokens=chat_tokens, padding_side="right")
    tokenizer.save_pretrained(qwen)
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                 bos_token_id=1, eos_token_id=2)).save_pretrained(qwen)
    # Phi-3: SentencePiece with Phi-3's added tokens (<|end|> = 307 in the 300-piece tokenizer)
    phi3 = tmp_path / "phi3"
    synthetic = build_synthetic_checkpoint(tmp_path / "phi3-src", text_model_type="phi3", dtype=torch.float32)
    Phi3ForCausalLM(Phi3Config(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                               num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=300,
                               pad_token_id=300)).save_pretrained(phi3)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(synthetic.checkpoint / name, phi3 / name)

    # Mistral: SentencePiece like Llama, the vicuna_v1 template
    mistral = tmp_path / "mistral"
    MistralForCausalLM(MistralConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                                     num_attention_heads=4, num_key_value_heads=2, bos_token_id=1,
                                     eos_token_id=2)).save_pretrained(mistral)
    shutil.copy(sp, mistral / "tokenizer.model")

    mistral_repo = build_deepstack_model(clip, mistral, tmp_path / "out-mistral")
    assert DeepStackProcessor.from_pretrained(mistral_repo).chat_template == VICUNA_V1_TEMPLATE
    assert DeepStackForConditionalGeneration.from_pretrained(mistral_repo).config.text_config.model_type == "mistral"

    qwen_repo = build_deepstack_model(clip, qwen, tmp_path / "out-qwen2")
    processor = DeepStackProcessor.from_pretrained(qwen_repo)
    model = DeepStackForConditionalGeneration.from_pretrained(qwen_repo)
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert processor.chat_template == CHATML_TEMPLATE and processor.image_token_id == 302
    assert model.generation_config.eos_token_id == [2, im_end]
    assert model.config.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert processor.tokenizer.padding_side == "left"

    phi3_repo = build_deepstack_model(clip, phi3, tmp_path / "out-phi3", chat_template="phi3_instruct")
    processor = DeepStackProcessor.from_pretrained(phi3_repo)
    model = DeepStackForConditionalGeneration.from_pretrained(phi3_repo)
    assert processor.chat_template == PHI3_INSTRUCT_TEMPLATE
    assert processor.tokenizer.convert_tokens_to_ids("<|end|>") == 307 and processor.image_token_id == 311
    assert model.generation_config.eos_token_id == [300, 307]


def test_refusals_leave_nothing_on_disk(parts, tmp_path):
    clip, llm = parts
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="Unknown variant 'X'"):
        build_deepstack_model(clip, llm, out, variant="X")
    with pytest.raises(ValueError, match="vision_split_layer is a DeepStack-V option"):
        build_deepstack_model(clip, llm, out, vision_split_layer=1)
    with pytest.raises(ValueError, match="'plain' is a pretraining data format"):
        build_deepstack_model(clip, llm, out, chat_template="plain")
    with pytest.raises(ValueError, match=r"generation"):
        build_deepstack_model(clip, llm, out, chat_template="{{ messages[0]['content'] }}")
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=300)).save_pretrained(gpt2)
    with pytest.raises(ValueError, match="is a 'gpt2' model; supported: \\['llama', 'mistral', 'phi3', 'qwen2'\\]"):
        build_deepstack_model(clip, gpt2, out)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gpt2"]
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(Exception, match="not empty"):
        build_deepstack_model(clip, llm, out)
    assert [path.name for path in out.iterdir()] == ["keep.txt"]
