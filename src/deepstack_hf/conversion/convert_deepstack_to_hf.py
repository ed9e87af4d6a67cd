"""Convert an original DeepStack checkpoint (Hub id or directory) into a Hub-ready Transformers repository.

    deepstack-convert SOURCE OUTPUT_DIR [--dtype float16|bfloat16|float32] [--clamp-fp16] [--vision-tower ID_OR_DIR]
        [--vision-weights auto|checkpoint|tower] [--max-shard-size 5GB] [--overwrite] [--verify]
        [--push-to-hub REPO_ID [--private] [--dry-run]]

(`python conversion/convert_deepstack_to_hf.py ...` at the repository root is the same command.)

`convert_checkpoint` runs four steps, each with one guarantee:

1. `plan_conversion` (read and validate -> `ConversionPlan`): every file read is confined to the source folder
   (`source_checkpoint`), every safetensors header, config value and preprocessor field is checked for type and
   range (`streaming_safetensors.read_header`, `config_bounds`) and every unimplemented option refused by name
   (`config_mapping`), and the planned tensors (names, dtypes, shapes, shards) are checked against a meta-device
   `DeepStackForConditionalGeneration`. Nothing is written.
2. `write_plan`: stream the tensors shard by shard (bounded memory, see `streaming_safetensors`; a float16 cast
   that overflows or underflows is refused unless `clamp_fp16`), then config, generation config, processor,
   tokenizer and model card, into the claim's staging folder.
3. `verify_plan` (optional): compare with the independent original implementation, streamed layer by layer.
4. publish: `output_claim.OutputClaim` claimed the output (lock file, overlap checks) before step 2 and now
   renames the staging folder onto it atomically. Any failure removes the staging folder: nothing is left behind.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config_bounds import check_original_config, check_select_layer
from .config_mapping import OriginalSettings, build_deepstack_config, read_original_settings
from .errors import ConversionError, os_error_reason
from .model_card import CardInfo, render_model_card
from .output_claim import OutputClaim
from .remote_code import write_remote_code
from .source_checkpoint import SourceCheckpoint, SourceFolder, load_source_checkpoint
from .streaming_safetensors import (
    FLOAT_DTYPES,
    SAFETENSORS_DTYPES,
    TORCH_DTYPES,
    CastReport,
    FileReaders,
    plan_shards,
    read_header,
    read_tensor,
    write_index,
    write_shard,
)
from .tokenizer_conversion import convert_tokenizer, padded_vocab_size
from .vision_tower import VisionTower, image_processor_settings, load_vision_tower
from .weight_mapping import adapt_vision_names, check_against_model, plan_tensors

logger = logging.getLogger("deepstack_hf.conversion")

DTYPE_CHOICES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
VERIFY_TOLERANCE = 1e-4
# Modules `--verify` streams from disk (accelerate's per-module hooks load their weights when they run).
STREAMED_MODULES = ("model.vision_tower", "model.language_model", "lm_head")
DEFAULT_MAX_SHARD_SIZE = "5GB"


@dataclass
class VerificationReport:
    max_abs_logit_diff: float
    prompt_ids_match: bool
    greedy_match: bool
    reference_tokens: list[int]
    converted_tokens: list[int]
    tolerance: float = VERIFY_TOLERANCE

    @property
    def passed(self) -> bool:
        return self.prompt_ids_match and self.greedy_match and self.max_abs_logit_diff <= self.tolerance

    def summary(self) -> str:
        return (
            f"max |logit diff| = {self.max_abs_logit_diff:.3e} (tolerance {self.tolerance:.0e}); "
            f"prompt ids {'match' if self.prompt_ids_match else 'DIFFER'}; greedy tokens "
            f"{'match' if self.greedy_match else 'DIFFER'} ({self.reference_tokens} vs {self.converted_tokens})"
        )


@dataclass
class ConversionResult:
    output_dir: Path
    files: list[str]
    settings: OriginalSettings
    vocab_size: int
    image_token_id: int
    suppress_tokens: list[int]
    use_checkpoint_vision: bool
    verification: VerificationReport | None = None
    cast_report: CastReport | None = None
    uploaded: list[tuple[str, int]] = field(default_factory=list)


def parse_size(value: str | int) -> int:
    """'5GB', '500MB', '2GiB' or a byte count -> bytes (decimal units like `save_pretrained`)."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(value), flags=re.IGNORECASE)
    if not match:
        raise ConversionError(f"Cannot parse size {value!r}; use e.g. 5GB, 500MB or a byte count.")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return int(number * scale)


