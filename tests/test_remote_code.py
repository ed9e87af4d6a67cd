"""A converted repo is self-contained: plain Transformers loads it with `trust_remote_code=True`, without deepstack_hf.

A tiny original-format checkpoint is converted once. A subprocess in which `import deepstack_hf` fails loads the
result (a) from the local folder and (b) from a Hugging Face cache snapshot (`models--org--name/snapshots/<rev>/`
with symlinks into `blobs/`, offline: the Hub code path, where Transformers checks the imports of every module
file) through AutoConfig, AutoModel, AutoModelForImageTextToText, AutoImageProcessor, AutoProcessor,
`apply_chat_template` + `generate` and `pipeline`. The second code path is the installed package in this process:
logits, tokens and pipeline text must be equal.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import deepstack_hf
from deepstack_hf.conversion import convert_checkpoint
from deepstack_hf.conversion.remote_code import AUTO_CLASSES, registered_for_auto_classes, write_remote_code
from deepstack_hf.testing_utils.synthetic_checkpoint import build_synthetic_checkpoint
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
from transformers.dynamic_module_utils import get_imports

REPO_ID = "deepstack-hf/tiny-remote"
NEW_TOKENS = 6
QUESTION = "What is in the image?"

# What `pip install transformers torch pillow` brings: Transformers' own requirements, torch, and Pillow for images.
PLAIN_TRANSFORMERS_IMPORTS = {
    "transformers", "torch", "PIL", "huggingface_hub", "numpy", "packaging", "yaml", "regex", "tokenizers",
    "typer", "safetensors", "tqdm",
}

CHILD = r"""
import json, sys
sys.modules["deepstack_hf"] = None  # as on a machine without the package
try:
    import deepstack_hf
except ImportError:
    pass
else:
    raise SystemExit("deepstack_hf is importable in the child")
import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline
# (5.17's top-level `AutoImageProcessor` is a placeholder that demands torchvision; the class itself does not)
from transformers.models.auto.image_processing_auto import AutoImageProcessor

source, image_path, question, new_tokens, out = sys.argv[1:6]
result = {"refusals": {}}
loaders = {auto.__name__: auto.from_pretrained for auto in
           (AutoConfig, AutoModel, AutoModelForImageTextToText, AutoImageProcessor, AutoProcessor)}
loaders["pipeline"] = lambda source: pipeline("image-text-to-text", model=source)
for name, load in loaders.items():
    try:
        result["refusals"][name] = f"loaded {type(load(source)).__name__}"
    except ValueError as error:
        result["refusals"][name] = str(error)

