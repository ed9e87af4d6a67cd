"""Videos as IG-VLM image grids: frame sampling, tiling, decoding, the processor and the chat templates.

Independent expectations: the frame indices are written out by hand from IG-VLM's rule (`k * floor(T / 6)`, and
`floor(k * T / 6)` below 6 frames, docs/video.md); the grid is tiled here by hand; synthetic videos written with
PyAV carry each frame's number as 12 black / white blocks, read back from every grid cell (`synthetic_video.py`);
decoded frames are compared with plain PyAV decoding every frame in order; a video in the text must give exactly
the ids, pixels and generated tokens of its hand-made grid given as an image.
"""

import http.server
import io
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepstack_hf import DeepStackForConditionalGeneration, DeepStackImageProcessor, DeepStackProcessor
from deepstack_hf import DeepStackVideoProcessor
from deepstack_hf.chat_templates import PHI3_INSTRUCT_TEMPLATE, VICUNA_V1_TEMPLATE
from deepstack_hf.conversion.tiny_sentencepiece import train_tiny_sentencepiece
from deepstack_hf.tokenization import tokenizer_from_sentencepiece
from synthetic_video import decode_every_frame, numbered_frame, read_frame_number, write_numbered_video

from conftest import TINY_IMAGE_SIZE, TINY_PATCH_SIZE, tiny_deepstack_config

WIDTH, HEIGHT = 64, 48  # frames of the synthetic videos
AV_REASON = "PyAV is not installed (pip install 'deepstack-hf[video]')"


@pytest.fixture(scope="module")
def av():
    return pytest.importorskip("av", reason=AV_REASON)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tokenizer_from_sentencepiece(train_tiny_sentencepiece(tmp_path_factory.mktemp("spm") / "tiny.model"))


def make_processor(tokenizer, template=VICUNA_V1_TEMPLATE, hd_layout=False, **video_settings):
    image_processor = DeepStackImageProcessor(
        crop_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, hd_layout=hd_layout
    )
    video_processor = DeepStackVideoProcessor(**video_settings)
    return DeepStackProcessor(image_processor, tokenizer, video_processor, chat_template=template)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return make_processor(tokenizer)


def array_video(frame_count, width=40, height=30, seed=0):
    """`(T, H, W, 3)` uint8: frame `i` carries its number and some noise of its own."""
    rng = np.random.default_rng(seed)
    frames = [numbered_frame(i, width, height) // 2 + rng.integers(0, 128, (height, width, 3), dtype=np.uint8)
              for i in range(frame_count)]
    return np.stack(frames)


