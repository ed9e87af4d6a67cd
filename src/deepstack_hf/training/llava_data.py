"""LLaVA-format training data (the original's JSON) as a `datasets.Dataset` in TRL's conversational format.

The original's JSON is a list of samples::

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                       {"from": "gpt", "value": "The bus is white and red."}, ...]}

`load_llava_dataset` turns every sample into one row::

    {"id": "000000033471",
     "messages": [{"role": "user", "content": [{"type": "image", "text": None},
                                               {"type": "text", "text": "What are the colors of the bus?"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "The bus is white and red."}]}, ...],
     "images": [<the image file>]}

As in the original (`preprocess_multimodal`), the `<image>` markers of a human turn are moved to its front: the
turn's text loses them and is stripped, and one image item per marker precedes it (the chat templates render an
image item as `<image>\\n`). A leading `gpt` turn is dropped, as the original does. `image` may also be a list of
files (several images per sample; the original takes one); markers and files are matched in reading order.

Every sample is checked before training starts; a bad one raises a `BadSampleError` naming its `id` and the
problem, or, with `skip_bad_samples=True`, is left out and counted in a warning.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_MARKER = "<image>"
ROLES = {"human": "user", "gpt": "assistant"}
SHOWN_PROBLEMS = 20  # bad samples named one by one in the skip warning

logger = logging.getLogger(__name__)


class BadSampleError(ValueError):
    """A training sample that cannot be trained on as written; the message names its `id` and the problem."""

    def __init__(self, sample_id: str, problem: str):
        super().__init__(f"Sample {sample_id}: {problem}")
        self.sample_id = sample_id
        self.problem = problem


def sample_name(record, index: int) -> str:
    """`id 'x'` for a record with an id, else its position in the file."""
    if isinstance(record, dict) and isinstance(record.get("id"), (str, int)):
        return f"id {record['id']!r}"
    return f"#{index} (no id)"


def llava_record_to_row(record, index: int, image_folder: Path, check_images: bool = True) -> dict:
    """One sample of the original's JSON -> `{"id", "messages", "images"}` (image paths); `BadSampleError` if bad.

    Args:
        record: the sample (`id`, optional `image`, `conversations`).
        index: its position in the file (named when it has no `id`).
        image_folder: the folder its `image` paths are relative to.
        check_images: open every image file's header (a missing or unreadable file is bad).
    """
    name = sample_name(record, index)
    if not isinstance(record, dict):
        raise BadSampleError(name, f"is a {type(record).__name__}, not an object with 'conversations'.")
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise BadSampleError(name, "'conversations' is missing or not a list.")
    for position, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise BadSampleError(name, f"turn {position} is not an object with a string 'value'.")
        if turn.get("from") not in ROLES:
            raise BadSampleError(
                name, f"turn {position} is from {turn.get('from')!r}; expected 'human' or 'gpt'."
            )
    if turns and turns[0]["from"] == "gpt":  # the original skips a leading gpt turn
        turns = turns[1:]
    if not turns:
        raise BadSampleError(name, "has an empty conversation (no human turn followed by a gpt answer).")
    for position, turn in enumerate(turns):
        expected = "human" if position % 2 == 0 else "gpt"
        if turn["from"] != expected:
            raise BadSampleError(name, f"turns must alternate human, gpt, ...; turn {position} is from {turn['from']!r}.")
    if turns[-1]["from"] != "gpt":
        raise BadSampleError(name, "ends with a human turn that has no gpt answer.")

    images = image_paths(record, name, image_folder, check_images)
    markers = sum(turn["value"].count(IMAGE_MARKER) for turn in turns if turn["from"] == "human")
    if any(IMAGE_MARKER in turn["value"] for turn in turns if turn["from"] == "gpt"):
        raise BadSampleError(name, f"a gpt turn contains {IMAGE_MARKER}; images belong to human turns.")
    if markers != len(images):
        raise BadSampleError(name, f"has {markers} {IMAGE_MARKER} marker(s) but {len(images)} image(s).")
    messages = [{"role": ROLES[turn["from"]], "content": turn_content(turn["value"])} for turn in turns]
    return {"id": str(record.get("id", f"#{index}")), "messages": messages, "images": images}


def turn_content(value: str) -> list[dict]:
    """A turn's text -> content items: one image item per `<image>` marker, then the text without the markers
    (stripped, as the original does when it moves the marker to the front; untouched when there is none)."""
    count = value.count(IMAGE_MARKER)
    if count:
        value = value.replace(IMAGE_MARKER, "").strip()
    return [{"type": "image", "text": None}] * count + [{"type": "text", "text": value}]


def image_paths(record: dict, name: str, image_folder: Path, check_images: bool) -> list[str]:
    """The sample's image files (absolute paths), each checked to exist and to open as an image."""
    files = record.get("image")
    if files is None:
        return []
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list) or not all(isinstance(file, str) and file for file in files):
        raise BadSampleError(name, "'image' must be a file name or a list of file names.")
    paths = []
    for file in files:
        path = (image_folder / file).resolve()
        if not path.is_file():
            raise BadSampleError(name, f"image file {file!r} not found in {str(image_folder)!r}.")
        if check_images:
            try:
                with Image.open(path) as image:  # reads the header only
                    image.size
            except (UnidentifiedImageError, OSError) as error:
                raise BadSampleError(name, f"image file {file!r} is not a readable image ({error}).") from None
        paths.append(str(path))
    return paths