def _expected_model_shapes(config) -> dict[str, tuple[int, ...]]:
    from ..modeling_deepstack import DeepStackForConditionalGeneration

    with torch.device("meta"):
        model = DeepStackForConditionalGeneration(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _generation_config(source_dir: Path, tokenizer_info, suppress: list[int]):
    from transformers import GenerationConfig

    if (source_dir / "generation_config.json").is_file():
        try:
            generation = GenerationConfig.from_dict(SourceFolder.of(source_dir).read_json("generation_config.json", "Checkpoint"))
        except (TypeError, ValueError) as error:
            raise ConversionError(f"{source_dir}/generation_config.json is not a valid generation config: "
                                  f"{str(error)[:200]}") from None
    else:
        generation = GenerationConfig(do_sample=False)
    if generation.bos_token_id is None:
        generation.bos_token_id = tokenizer_info.bos_token_id
    if generation.eos_token_id is None:
        generation.eos_token_id = tokenizer_info.eos_token_id
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer_info.pad_token_id
    existing = list(generation.suppress_tokens or [])
    generation.suppress_tokens = existing + [i for i in suppress if i not in existing] or None
    return generation


def _write_processor(directory: Path, tokenizer, settings: OriginalSettings, image_settings: dict, patch_size: int):
    from ..chat_templates import PHI3_INSTRUCT_TEMPLATE, VICUNA_V1_TEMPLATE
    from ..image_processing_deepstack import DeepStackImageProcessor
    from ..processing_deepstack import DeepStackProcessor

    image_processor = DeepStackImageProcessor(
        crop_size={"height": image_settings["crop_size"], "width": image_settings["crop_size"]},
        image_mean=image_settings["image_mean"],
        image_std=image_settings["image_std"],
        resample=image_settings["resample"],
        rescale_factor=image_settings["rescale_factor"],
        num_crops=settings.num_crops,
        hd_layout=settings.hd_layout,
        square_grid=settings.square_grid,
        patch_size=patch_size,
    )
    template = PHI3_INSTRUCT_TEMPLATE if settings.template == "phi3_instruct" else VICUNA_V1_TEMPLATE
    processor = DeepStackProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)
    processor.save_pretrained(directory)
    return processor


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="Writing shards", disable=not enabled)


@dataclass(frozen=True)
class ConversionOptions:
    """The converter's options (the CLI flags).

    Args:
        dtype: output dtype of floating-point weights (`float16`, `bfloat16`, `float32`); default: the dtype of the
            checkpoint's embedding matrix.
        vision_tower: Hub id or directory of the CLIP tower, overriding the config's `mm_vision_tower`.
        vision_weights: `auto` (original rule: the checkpoint's CLIP copy iff `unfreeze_mm_vision_tower`),
            `checkpoint` or `tower`.
        max_shard_size: largest output shard (`5GB`, `500MB`, a byte count).
        overwrite: replace a non-empty output directory (never the source, the tower or the cwd).
        clamp_fp16: with `dtype="float16"`, clamp values beyond +-65504 instead of refusing the conversion.
        verify / verify_tokens: compare with the independent original implementation (streamed, layer by layer).
        card_repo_id: repo id written in the model card (default: the Hub upload target or the output name).
        progress: show progress bars.
    """

    dtype: str | None = None
    vision_tower: str | None = None
    vision_weights: str = "auto"
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE
    overwrite: bool = False
    clamp_fp16: bool = False
    verify: bool = False
    verify_tokens: int = 8
    card_repo_id: str | None = None
    progress: bool = True

    def __post_init__(self):
        if self.dtype is not None and self.dtype not in DTYPE_CHOICES:
            raise ConversionError(f"Unsupported --dtype {self.dtype!r:.40}; choose one of {', '.join(DTYPE_CHOICES)}.")
        if self.vision_weights not in ("auto", "checkpoint", "tower"):
            raise ConversionError(f"--vision-weights must be auto, checkpoint or tower, got {self.vision_weights!r:.40}.")
        if not 1 <= parse_size(self.max_shard_size):
            raise ConversionError(f"--max-shard-size must be at least 1 byte, got {self.max_shard_size!r:.40}.")
        if isinstance(self.verify_tokens, bool) or not isinstance(self.verify_tokens, int) or not 1 <= self.verify_tokens <= 256:
            raise ConversionError(f"--verify-tokens must be an integer in [1, 256], got {self.verify_tokens!r:.40}.")