def hand_grid(frames, per_row):
    """The grid by hand: frames row-major, `per_row` to a row, white after the last one (equal sizes here)."""
    height, width = frames[0].shape[:2]
    rows = -(-len(frames) // per_row)
    grid = np.full((rows * height, per_row * width, 3), 255, dtype=np.uint8)
    for index, frame in enumerate(frames):
        top, left = (index // per_row) * height, (index % per_row) * width
        grid[top : top + height, left : left + width] = frame
    return grid


def cell_numbers(grid, rows=3, per_row=2, height=HEIGHT, width=WIDTH, turn=0):
    """The frame number in every cell of a grid, each cell first turned `turn` quarter turns counter-clockwise."""
    return [
        read_frame_number(np.rot90(grid[r * height : (r + 1) * height, c * width : (c + 1) * width], turn))
        for r in range(rows)
        for c in range(per_row)
    ]


def grid_of(processor, video, **kwargs):
    return processor.video_processor(video, **kwargs)["video_grids"][0]


# ----------------------------------------------------------------------------------- sampling and tiling (arrays)
# IG-VLM: k * floor(T / 6); below 6 frames floor(k * T / 6) (every frame, in order, some twice).
HAND_INDICES = {
    1: [0, 0, 0, 0, 0, 0],
    3: [0, 0, 1, 1, 2, 2],
    5: [0, 0, 1, 2, 3, 4],
    6: [0, 1, 2, 3, 4, 5],
    7: [0, 1, 2, 3, 4, 5],
    11: [0, 1, 2, 3, 4, 5],
    12: [0, 2, 4, 6, 8, 10],
    100: [0, 16, 32, 48, 64, 80],
}


@pytest.mark.parametrize("frame_count", sorted(HAND_INDICES))
def test_array_video_grid_is_igvlm_grid(processor, frame_count):
    video = array_video(frame_count)
    out = processor.video_processor(video, return_metadata=True)
    assert out["video_metadata"][0].frames_indices == HAND_INDICES[frame_count]
    np.testing.assert_array_equal(out["video_grids"][0], hand_grid([video[i] for i in HAND_INDICES[frame_count]], 2))


def test_frames_as_tensor_and_pil_list_give_the_same_grid(processor):
    video = array_video(9)
    expected = hand_grid([video[i] for i in [0, 1, 2, 3, 4, 5]], 2)
    np.testing.assert_array_equal(grid_of(processor, torch.from_numpy(video)), expected)
    np.testing.assert_array_equal(grid_of(processor, [Image.fromarray(frame) for frame in video]), expected)


def test_options_num_frames_and_frames_per_row(processor):
    video = array_video(20)
    # 4 frames: k * 5; round(sqrt(4)) = 2 to a row
    four = [video[i] for i in (0, 5, 10, 15)]
    np.testing.assert_array_equal(grid_of(processor, video, num_frames=4), hand_grid(four, 2))
    # 3 to a row: 2 rows, the last with one frame and two white cells
    grid = grid_of(processor, video, num_frames=4, frames_per_row=3)
    np.testing.assert_array_equal(grid, hand_grid([video[i] for i in (0, 5, 10, 15)], 3))
    assert (grid[30:, 40:] == 255).all()
    # 9 frames: floor(20 / 9) = 2, 3 to a row; a single frame is the frame itself
    nine = [video[2 * k] for k in range(9)]
    np.testing.assert_array_equal(grid_of(processor, video, num_frames=9), hand_grid(nine, 3))
    np.testing.assert_array_equal(grid_of(processor, video, num_frames=1), video[0])
    # settings saved on the processor apply by default
    np.testing.assert_array_equal(
        grid_of(make_processor(processor.tokenizer, num_frames=4, frames_per_row=4), video),
        hand_grid([video[i] for i in (0, 5, 10, 15)], 4),
    )


def test_frames_of_different_sizes_are_resized_to_the_smallest(processor):
    frames = [Image.new("RGB", (40, 30), (200, 0, 0)), Image.new("RGB", (50, 20), (0, 200, 0))]
    grid = grid_of(processor, frames, do_sample_frames=False, frames_per_row=2)
    assert grid.shape == (20, 80, 3)  # cells of the smallest width (40) and the smallest height (20)
    np.testing.assert_array_equal(grid[:, :40], np.full((20, 40, 3), (200, 0, 0)))
    np.testing.assert_array_equal(grid[:, 40:], np.full((20, 40, 3), (0, 200, 0)))


def test_do_sample_frames_false_tiles_every_frame(processor):
    video = array_video(4)
    np.testing.assert_array_equal(grid_of(processor, video, do_sample_frames=False), hand_grid(list(video), 2))


def test_bad_options_and_inputs_are_refused(processor):
    with pytest.raises(ValueError, match="fps"):
        processor.video_processor(array_video(8), fps=2)
    with pytest.raises(ValueError, match="num_frames must be at least 1"):
        processor.video_processor(array_video(8), num_frames=0)
    with pytest.raises(ValueError, match="frames_per_row must be at least 1"):
        DeepStackVideoProcessor(frames_per_row=0)
    with pytest.raises(ValueError, match="Unsupported video"):
        processor.video_processor(np.zeros((8, 8, 3), dtype=np.uint8))  # a single image, not a video


def test_missing_pyav_names_the_extra(processor, tmp_path, monkeypatch):
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` fails, as without PyAV
    with pytest.raises(ImportError, match=r"deepstack-hf\[video\]"):
        processor.video_processor(str(tmp_path / "clip.mp4"))
    np.testing.assert_array_equal(grid_of(processor, array_video(6)), hand_grid(list(array_video(6)), 2))


# ----------------------------------------------------------------------------------------------- decoded videos
def write(path, frame_count, **kwargs):
    write_numbered_video(path, frame_count, width=kwargs.pop("width", WIDTH), height=kwargs.pop("height", HEIGHT),
                         **kwargs)
    return str(path)


@pytest.mark.parametrize("frame_count", [3, 5, 6, 7, 12])
def test_short_videos(av, processor, tmp_path, frame_count):
    path = write(tmp_path / "clip.mp4", frame_count)
    assert cell_numbers(grid_of(processor, path)) == HAND_INDICES.get(frame_count, [0, 2, 4, 6, 8, 10])


@pytest.mark.parametrize("gop_size", [25, 400], ids=["seeks", "one-key-frame"])
def test_long_video_decodes_the_sampled_frames(av, processor, tmp_path, gop_size):
    path = write(tmp_path / "long.mp4", 400, gop_size=gop_size)
    out = processor.video_processor(path, return_metadata=True)
    expected = [0, 66, 132, 198, 264, 330]
    assert out["video_metadata"][0].frames_indices == expected
    assert out["video_metadata"][0].total_num_frames == 400
    assert cell_numbers(out["video_grids"][0]) == expected
    every = decode_every_frame(path)  # the sampled frames are bit-identical to plain in-order decoding
    np.testing.assert_array_equal(out["video_grids"][0], hand_grid([every[i] for i in expected], 2))


@pytest.mark.parametrize(("container_format", "suffix"), [("mp4", "mp4"), ("matroska", "mkv"), ("mpegts", "ts"),
                                                          ("avi", "avi")])
def test_containers_decode_the_sampled_frames(av, processor, tmp_path, container_format, suffix):
    """Seeking to key frames in every common container; MPEG-TS seeks by byte position and can land past the
    target, so the decoder steps back a key frame."""
    path = write(tmp_path / f"clip.{suffix}", 150, gop_size=10, container_format=container_format)
    grid = grid_of(processor, path)
    expected = [0, 25, 50, 75, 100, 125]
    assert cell_numbers(grid) == expected
    every = decode_every_frame(path)
    np.testing.assert_array_equal(grid, hand_grid([every[i] for i in expected], 2))


def test_frames_larger_than_pillows_limit_are_refused(av, processor, tmp_path, monkeypatch):
    path = write(tmp_path / "big.mp4", 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", WIDTH * HEIGHT - 1)
    with pytest.raises(ValueError, match=r"big\.mp4.* frames of 64x48 pixels, more than Pillow's limit"):
        processor.video_processor(path)


def test_variable_frame_rate_counts_frames(av, processor, tmp_path):
    gaps = [10, 90, 40, 5, 200, 33, 70]  # milliseconds between frames, irregular
    stamps = np.cumsum([0] + [gaps[i % len(gaps)] for i in range(29)]).tolist()
    path = write(tmp_path / "vfr.mp4", 30, timestamps_ms=stamps)
    assert cell_numbers(grid_of(processor, path)) == [0, 5, 10, 15, 20, 25]


@pytest.mark.parametrize("degrees", [-90, 90, 180])
def test_rotation_metadata_turns_frames_upright(av, processor, tmp_path, degrees):
    path = write(tmp_path / "rotated.mp4", 12, display_rotation=degrees)  # counter-clockwise, as a phone records
    with av.open(path) as container:  # the stored frames are landscape and say how to turn them
        assert next(container.decode(video=0)).rotation % 360 == degrees % 360
    turns = degrees // 90
    grid = grid_of(processor, path)
    height, width = (WIDTH, HEIGHT) if turns % 2 else (HEIGHT, WIDTH)
    assert grid.shape == (3 * height, 2 * width, 3)  # a quarter turn makes the cells portrait
    assert cell_numbers(grid, height=height, width=width, turn=-turns) == [0, 2, 4, 6, 8, 10]
    every = decode_every_frame(path)
    np.testing.assert_array_equal(grid, hand_grid([np.rot90(every[i], turns) for i in (0, 2, 4, 6, 8, 10)], 2))


def test_portrait_video(av, processor, tmp_path):
    path = write(tmp_path / "portrait.mp4", 13, width=48, height=80)
    grid = grid_of(processor, path)
    assert grid.shape == (3 * 80, 2 * 48, 3)
    assert cell_numbers(grid, height=80, width=48) == [0, 2, 4, 6, 8, 10]


def test_stream_without_timestamps_is_decoded_in_order(av, processor, tmp_path):
    path = write(tmp_path / "raw.h264", 20, container_format="h264")  # an elementary stream: no timestamps
    assert cell_numbers(grid_of(processor, path)) == [0, 3, 6, 9, 12, 15]


def test_bytes_file_objects_and_paths_agree(av, processor, tmp_path):
    path = write(tmp_path / "clip.mkv", 14, container_format="matroska")
    expected = grid_of(processor, path)
    assert cell_numbers(expected) == [0, 2, 4, 6, 8, 10]
    data = Path(path).read_bytes()
    np.testing.assert_array_equal(grid_of(processor, data), expected)
    np.testing.assert_array_equal(grid_of(processor, Path(path)), expected)
    with open(path, "rb") as file:
        np.testing.assert_array_equal(grid_of(processor, file), expected)
    np.testing.assert_array_equal(grid_of(processor, io.BytesIO(data)), expected)


def test_unreadable_and_empty_videos_name_the_file(av, processor, tmp_path):
    with pytest.raises(ValueError, match=r"Video 'no/such/video\.mp4' is not an existing file or an http"):
        processor.video_processor("no/such/video.mp4")
    (tmp_path / "notes.mp4").write_text("not a video at all")
    with pytest.raises(ValueError, match=r"notes\.mp4.*could not be read as a video"):
        processor.video_processor(str(tmp_path / "notes.mp4"))
    with pytest.raises(ValueError, match=r"The video bytes \(18 bytes\) could not be read as a video"):
        processor.video_processor(b"not a video at all")
    (tmp_path / "zero.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match=r"zero\.mp4.*could not be read as a video"):
        processor.video_processor(str(tmp_path / "zero.mp4"))
    with pytest.raises(ValueError, match=r"empty\.avi.* contains no frames"):
        processor.video_processor(write(tmp_path / "empty.avi", 0, container_format="avi"))
    with pytest.raises(ValueError, match=r"empty\.mp4.* has no video stream"):  # MP4 drops a track without samples
        processor.video_processor(write(tmp_path / "empty.mp4", 0))


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def loopback_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving `tmp_path`."""
    handler = lambda *args: _Files(*args, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_url_on_loopback(av, processor, tmp_path, loopback_server):
    path = write(tmp_path / "clip.mp4", 9)
    grid = grid_of(processor, f"{loopback_server}/clip.mp4")
    assert cell_numbers(grid) == [0, 1, 2, 3, 4, 5]
    np.testing.assert_array_equal(grid, grid_of(processor, path))
    with pytest.raises(ValueError, match=r"Could not download 'http://127\.0\.0\.1:\d+/missing\.mp4': HTTP 404"):
        processor.video_processor(f"{loopback_server}/missing.mp4")


# ------------------------------------------------------------------------------------------------ the processor
def test_video_in_text_equals_its_grid_as_image(tokenizer):
    video = array_video(8)
    grid = Image.fromarray(hand_grid([video[i] for i in range(6)], 2))
    for hd_layout in (False, True):
        processor = make_processor(tokenizer, hd_layout=hd_layout)
        with_video = processor(videos=[video], text=["USER: <video>\nWhat happens? ASSISTANT:"], return_tensors="pt")
        with_image = processor(images=[grid], text=["USER: <image>\nWhat happens? ASSISTANT:"], return_tensors="pt")
        assert with_video.keys() == with_image.keys() == {"input_ids", "attention_mask", "pixel_values", "image_sizes"}
        for key in with_image:
            torch.testing.assert_close(with_video[key], with_image[key], rtol=0, atol=0)


def test_generate_gives_the_tokens_of_the_grid(tokenizer):
    processor = make_processor(tokenizer, hd_layout=True)
    config = tiny_deepstack_config(hd_layout=True, image_token_id=processor.image_token_id)
    torch.manual_seed(0)
    model = DeepStackForConditionalGeneration(config).eval()
    video = array_video(10, seed=3)
    grid = Image.fromarray(hand_grid([video[i] for i in (0, 1, 2, 3, 4, 5)], 2))
    with_video = processor(videos=video, text="USER: <video>\nWhat happens? ASSISTANT:", return_tensors="pt")
    with_image = processor(images=grid, text="USER: <image>\nWhat happens? ASSISTANT:", return_tensors="pt")
    tokens = [model.generate(**inputs, max_new_tokens=6, do_sample=False) for inputs in (with_video, with_image)]
    torch.testing.assert_close(tokens[0], tokens[1], rtol=0, atol=0)


def test_images_and_several_videos_keep_reading_order(processor):
    first, second = array_video(6, seed=1), array_video(13, seed=2)
    picture = Image.fromarray(array_video(1, width=50, height=20, seed=3)[0])
    grids = [Image.fromarray(hand_grid(list(first), 2)),
             Image.fromarray(hand_grid([second[2 * k] for k in range(6)], 2))]
    text = ["A <video> then <image> and <video> end", "only text"]
    with_videos = processor(images=[picture], videos=[first, second], text=text, padding=True)
    as_images = processor(images=[grids[0], picture, grids[1]], text=[t.replace("<video>", "<image>") for t in text],
                          padding=True)
    assert with_videos["input_ids"] == as_images["input_ids"]
    np.testing.assert_array_equal(with_videos["pixel_values"], as_images["pixel_values"])
    # one list of videos per prompt, as apply_chat_template passes them
    per_prompt = processor(videos=[[first], [second]], text=["<video> a", "b <video>"], padding=True)
    flat = processor(images=grids, text=["<image> a", "b <image>"], padding=True)
    assert per_prompt["input_ids"] == flat["input_ids"]
    np.testing.assert_array_equal(per_prompt["pixel_values"], flat["pixel_values"])
    # without text the grids follow the images
    np.testing.assert_array_equal(processor(images=[picture], videos=[first])["pixel_values"],
                                  processor(images=[picture, grids[0]])["pixel_values"])


def test_counts_that_do_not_match_are_refused(processor):
    video = array_video(6)
    with pytest.raises(ValueError, match=r"2 <video> marker\(s\) but 1 video\(s\)"):
        processor(videos=[video], text="<video> and <video>")
    with pytest.raises(ValueError, match=r"1 <video> marker\(s\) but 0 video\(s\)"):
        processor(text="what is in <video>?")
    with pytest.raises(ValueError, match=r"1 <image> marker\(s\) but 0 image\(s\)"):
        processor(videos=[video], text="<video> <image>")
    with pytest.raises(ValueError, match=r"Prompt 0 contains 2 <video> marker\(s\) but 1 video\(s\)"):
        processor(videos=[[video], [video]], text=["<video> <video>", "none"])


def test_video_processor_is_saved_and_loaded(tmp_path, tokenizer):
    from transformers import AutoProcessor

    from deepstack_hf._compat import AutoVideoProcessor

    processor = make_processor(tokenizer, num_frames=4, frames_per_row=4)
    tiny_deepstack_config().save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded.video_processor) is DeepStackVideoProcessor
    assert (loaded.video_processor.num_frames, loaded.video_processor.frames_per_row) == (4, 4)
    assert loaded.video_token == "<video>"
    video_processor = AutoVideoProcessor.from_pretrained(tmp_path)
    assert type(video_processor) is DeepStackVideoProcessor and video_processor.num_frames == 4
    video = array_video(8)
    np.testing.assert_array_equal(grid_of(loaded, video), hand_grid([video[i] for i in (0, 2, 4, 6)], 4))
    assert DeepStackProcessor(processor.image_processor, tokenizer).video_processor.num_frames == 6  # the default


@pytest.mark.skipif(
    not hasattr(__import__("transformers").ProcessorMixin, "_resolve_subprocessors"),
    reason="this Transformers loads a primary video processor from its own file only (docs/video.md)",
)
def test_a_repo_saved_before_videos_gets_the_default_video_processor(tmp_path, tokenizer):
    import json

    from transformers import AutoProcessor

    tiny_deepstack_config().save_pretrained(tmp_path)
    make_processor(tokenizer).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    del saved["video_processor"], saved["video_token"]  # as the converter wrote it before videos
    (tmp_path / "processor_config.json").write_text(json.dumps(saved))
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded.video_processor) is DeepStackVideoProcessor and loaded.video_processor.num_frames == 6
    video = array_video(7)
    np.testing.assert_array_equal(grid_of(loaded, video), hand_grid(list(video[:6]), 2))


# ---------------------------------------------------------------------------------------------- chat templates
def test_both_templates_render_video_parts(tokenizer):
    content = [{"type": "video", "path": "a.mp4"}, {"type": "image"}, {"type": "video", "url": "https://x/b.mp4"},
               {"type": "text", "text": "Compare."}]
    messages = [{"role": "user", "content": content}]
    vicuna = make_processor(tokenizer).apply_chat_template(messages, add_generation_prompt=True)
    assert vicuna.endswith("USER: <video>\n<image>\n<video>\nCompare. ASSISTANT:")
    phi3 = make_processor(tokenizer, PHI3_INSTRUCT_TEMPLATE).apply_chat_template(messages, add_generation_prompt=True)
    assert phi3.endswith("<|user|>\n<video>\n<image>\n<video>\nCompare.<|end|>\n<|assistant|>\n")


@pytest.mark.parametrize("template", [VICUNA_V1_TEMPLATE, PHI3_INSTRUCT_TEMPLATE], ids=["vicuna_v1", "phi3"])
def test_apply_chat_template_loads_and_samples_videos(av, tokenizer, tmp_path, template):
    processor = make_processor(tokenizer, template)
    first, second = write(tmp_path / "first.mp4", 7), write(tmp_path / "second.mkv", 24, container_format="matroska")
    picture = Image.fromarray(numbered_frame(77, 30, 30))
    messages = [
        {"role": "user", "content": [{"type": "video", "path": first}, {"type": "image", "image": picture},
                                     {"type": "text", "text": "What changed?"}]},
        {"role": "assistant", "content": "Nothing."},
        {"role": "user", "content": [{"type": "video", "video": second}, {"type": "text", "text": "And here?"}]},
    ]
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    grids = [Image.fromarray(hand_grid([frames[i] for i in indices], 2)) for frames, indices in (
        (decode_every_frame(first), [0, 1, 2, 3, 4, 5]), (decode_every_frame(second), [0, 4, 8, 12, 16, 20]))]
    text = processor.apply_chat_template(messages, add_generation_prompt=True).replace("<video>", "<image>")
    expected = processor(images=[grids[0], picture, grids[1]], text=text)
    assert out["input_ids"] == expected["input_ids"]
    np.testing.assert_array_equal(out["pixel_values"], expected["pixel_values"])
    # a video part without a source renders a marker with no video: both counts are named
    messages[2]["content"][0] = {"type": "video"}
    with pytest.raises(ValueError, match=r"2 <video> marker\(s\) but 1 video\(s\)"):
        processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)



def test_apply_chat_template_passes_video_options(processor):
    video = array_video(20)
    messages = [{"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": "Hi?"}]}]
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        processor_kwargs={"num_frames": 4, "frames_per_row": 4})
    text = processor.apply_chat_template(messages, add_generation_prompt=True).replace("<video>", "<image>")
    expected = processor(images=[Image.fromarray(hand_grid([video[i] for i in (0, 5, 10, 15)], 4))], text=text)
    assert out["input_ids"] == expected["input_ids"]
    np.testing.assert_array_equal(out["pixel_values"], expected["pixel_values"])

def test_memory_benchmark_runs_tiny(av, tmp_path):
    """benchmarks/video_memory.py end to end on a 2-second video (no memory bound is asserted here)."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "video_memory.py"
    spec = importlib.util.spec_from_file_location("video_memory", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--seconds", "2", "--width", "64", "--height", "48", "--fps", "10", "--modes", "bytes"])
    run = result["runs"]["bytes"]
    assert result["video"]["frames"] == 20 and run["total_frames"] == 20
    assert run["frames_indices"] == [0, 3, 6, 9, 12, 15] and run["grid_shape"] == [144, 128, 3]
    assert run["peak_rss_after_bytes"] >= run["peak_rss_before_bytes"] > 0