config = AutoConfig.from_pretrained(source, trust_remote_code=True)
base = AutoModel.from_pretrained(source, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(source, trust_remote_code=True)
image_processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
result["classes"] = {name: [type(obj).__name__, type(obj).__module__] for name, obj in
                     [("config", config), ("base", base), ("model", model), ("image_processor", image_processor),
                      ("processor", processor), ("video_processor", processor.video_processor)]}
video = np.arange(7 * 30 * 40 * 3, dtype=np.int64).reshape(7, 30, 40, 3) % 251  # frames as an array: no decoder
video_inputs = processor(videos=[video.astype(np.uint8)], text=[question + " <video>"], return_tensors="pt")
messages = [{"role": "user", "content": [{"type": "image", "path": image_path}, {"type": "text", "text": question}]}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits
generated = model.generate(**inputs, max_new_tokens=int(new_tokens), do_sample=False)
pipe = pipeline("image-text-to-text", model=source, trust_remote_code=True)
text = pipe(text=messages, max_new_tokens=int(new_tokens), return_full_text=False)[0]["generated_text"]
result["input_ids"] = inputs["input_ids"].tolist()
result["tokens"] = generated[0, inputs["input_ids"].shape[1]:].tolist()
result["pipeline_text"] = text
result["video_input_ids"] = video_inputs["input_ids"].tolist()
torch.save(logits, out + ".pt")
torch.save(video_inputs["pixel_values"], out + ".video.pt")
with open(out, "w") as f:
    json.dump(result, f)
"""


def hub_cache_snapshot(repo: Path, hf_home: Path, repo_id: str) -> str:
    """Lay `repo` out as the Hub cache does (blobs + a snapshot of symlinks + refs/main); returns the revision."""
    cache = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    revision = hashlib.sha1(repo_id.encode()).hexdigest()
    (cache / "blobs").mkdir(parents=True)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text(revision)
    snapshot = cache / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in sorted(repo.iterdir()):
        data = file.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (cache / "blobs" / blob).write_bytes(data)
        (snapshot / file.name).symlink_to(Path("..") / ".." / "blobs" / blob)
    return revision


def picture():
    image = Image.new("RGB", (150, 96), (230, 220, 200))
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 10, 70, 90), fill=(200, 40, 40))
    draw.ellipse((80, 5, 145, 60), fill=(40, 90, 200))
    return image


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    synthetic = build_synthetic_checkpoint(root / "src", text_model_type="llama", hd=True, dtype=torch.float32)
    result = convert_checkpoint(synthetic.checkpoint, root / "tiny-remote", progress=False)
    image_path = root / "picture.png"
    picture().save(image_path)
    return root, result, image_path


def package_reference(repo: Path, image_path: Path) -> dict:
    """The same run through the installed package (registered Auto classes, no remote code)."""
    processor = AutoProcessor.from_pretrained(repo)
    video = (np.arange(7 * 30 * 40 * 3).reshape(7, 30, 40, 3) % 251).astype(np.uint8)
    video_inputs = processor(videos=[video], text=[QUESTION + " <video>"], return_tensors="pt")
    model = AutoModelForImageTextToText.from_pretrained(repo)
    assert type(model) is deepstack_hf.DeepStackForConditionalGeneration
    content = [{"type": "image", "path": str(image_path)}, {"type": "text", "text": QUESTION}]
    messages = [{"role": "user", "content": content}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**inputs).logits
    generated = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    pipe = pipeline("image-text-to-text", model=str(repo))
    text = pipe(text=messages, max_new_tokens=NEW_TOKENS, return_full_text=False)[0]["generated_text"]
    return {
        "input_ids": inputs["input_ids"].tolist(),
        "tokens": generated[0, inputs["input_ids"].shape[1]:].tolist(),
        "pipeline_text": text,
        "logits": logits,
        "video_input_ids": video_inputs["input_ids"].tolist(),
        "video_pixel_values": video_inputs["pixel_values"],
    }


def run_without_package(source: str, image_path: Path, out: Path, hf_home: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HF_MODULES_CACHE")}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, source, str(image_path), QUESTION, str(NEW_TOKENS), str(out)],
        env=env, cwd=out.parent, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads(out.read_text())
    result["logits"] = torch.load(str(out) + ".pt")
    result["video_pixel_values"] = torch.load(str(out) + ".video.pt")
    return result


def test_converted_repo_ships_the_package_modules_and_auto_map(converted):
    root, result, _ = converted
    repo = result.output_dir
    shipped = sorted(path.name for path in repo.glob("*.py"))
    package_dir = Path(deepstack_hf.__file__).parent
    # One source of truth: every shipped module is the installed package's file, byte for byte.
    for name in shipped:
        assert (repo / name).read_bytes() == (package_dir / name).read_bytes(), name
    assert {"configuration_deepstack.py", "modeling_deepstack.py", "processing_deepstack.py",
            "image_processing_deepstack.py", "modeling_deepstack_text.py", "video_processing_deepstack.py",
            "video_decoding.py"} <= set(shipped)
    assert not any(name.startswith("conversion") or name == "demo.py" for name in shipped)

    config = json.loads((repo / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_deepstack.DeepStackConfig",
        "AutoModel": "modeling_deepstack.DeepStackModel",
        "AutoModelForImageTextToText": "modeling_deepstack.DeepStackForConditionalGeneration",
    }
    processor_config = json.loads((repo / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_deepstack.DeepStackProcessor"}
    assert processor_config["image_processor"]["auto_map"]["AutoImageProcessor"] == (
        "image_processing_deepstack.DeepStackImageProcessor"
    )
    assert processor_config["video_processor"]["auto_map"]["AutoVideoProcessor"] == (
        "video_processing_deepstack.DeepStackVideoProcessor"
    )
    card = (repo / "README.md").read_text()  # the model card is kept and says how to load and remake the repo
    assert card.startswith("---") and "trust_remote_code=True" in card and "deepstack-convert" in card


def test_shipped_modules_import_only_what_plain_transformers_installs(converted):
    repo = converted[1].output_dir
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in sorted(repo.glob("*.py")):
        extra = set(get_imports(path)) - stdlib - PLAIN_TRANSFORMERS_IMPORTS
        assert not extra, f"{path.name} imports {sorted(extra)}, which plain Transformers does not install"


def test_a_resaved_model_is_made_self_contained_again(tmp_path, converted):
    """Saving with the package writes no code (but keeps the loaded `auto_map`); `write_remote_code` restores it."""
    repo = converted[1].output_dir
    with registered_for_auto_classes():
        assert all(cls._auto_class == auto for cls, auto in AUTO_CLASSES.items())
    assert all(cls._auto_class is None for cls in AUTO_CLASSES)

    model = AutoModelForImageTextToText.from_pretrained(repo)
    processor = AutoProcessor.from_pretrained(repo)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.py"))
    write_remote_code(tmp_path, model.config, processor)
    assert sorted(path.name for path in tmp_path.glob("*.py")) == sorted(path.name for path in repo.glob("*.py"))
    for name in ("config.json", "processor_config.json"):
        restored, converted_map = (json.loads((folder / name).read_text())["auto_map"] for folder in (tmp_path, repo))
        assert restored == converted_map, name


@pytest.mark.parametrize("layout", ["local folder", "hub cache snapshot"])
def test_loads_without_the_package_like_the_package(converted, layout, tmp_path):
    root, result, image_path = converted
    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    if layout == "local folder":
        source, module_marker = str(result.output_dir), "transformers_modules."
    else:
        revision = hub_cache_snapshot(result.output_dir, hf_home, REPO_ID)
        source, module_marker = REPO_ID, f".{revision}."  # the Hub path keeps the code per commit
    remote = run_without_package(source, image_path, tmp_path / "result.json", hf_home)
    reference = package_reference(result.output_dir, image_path)

    assert len(remote["refusals"]) == 6
    for loader, message in remote["refusals"].items():
        assert "trust_remote_code=True" in message, (loader, message)
    for name, (class_name, module) in remote["classes"].items():
        assert module.startswith("transformers_modules.") and module_marker in module, (name, module)
    assert [class_name for class_name, _ in remote["classes"].values()] == [
        "DeepStackConfig", "DeepStackModel", "DeepStackForConditionalGeneration", "DeepStackImageProcessor",
        "DeepStackProcessor", "DeepStackVideoProcessor",
    ]
    assert remote["input_ids"] == reference["input_ids"]
    torch.testing.assert_close(remote["logits"], reference["logits"], atol=1e-6, rtol=0)
    assert remote["tokens"] == reference["tokens"]
    assert remote["pipeline_text"] == reference["pipeline_text"]
    assert remote["video_input_ids"] == reference["video_input_ids"]
    torch.testing.assert_close(remote["video_pixel_values"], reference["video_pixel_values"], atol=0, rtol=0)