@dataclass
class ConversionPlan:
    """Everything read from the source and validated, and every output decided; nothing written yet."""

    checkpoint: SourceCheckpoint
    settings: OriginalSettings
    tower: VisionTower
    use_checkpoint_vision: bool
    tokenizer_info: object
    vocab_rows: int
    suppress: list[int]
    dtype_name: str
    config: object
    shards: list
    card: CardInfo


def plan_conversion(source: str | os.PathLike, options: ConversionOptions, card_repo_id: str) -> ConversionPlan:
    """Read and validate SOURCE (confined, bounded, headers only) and plan every output file.

    Like timm's `checkpoint_filter_fn` and `weight_mapping.plan_tensors`, this is a pure function of its inputs:
    it writes nothing, so any refusal leaves the disk untouched.
    """
    checkpoint = load_source_checkpoint(source)
    check_original_config(checkpoint.config)
    settings = read_original_settings(checkpoint.config, options.vision_tower)
    named_by = None  # the tower the user gave, or the one a local checkpoint names
    if checkpoint.from_hub and not options.vision_tower:
        named_by = "mm_vision_tower" if checkpoint.config.get("mm_vision_tower") else "vision_tower"
    tower = load_vision_tower(settings.vision_tower, named_by)
    check_select_layer(settings.select_layer, tower.vision_config["num_hidden_layers"])
    if options.vision_weights == "auto":
        use_checkpoint_vision = settings.unfreeze_vision_tower
    else:
        use_checkpoint_vision = options.vision_weights == "checkpoint"
    tower_tensors = None if use_checkpoint_vision else tower.weights()

    embed = checkpoint.tensors.get("model.embed_tokens.weight")
    if embed is None or len(embed.shape) != 2 or embed.dtype not in FLOAT_DTYPES:
        raise ConversionError(
            f"Checkpoint {checkpoint.directory}: model.embed_tokens.weight must be a 2-D floating-point tensor"
            + ("; it is missing." if embed is None else f", not {embed.dtype} of shape {embed.shape}.")
        )
    try:
        tokenizer_info = convert_tokenizer(checkpoint.directory)
    except ConversionError:
        raise
    except (OSError, RuntimeError, TypeError, ValueError, KeyError) as error:
        raise ConversionError(f"Checkpoint {checkpoint.directory}: its tokenizer does not load "
                              f"({type(error).__name__}: {str(error)[:200]}).") from None
    vocab_rows = padded_vocab_size(embed.shape[0], len(tokenizer_info.tokenizer))
    # Logits of ids >= the original tokenizer's length never existed in the original (its loader resized the
    # embeddings to the tokenizer), so they are suppressed: greedy decoding then matches the original exactly.
    first_suppressed = min(tokenizer_info.original_length, embed.shape[0])
    suppress = list(range(first_suppressed, vocab_rows))

    dtype_name = options.dtype or {v: k for k, v in DTYPE_CHOICES.items()}.get(TORCH_DTYPES[embed.dtype], "float32")
    try:
        config = build_deepstack_config(
            checkpoint.config,
            settings,
            tower.vision_config,
            vocab_size=vocab_rows,
            image_token_id=tokenizer_info.image_token_id,
            pad_token_id=tokenizer_info.pad_token_id,
            dtype=dtype_name,
        )
    except ConversionError:
        raise
    except (KeyError, TypeError, ValueError) as error:  # DeepStackConfig's and its sub-configs' own validation
        raise ConversionError(f"config.json gives an invalid DeepStack config: {str(error)[:300]}") from None
    target = SAFETENSORS_DTYPES[DTYPE_CHOICES[dtype_name]]
    planned = plan_tensors(checkpoint.tensors, tower_tensors, settings.projector_type, settings.hd_layout, target, vocab_rows)
    try:
        expected = _expected_model_shapes(config)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:  # values the configs accept with a warning
        raise ConversionError(f"config.json gives a model that cannot be built: {type(error).__name__}: "
                              f"{str(error)[:300]}") from None
    adapt_vision_names(planned, expected)
    check_against_model(planned, expected, tied=settings.tie_word_embeddings)
    shards = plan_shards(planned, parse_size(options.max_shard_size))

    card = CardInfo(
        repo_id=card_repo_id,
        source=str(source) if checkpoint.from_hub else None,
        llm="Phi-3" if settings.text_model_type == "phi3" else "Vicuna / Llama",
        hd=settings.hd_layout,
        template=settings.template,
        license="mit" if settings.text_model_type == "phi3" else "llama2",
        num_crops=settings.num_crops,
        deepstack_layers=settings.deepstack_layers,
        vision_split_layer=settings.vision_split_layer,
        suppressed_ids=(suppress[0], suppress[-1]) if suppress else None,
        vision_weights=(
            "the checkpoint's own copy (`model.vision_tower.vision_tower.*`)"
            if use_checkpoint_vision
            else f"{tower.card_name} (`vision_model.*`)"
        ),
    )
    return ConversionPlan(checkpoint, settings, tower, use_checkpoint_vision, tokenizer_info, vocab_rows, suppress,
                          dtype_name, config, shards, card)


