"""End-to-end demo: original-format checkpoint -> converter -> `pipeline("image-text-to-text")`.

    python -m deepstack_hf.testing_utils.demo       # offline, about a minute on 2 CPU cores (`make demo`)
    python -m deepstack_hf.testing_utils.demo --source menglc/deepstack-l-vicuna-7b   # the real model (GPU)

(`python -m deepstack_hf.demo`, its old path, runs it too.)

Offline, it builds a small DeepStack checkpoint in the ORIGINAL layout (random weights, a SentencePiece
tokenizer trained on the spot, a tiny CLIP tower), converts it with the same code as `deepstack-convert`
(including `--verify` against the independent original implementation), draws a picture and asks the converted
model a question through the standard Transformers pipeline. With random weights the answer is gibberish; the
point is that every step of the real workflow runs. `--source` converts and runs a real checkpoint instead.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path


def draw_demo_image():
    """A synthetic 'photo' drawn in code: sky, sun, a house and a tree."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (640, 400), (135, 190, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 300, 640, 400), fill=(80, 160, 70))
    draw.ellipse((500, 30, 590, 120), fill=(250, 210, 40))
    draw.rectangle((150, 190, 330, 320), fill=(200, 70, 60))
    draw.polygon([(130, 190), (240, 110), (350, 190)], fill=(120, 60, 40))
    draw.rectangle((220, 250, 260, 320), fill=(90, 50, 30))
    draw.rectangle((430, 220, 450, 320), fill=(100, 70, 40))
    draw.ellipse((390, 150, 490, 250), fill=(40, 130, 50))
    return image


WORK_DIR_MARKER = ".deepstack-demo"
DEMO_OUTPUTS = ("original", "converted", "demo_image.png")


def prepare_work_dir(work_dir: Path) -> Path:
    """Create WORK_DIR (marked as the demo's), or reuse an empty one or one an earlier demo created.

    Only a folder holding the demo's marker file is cleaned, and then only of what the demo writes there
    (`DEMO_OUTPUTS`); any other existing, non-empty folder is refused: the demo never deletes what it did not create.
    """
    from deepstack_hf.conversion.errors import ConversionError

    if work_dir.is_symlink() or (work_dir.exists() and not work_dir.is_dir()):
        raise ConversionError(f"--work-dir {work_dir} exists and is not a plain directory; choose another one.")
    if work_dir.is_dir() and any(work_dir.iterdir()):
        if not (work_dir / WORK_DIR_MARKER).is_file():
            raise ConversionError(
                f"--work-dir {work_dir} exists, is not empty and was not created by the demo; choose a new or empty "
                "folder (the demo never deletes files it did not create)."
            )
        for name in DEMO_OUTPUTS:
            path = work_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / WORK_DIR_MARKER).write_text(
        "Created by `python -m deepstack_hf.testing_utils.demo`; it may clean its own outputs here.\n"
    )
    return work_dir


def _step(number: int, text: str) -> None:
    print(f"\n[{number}] {text}", flush=True)


def run_demo(
    work_dir: str | Path = "demo_output",
    source: str | None = None,
    question: str = "What is shown in this image?",
    max_new_tokens: int = 20,
    hd: bool = False,
    verify: bool = True,
) -> str:
    """Run the demo and return the generated answer."""
    import torch

    import deepstack_hf  # noqa: F401  (registers DeepStack with the Auto classes and pipelines)
    from transformers import pipeline

    from deepstack_hf.conversion.convert_deepstack_to_hf import convert_checkpoint

    start = time.time()
    work_dir = prepare_work_dir(Path(work_dir))
    converted = work_dir / "converted"

    if source is None:
        from deepstack_hf.testing_utils.synthetic_checkpoint import build_synthetic_checkpoint

        _step(1, f"Building a small DeepStack checkpoint in the original layout under {work_dir / 'original'}")
        synthetic = build_synthetic_checkpoint(
            work_dir / "original", text_model_type="llama", hd=hd, sharded=True, dtype=torch.bfloat16,
            num_hidden_layers=6, hidden_size=64, tokenizer_vocab_size=512,
        )
        source_path = str(synthetic.checkpoint)
        for path in sorted(synthetic.checkpoint.iterdir()):
            print(f"    {path.name}  ({path.stat().st_size:,} bytes)")
        dtype, device_map = None, None
    else:
        _step(1, f"Using the original checkpoint {source}")
        source_path = source
        dtype = torch.float16 if torch.cuda.is_available() else torch.float32
        device_map = "auto" if torch.cuda.is_available() else None
        verify = False  # a 7B reference forward takes many minutes on CPU; run deepstack-convert --verify for that

    _step(2, f"Converting to the Transformers format in {converted}" + (" (with --verify)" if verify else ""))
    result = convert_checkpoint(
        source_path,
        converted,
        dtype=None if source is None else ("float16" if dtype == torch.float16 else "float32"),
        verify=verify,
        progress=True,
    )
    for name in result.files:
        print(f"    {name}")
    if result.verification:
        print(f"    verification against the original implementation: {result.verification.summary()}")

    _step(3, "Drawing an image and loading pipeline('image-text-to-text')")
    image = draw_demo_image()
    image_path = work_dir / "demo_image.png"
    image.save(image_path)
    print(f"    image: {image_path} ({image.width}x{image.height})")
    pipe = pipeline("image-text-to-text", model=str(converted), dtype=dtype, device_map=device_map)

    _step(4, f"Question: {question}")
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
    outputs = pipe(text=messages, max_new_tokens=max_new_tokens, return_full_text=False)
    answer = outputs[0]["generated_text"]
    print(f"    Answer: {answer!r}")
    if source is None:
        print("    (random weights: the answer is meaningless; run with --source menglc/deepstack-l-vicuna-7b for the real model)")
    print(f"\nDone in {time.time() - start:.1f} s.")
    return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deepstack_hf.testing_utils.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--work-dir",
        default="demo_output",
        help="scratch directory: new, empty, or one an earlier demo created (default ./demo_output)",
    )
    parser.add_argument("--source", help="convert and run this original checkpoint (Hub id or directory) instead")
    parser.add_argument("--question", default="What is shown in this image?")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--hd", action="store_true", help="offline demo: build a DeepStack-L-HD checkpoint")
    parser.add_argument("--no-verify", action="store_true", help="skip the comparison with the original implementation")
    args = parser.parse_args(argv)
    from deepstack_hf.conversion.errors import ConversionError

    try:
        run_demo(args.work_dir, args.source, args.question, args.max_new_tokens, args.hd, not args.no_verify)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