def load_llava_dataset(
    json_path: str | os.PathLike,
    image_folder: str | os.PathLike | None = None,
    skip_bad_samples: bool = False,
    check_images: bool = True,
    decode_images: bool = False,
):
    """Read the original's LLaVA-format JSON into a `datasets.Dataset` in TRL's conversational format.

    Args:
        json_path: the JSON file (a list of samples, see the module docstring).
        image_folder: the folder the samples' `image` paths are relative to; defaults to the JSON file's folder.
        skip_bad_samples: leave bad samples out (counted and named in a warning) instead of raising.
        check_images: open every image file's header now, so that a missing or unreadable file is reported before
            training starts (a file whose data is cut short is only found when it is decoded, by the collator).
        decode_images: `False` (default): the `images` column holds `datasets.Image(decode=False)` values (the
            path), decoded by [`DeepStackDataCollator`], which names the sample of a corrupt file. `True`: PIL images
            on access (what TRL's collators expect).

    Returns:
        A `datasets.Dataset` with columns `id` (string), `messages` (list of `{"role", "content"}`, `content` a list
        of `{"type": "image" | "text", "text"}`) and `images` (list of images, one per image item, in order).

    Raises:
        BadSampleError: the first bad sample (unless `skip_bad_samples`).
        ValueError: the file is not a JSON list.
    """
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature
    from datasets import List as ListFeature

    json_path = Path(json_path)
    folder = Path(image_folder) if image_folder is not None else json_path.parent
    with open(json_path, encoding="utf-8") as file:
        records = json.load(file)
    if not isinstance(records, list):
        raise ValueError(f"{json_path} must hold a JSON list of samples, got a {type(records).__name__}.")
    rows, skipped = [], []
    for index, record in enumerate(records):
        try:
            rows.append(llava_record_to_row(record, index, folder, check_images))
        except BadSampleError as error:
            if not skip_bad_samples:
                raise
            skipped.append(error)
    if skipped:
        shown = "; ".join(str(error) for error in skipped[:SHOWN_PROBLEMS])
        more = f"; and {len(skipped) - SHOWN_PROBLEMS} more" if len(skipped) > SHOWN_PROBLEMS else ""
        logger.warning(f"Skipped {len(skipped)} bad sample(s) of {len(records)} in {json_path}: {shown}{more}")
    content = ListFeature({"type": Value("string"), "text": Value("string")})
    features = Features(
        {
            "id": Value("string"),
            "messages": ListFeature({"role": Value("string"), "content": content}),
            "images": ListFeature(ImageFeature(decode=decode_images)),
        }
    )
    return Dataset.from_list(rows, features=features)


__all__ = ["BadSampleError", "IMAGE_MARKER", "load_llava_dataset", "llava_record_to_row"]