def write_plan(plan: ConversionPlan, directory: Path, clamp_fp16: bool = False, progress: bool = True) -> CastReport:
    """Write every planned file into `directory` (the claim's staging folder); returns the float16 cast report.

    Raises `ConversionError` when the float16 cast is unsafe (see `CastReport.refusal`). Every file written here
    is published together; a step that adds files to the repository (e.g. remote-code modules) belongs at the end.
    """
    report = CastReport(clamp=clamp_fp16)
    total = sum(shard.nbytes for shard in plan.shards)
    with FileReaders() as readers, _progress(total, progress) as bar:
        for shard in plan.shards:
            bar.set_postfix_str(shard.filename)
            write_shard(shard, directory / shard.filename, readers, progress=bar.update, report=report)
    refusal = report.refusal()
    if refusal:
        raise ConversionError(refusal)
    if len(plan.shards) > 1:
        write_index(plan.shards, directory / "model.safetensors.index.json")
    plan.config.save_pretrained(directory)
    _generation_config(plan.checkpoint.directory, plan.tokenizer_info, plan.suppress).save_pretrained(directory)
    image_settings = image_processor_settings(plan.tower.preprocessor, plan.tower.directory)
    patch_size = plan.tower.vision_config["patch_size"]
    processor = _write_processor(directory, plan.tokenizer_info.tokenizer, plan.settings, image_settings, patch_size)
    write_remote_code(directory, plan.config, processor)  # the package's modules + auto_map: loads without deepstack_hf
    (directory / "README.md").write_text(render_model_card(plan.card))
    return report


def verify_plan(plan: ConversionPlan, directory: Path, max_new_tokens: int) -> VerificationReport:
    """`verify_conversion` of the written files against the original ones; `ConversionError` when they differ."""
    report = verify_conversion(
        plan.checkpoint.directory,
        directory,
        vision_tower_dir=plan.tower.directory,
        vision_weights="checkpoint" if plan.use_checkpoint_vision else "tower",
        weight_dtype=DTYPE_CHOICES[plan.dtype_name],
        max_new_tokens=max_new_tokens,
    )
    logger.info("Verification: %s", report.summary())
    if not report.passed:
        raise ConversionError(f"Verification failed: {report.summary()}")
    return report


def convert_checkpoint(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    push_to_hub: str | None = None,
    dry_run: bool = False,
    private: bool = False,
    **options,
) -> ConversionResult:
    """Convert SOURCE into OUTPUT_DIR: plan (read and validate), claim, write, verify, publish, upload.

    `options` are `ConversionOptions` fields. Raises `ConversionError` on refusal or failure, having changed
    nothing on disk: the output is only claimed once the plan stands, and only published once written (and
    verified); see `output_claim`. `push_to_hub` / `dry_run` / `private`: upload the result (or only list it).
    """
    options = ConversionOptions(**options)
    output_dir = OutputClaim.output_path(output_dir)
    OutputClaim.check_output(output_dir, options.overwrite)  # fail fast, before any download
    plan = plan_conversion(source, options, options.card_repo_id or push_to_hub or output_dir.name)
    protected = {"the source checkpoint": SourceFolder.of(plan.checkpoint.directory).root,
                 "the vision tower": SourceFolder.of(plan.tower.directory).root}
    verification = None
    with OutputClaim.acquire(output_dir, options.overwrite, protected) as claim:
        cast_report = write_plan(plan, claim.staging, options.clamp_fp16, options.progress)
        if options.verify:
            verification = verify_plan(plan, claim.staging, options.verify_tokens)
        claim.publish()

    result = ConversionResult(
        output_dir=output_dir,
        files=sorted(p.relative_to(output_dir).as_posix() for p in output_dir.rglob("*") if p.is_file()),
        settings=plan.settings,
        vocab_size=plan.vocab_rows,
        image_token_id=plan.tokenizer_info.image_token_id,
        suppress_tokens=plan.suppress,
        use_checkpoint_vision=plan.use_checkpoint_vision,
        verification=verification,
        cast_report=cast_report if plan.dtype_name == "float16" else None,
    )
    if push_to_hub:
        from .hub_upload import push_to_hub as upload

        result.uploaded = upload(output_dir, push_to_hub, private=private, dry_run=dry_run)
    return result


# ------------------------------------------------------------------------------------------------ verification
def verification_image():
    """A deterministic synthetic test picture (wider than tall, so the crop grid is not square)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (500, 320), (235, 225, 200))
    draw = ImageDraw.Draw(image)
    draw.rectangle((30, 40, 210, 280), fill=(200, 40, 40))
    draw.ellipse((260, 60, 470, 270), fill=(40, 90, 200))
    draw.polygon([(250, 300), (330, 180), (410, 300)], fill=(30, 160, 70))
    for x in range(0, 500, 25):
        draw.line((x, 0, x, 20), fill=(0, 0, 0), width=2)
    return image


def verify_conversion(
    original_dir: str | Path,
    converted_dir: str | Path,
    vision_tower_dir: str | Path | None = None,
    vision_weights: str = "auto",
    weight_dtype: torch.dtype | None = None,
    max_new_tokens: int = 8,
    question: str = "What is shown in this image?",
    image=None,
) -> VerificationReport:
    """Compare the converted model (fp32) with the independent original implementation on one image + prompt.

    Both sides stream their weights, so a 7B checkpoint verifies in well under 24 GB: the reference reads each
    original tensor from its file when it uses it and drops it after, and the converted model is loaded with its
    big modules on disk (`load_streamed`: accelerate hooks load each module's weights from the converted
    safetensors just before it runs, cast to fp32, and free them after). Peak memory is the largest module in
    fp32 plus activations. The reference runs first and is freed before. `weight_dtype`
    rounds the reference's weights to the dtype the converted model was saved in (identity for the checkpoint's
    own bf16 weights; it matters for an fp32 CLIP tower saved in 16 bits).
    """
    from ..testing_utils.original_reference import OriginalDeepStack, original_prompt

    image = image or verification_image()
    reference = OriginalDeepStack(original_dir, vision_tower_dir, vision_weights, weight_dtype=weight_dtype)
    prompt = original_prompt(reference.model_type, question)
    ref_ids = reference.tokenizer.prompt_ids(prompt)
    with torch.no_grad():
        ref_logits = reference.logits(ref_ids, [image])
        eos = reference.config.get("eos_token_id")
        generation_file = Path(original_dir) / "generation_config.json"
        if generation_file.is_file():  # the original's generate() stops at its generation config's eos ids
            eos = json.loads(generation_file.read_text()).get("eos_token_id", eos)
        eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        ref_tokens = reference.greedy(ref_ids, [image], max_new_tokens, eos_ids)
    del reference
    gc.collect()

    import deepstack_hf  # noqa: F401  (registers the Auto classes)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(converted_dir)
    with tempfile.TemporaryDirectory(prefix="deepstack-verify-") as offload_folder:
        model = load_streamed(converted_dir, offload_folder)
        return _compare_with_reference(model, processor, image, question, prompt, ref_ids, ref_logits, ref_tokens,
                                       max_new_tokens)


def load_streamed(converted_dir, offload_folder) -> torch.nn.Module:
    """The converted model in fp32 with `STREAMED_MODULES` left on disk, each module's weights read when it runs.

    Built from the parts `from_pretrained(device_map=...)` uses for "disk" entries, without its loading pass,
    which reads every tensor through memory-mapped shards (counted in the process's resident memory, up to the
    whole checkpoint): the model is created on the meta device (buffers real), the small rest is read from the
    converted files now, and accelerate's `dispatch_model` attaches per-module hooks with an offload index that
    points at the converted safetensors (cast to fp32 at each use). The small rest includes `image_newline`, a
    bare parameter the HD layout reads outside any submodule's forward (generate() encodes images before the
    first forward), where no hook would load it.
    """
    from accelerate import dispatch_model, init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import AutoConfig, GenerationConfig

    from ..modeling_deepstack import DeepStackForConditionalGeneration

    config = AutoConfig.from_pretrained(converted_dir)
    with init_empty_weights(include_buffers=False):
        model = DeepStackForConditionalGeneration._from_config(config, dtype=torch.float32)
    records = {}
    for path in sorted(Path(converted_dir).glob("*.safetensors")):
        records.update(read_header(path))
    if "lm_head.weight" not in records:  # tied embeddings
        records["lm_head.weight"] = records["model.language_model.embed_tokens.weight"]
    device_map = {f"model.{name}": "cpu" for name, _ in model.model.named_children()}
    device_map.update({f"model.{name}": "cpu" for name, _ in model.model.named_parameters(recurse=False)})
    device_map.update({name: "disk" for name in STREAMED_MODULES})
    offload_index = {}
    for name, _ in model.named_parameters():
        if name.startswith(tuple(f"{module}." for module in STREAMED_MODULES)):
            record = records[name]
            offload_index[name] = {"safetensors_file": str(record.file), "weight_name": record.name, "dtype": "float32"}
        else:
            set_module_tensor_to_device(model, name, "cpu", value=read_tensor(records[name]).to(torch.float32))
    with warnings.catch_warnings():  # accelerate warns about keys that name a parameter, as image_newline does
        warnings.filterwarnings("ignore", message="The following device_map keys do not match any submodules")
        model = dispatch_model(model, device_map=device_map, main_device="cpu", offload_dir=offload_folder,
                               offload_index=offload_index)
    model.generation_config = GenerationConfig.from_pretrained(converted_dir)
    return model.eval()


def _compare_with_reference(model, processor, image, question, prompt, ref_ids, ref_logits, ref_tokens,
                            max_new_tokens) -> VerificationReport:
    """Run the converted model on the reference's image and question; compare ids, logits and greedy tokens."""
    from ..testing_utils.original_reference import IMAGE_PLACEHOLDER

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    image_id = model.config.image_token_id
    collapsed = []
    for token in ids:
        if token == image_id:
            if not collapsed or collapsed[-1] != IMAGE_PLACEHOLDER:
                collapsed.append(IMAGE_PLACEHOLDER)
        else:
            collapsed.append(token)
    ids_match = collapsed == ref_ids and text == prompt
    with torch.no_grad():
        logits = model(**inputs).logits[0]
        if logits.shape[0] != ref_logits.shape[0]:
            diff = float("inf")
        else:
            diff = float((logits[:, : ref_logits.shape[1]] - ref_logits).abs().max())
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
    pad = model.generation_config.pad_token_id
    while len(new_tokens) > len(ref_tokens) and new_tokens and new_tokens[-1] == pad:
        new_tokens.pop()
    return VerificationReport(diff, ids_match, new_tokens == ref_tokens, ref_tokens, new_tokens)


# ------------------------------------------------------------------------------------------------ CLI
class OneLineErrorParser(argparse.ArgumentParser):
    """`argparse` whose usage errors are one `error:` line on stderr (exit status 2), like every other refusal."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="deepstack-convert",
        description="Convert an original DeepStack checkpoint (Hub id or directory) to a Transformers repository.",
    )
    parser.add_argument("source", help="Hub repo id (e.g. menglc/deepstack-l-vicuna-7b) or local original-format directory")
    parser.add_argument("output_dir", help="where the converted model goes (must be empty unless --overwrite)")
    parser.add_argument("--dtype", choices=sorted(DTYPE_CHOICES), help="output dtype (default: the checkpoint's)")
    parser.add_argument(
        "--clamp-fp16",
        action="store_true",
        help="with --dtype float16: clamp values beyond +-65504 (and accept tiny values flushed to 0) instead of "
        "refusing the conversion; the counts are reported",
    )
    parser.add_argument("--vision-tower", help="CLIP tower (Hub id or directory) overriding config.json's mm_vision_tower")
    parser.add_argument(
        "--vision-weights",
        choices=("auto", "checkpoint", "tower"),
        default="auto",
        help="CLIP weights: auto = the original loader's rule (the checkpoint's copy iff unfreeze_mm_vision_tower), "
        "checkpoint = the checkpoint's copy, tower = the mm_vision_tower weights",
    )
    parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="largest output shard (default 5GB)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty OUTPUT_DIR (never one that is, contains or lies inside the source or the vision "
        "tower, nor one that is or contains the current directory)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="compare logits and greedy tokens with an independent implementation on the original weights "
        f"(fails above {VERIFY_TOLERANCE:g}); streamed layer by layer, so it needs about twice the largest shard "
        "in RAM",
    )
    parser.add_argument("--verify-tokens", type=int, default=8, help="greedy tokens compared by --verify (default 8)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the result with create_repo + upload_folder")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--dry-run", action="store_true", help="with --push-to-hub: only list what would be uploaded")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO, format="%(message)s")
    if args.dry_run and not args.push_to_hub:
        print("error: --dry-run only applies to --push-to-hub", file=sys.stderr)
        return 2
    try:
        result = convert_checkpoint(
            args.source,
            args.output_dir,
            dtype=args.dtype,
            vision_tower=args.vision_tower,
            vision_weights=args.vision_weights,
            overwrite=args.overwrite,
            clamp_fp16=args.clamp_fp16,
            max_shard_size=args.max_shard_size,
            verify=args.verify,
            verify_tokens=args.verify_tokens,
            push_to_hub=args.push_to_hub,
            dry_run=args.dry_run,
            private=args.private,
            progress=not (args.no_progress or args.quiet),
        )
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the disk or the network failed while writing or uploading: one line too
        print(f"error: {os_error_reason(error)}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"Converted {args.source} -> {result.output_dir} ({len(result.files)} files)")
        print(
            f"  vocab {result.vocab_size}, <image> id {result.image_token_id}, CLIP weights from "
            f"{'the checkpoint copy' if result.use_checkpoint_vision else 'the mm_vision_tower'}, "
            f"suppress_tokens {result.suppress_tokens[:1]}..{result.suppress_tokens[-1:]}"
        )
        if result.cast_report:
            print(f"  {result.cast_report.summary()}")
        if result.verification:
            print(f"  verify: {result.verification.summary()}")
    if args.push_to_hub:
        from .hub_upload import format_listing

        if args.dry_run:
            print(format_listing(args.push_to_hub, result.uploaded))
        else:
            print(f"Uploaded {len(result.uploaded)} files to https://huggingface.co/{args.push_to_hub}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
