"""The converter's failure paths: hostile or careless sources, outputs, dtypes and networks.

Each test asserts the exact refusal (one line naming the field or file and what is allowed) and that nothing on
disk changed: the whole temporary tree (source, tower, output's parent) is listed before and after.
"""

import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from deepstack_hf.conversion import ConversionError, convert_checkpoint, main
from deepstack_hf.conversion import convert_deepstack_to_hf as converter
from deepstack_hf.conversion.streaming_safetensors import read_header, read_tensor, write_tensors
from deepstack_hf.testing_utils.synthetic_checkpoint import build_synthetic_checkpoint


def tree(root: Path) -> dict[str, tuple]:
    """Every path under `root` with its kind, size and content hash-free fingerprint (mtime, inode)."""
    listing = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        listing[path.relative_to(root).as_posix()] = (stat.S_IFMT(info.st_mode), info.st_size, info.st_mtime_ns)
    return listing


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    return build_synthetic_checkpoint(tmp_path_factory.mktemp("original") / "src", num_hidden_layers=5)


@pytest.fixture
def source(original, tmp_path):
    """A private copy of the checkpoint (its config still names the shared CLIP tower)."""
    target = tmp_path / "ckpt"
    shutil.copytree(original.checkpoint, target)
    return target


def refuse(source, output, match, **options):
    """Run a conversion that must fail with `match`, and check that the tree around it did not change."""
    root = Path(output).parent
    before = tree(root)
    with pytest.raises(ConversionError, match=match) as caught:
        convert_checkpoint(source, output, progress=False, **options)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600, message
    assert tree(root) == before
    return message


def set_config(source: Path, **changes):
    config = json.loads((source / "config.json").read_text())
    config.update(changes)
    (source / "config.json").write_text(json.dumps(config))


# ----------------------------------------------------------------------------------------------- confinement
def test_index_entries_outside_the_folder_are_refused(source, tmp_path):
    outside = tmp_path / "x.safetensors"
    shutil.copy(source / "model.safetensors", outside)
    index = {"weight_map": {name: "../x.safetensors" for name in read_header(source / "model.safetensors")}}
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    refuse(source, tmp_path / "out", r"file name '\.\./x\.safetensors' is not allowed; only plain file names")
    index["weight_map"] = {name: str(outside) for name in index["weight_map"]}
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    refuse(source, tmp_path / "out", r"is not allowed; only plain file names inside the folder")


def test_symlinks_leaving_the_folder_are_refused(source, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps(json.loads((source / "config.json").read_text())))
    (source / "config.json").unlink()
    (source / "config.json").symlink_to(secret)
    message = refuse(source, tmp_path / "out", r"config\.json links outside the folder")
    assert "deepstack" not in message  # nothing of the file's contents


def test_non_safetensors_shard_is_refused_without_echoing_it(source, tmp_path):
    (source / "model.safetensors").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 4)
    message = refuse(source, tmp_path / "out", r"not a safetensors file .*first 8 bytes are not a header length")
    assert "root" not in message.replace(str(tmp_path), "")
    assert str(int.from_bytes(b"root:x:0", "little")) not in message


def test_hub_cache_snapshot_with_blob_symlinks_converts(original, tmp_path):
    """The Hub cache layout: snapshots/<rev>/<file> -> ../../blobs/<hash>, all inside models--org--name."""
    repo = tmp_path / "hub" / "models--org--deepstack-tiny"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for index, path in enumerate(sorted(original.checkpoint.iterdir())):
        shutil.copy(path, blobs / f"blob{index}")
        (snapshot / path.name).symlink_to(Path("../../blobs") / f"blob{index}")
    result = convert_checkpoint(snapshot, tmp_path / "out", progress=False)
    assert "model.safetensors" in result.files
    # ... and a snapshot link that leaves the cache repo is still refused.
    (snapshot / "config.json").unlink()
    (tmp_path / "elsewhere.json").write_text("{}")
    (snapshot / "config.json").symlink_to(tmp_path / "elsewhere.json")
    refuse(snapshot, tmp_path / "out2", r"config\.json links outside the folder")


# ----------------------------------------------------------------------------------------------- config values
CONFIG_REFUSALS = [
    ({"mm_projector_type": "mlp99999999999x_gelu"},
     r"mm_projector_type='mlp99999999999x_gelu' is not allowed; the mlpNx_gelu depth N must be in \[1, 16\]"),
    ({"num_crops": 10**6}, r"num_crops=1000000 is not allowed; expected an integer in \[2, 64\]"),
    ({"num_crops": "abc"}, r"num_crops='abc' is not allowed; expected an integer in \[2, 64\]"),
    ({"num_crops": 4.0}, r"num_crops=4\.0 is not allowed; expected an integer"),
    ({"num_attention_heads": 0}, r"num_attention_heads=0 is not allowed; expected an integer in \[1, 1024\]"),
    ({"hidden_size": [32]}, r"hidden_size=\[32\] is not allowed"),
    ({"rope_theta": float("inf")}, r"rope_theta=inf is not allowed; expected a finite number"),
    ({"mm_vision_select_layer": 99},
     r"mm_vision_select_layer=99 is not allowed; the 3-layer vision tower has hidden states \[-4, 3\]"),
    ({"num_key_value_heads": 3}, r"num_attention_heads=4 is not a multiple of num_key_value_heads=3"),
    ({"tie_word_embeddings": "yes"}, r"tie_word_embeddings='yes' is not allowed; expected true or false"),
]


@pytest.mark.parametrize("changes, message", CONFIG_REFUSALS, ids=[next(iter(c)) for c, _ in CONFIG_REFUSALS])
def test_config_values_are_bounded(source, tmp_path, changes, message):
    set_config(source, **changes)
    start = time.time()
    refuse(source, tmp_path / "out", message)
    assert time.time() - start < 30


def test_huge_dimension_in_config_text_is_refused(source, tmp_path):
    text = (source / "config.json").read_text().replace('"hidden_size": 32', '"hidden_size": 1e400')
    (source / "config.json").write_text(text)
    refuse(source, tmp_path / "out", r"hidden_size=inf is not allowed; expected an integer in \[1, 65536\]")


@pytest.mark.parametrize("content, message", [
    ("[1, 2, 3]", r"config\.json must hold a JSON object, not a list"),
    ("[" * 100000 + "]" * 100000, r"config\.json does not parse: JSON nested too deeply"),
    ("\xff\xfe{}", r"config\.json does not parse"),
])
def test_malformed_config_json(source, tmp_path, content, message):
    (source / "config.json").write_bytes(content.encode("latin-1"))
    refuse(source, tmp_path / "out", message)


def test_zero_dimensional_embedding_is_refused(source, tmp_path):
    state = {name: read_tensor(record) for name, record in read_header(source / "model.safetensors").items()}
    state["model.embed_tokens.weight"] = torch.tensor(1.0, dtype=torch.bfloat16)
    write_tensors(source / "model.safetensors", state)
    refuse(source, tmp_path / "out", r"model\.embed_tokens\.weight must be a 2-D floating-point tensor, not BF16 of shape \(\)")


# ----------------------------------------------------------------------------------------------- output safety
@pytest.mark.parametrize("where", ["source", "parent of source", "inside source", "tower", "cwd"])
def test_overwrite_never_targets_the_source_the_tower_or_the_cwd(original, source, tmp_path, monkeypatch, where):
    target = {
        "source": source,
        "parent of source": tmp_path,
        "inside source": source / "sub",
        "tower": original.vision_tower,
        "cwd": tmp_path / "work",
    }[where]
    if where == "inside source":
        target.mkdir()
        (target / "file").write_text("x")
    if where == "cwd":
        target.mkdir()
        (target / "file").write_text("x")
        monkeypatch.chdir(target)
    relation = {"source": "is", "parent of source": "contains", "inside source": "lies inside", "tower": "is",
                "cwd": "is"}[where]
    what = {"tower": "the vision tower", "cwd": "the current directory"}.get(where, "the source checkpoint")
    tower_before = tree(original.vision_tower)
    refuse(source, target, rf"Output directory .* {relation} {what} \(", overwrite=True)
    assert tree(original.vision_tower) == tower_before


def test_second_conversion_to_a_claimed_output_fails_clearly(source, tmp_path):
    output = tmp_path / "out"
    (tmp_path / ".out.lock").write_text(json.dumps({"pid": os.getpid()}))
    refuse(source, output, rf"Another conversion \(pid {os.getpid()}\) is writing .*out; wait for it, or delete")


def test_leftovers_of_a_killed_run_are_cleaned_or_named(source, tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".out.lock").write_text(json.dumps({"pid": int(dead.stdout)}))
    (tmp_path / ".out.converting-abc").mkdir()
    (tmp_path / ".out.converting-abc" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / ".out.old-xyz").mkdir()
    (tmp_path / ".out.old-xyz" / "config.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="deepstack_hf.conversion"):
        convert_checkpoint(source, tmp_path / "out", progress=False)
    assert not (tmp_path / ".out.converting-abc").exists() and not (tmp_path / ".out.lock").exists()
    assert (tmp_path / ".out.old-xyz" / "config.json").read_text() == "{}"
    assert "interrupted --overwrite; it is kept" in caplog.text and "left by an interrupted conversion" in caplog.text


def test_files_appearing_in_the_output_during_a_conversion_are_kept(source, tmp_path, monkeypatch):
    output = tmp_path / "out"
    real_write = converter.write_plan

    def write_while_someone_creates_the_output(plan, directory, *args):
        report = real_write(plan, directory, *args)
        output.mkdir()
        (output / "theirs.txt").write_text("theirs")
        return report

    monkeypatch.setattr(converter, "write_plan", write_while_someone_creates_the_output)
    with pytest.raises(ConversionError, match=r"out was created or filled by someone else during the conversion"):
        convert_checkpoint(source, output, progress=False)
    assert [p.name for p in output.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]

    # With --overwrite, an output that changed since it was claimed is not replaced either.
    def write_while_someone_adds_a_file(plan, directory, *args):
        report = real_write(plan, directory, *args)
        (output / "late.txt").write_text("late")
        return report

    monkeypatch.setattr(converter, "write_plan", write_while_someone_adds_a_file)
    with pytest.raises(ConversionError, match=r"out changed during the conversion; nothing in it was replaced"):
        convert_checkpoint(source, output, progress=False, overwrite=True)
    assert sorted(p.name for p in output.iterdir()) == ["late.txt", "theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]


def test_overwrite_replaces_an_unchanged_output_and_output_gets_umask_permissions(source, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("old")
    old_mask = os.umask(0o027)
    try:
        convert_checkpoint(source, output, progress=False, overwrite=True)
    finally:
        os.umask(old_mask)
    assert not (output / "old.txt").exists() and (output / "config.json").is_file()
    assert stat.S_IMODE(output.stat().st_mode) == 0o750
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]


def test_symlinked_output_is_refused(source, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "real")
    refuse(source, tmp_path / "out", r"Output path .*out is a symbolic link; give the real directory")


# ----------------------------------------------------------------------------------------------- float16 range
def _with_values(source: Path, name: str, values: torch.Tensor):
    state = {key: read_tensor(record) for key, record in read_header(source / "model.safetensors").items()}
    flat = state[name].flatten().clone()
    flat[: values.numel()] = values.to(flat.dtype)
    state[name] = flat.reshape(state[name].shape)
    write_tensors(source / "model.safetensors", state)


def test_fp16_overflow_is_refused_naming_the_tensor_or_clamped_with_the_flag(source, tmp_path):
    name = "model.layers.1.mlp.down_proj.weight"
    _with_values(source, name, torch.tensor([1e5, -2e5]))
    refuse(source, tmp_path / "out", rf"Converting to float16 is unsafe: values beyond \+-65504 that would become inf "
           rf"in model\.language_model\.layers\.1\.mlp\.down_proj\.weight \(2 values\)\. .*--clamp-fp16", dtype="float16")
    result = convert_checkpoint(source, tmp_path / "out", progress=False, dtype="float16", clamp_fp16=True)
    converted = read_tensor(read_header(tmp_path / "out" / "model.safetensors")[f"model.language_model.{name[6:]}"])
    assert converted.flatten()[:2].tolist() == [65504.0, -65504.0] and converted.isfinite().all()
    assert result.cast_report.overflow[f"model.language_model.{name[6:]}"] == 2
    assert "2 values clamped" in result.cast_report.summary()


def test_fp16_underflow_of_a_whole_tensor_is_refused(source, tmp_path):
    name = "model.norm.weight"
    size = read_header(source / "model.safetensors")[name].numel
    _with_values(source, name, torch.full((size,), 1e-9))
    refuse(source, tmp_path / "out", r"more than 0\.1% of the non-zero values flush to 0 in "
           r"model\.language_model\.norm\.weight \(32 values\)", dtype="float16")


# ----------------------------------------------------------------------------------------------- network
def test_hub_download_that_never_answers_times_out(tmp_path, monkeypatch):
    from huggingface_hub import constants

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []
    threading.Thread(target=lambda: [accepted.append(server.accept()) for _ in range(8)], daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.5)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    start = time.time()
    try:
        refuse("org/deepstack-tiny", tmp_path / "out",
               r"Could not download Checkpoint 'org/deepstack-tiny' from the Hub: the Hub did not answer within 0\.5 s")
    finally:
        server.close()
    assert time.time() - start < 15
    assert accepted  # the request did reach the silent server


def test_cli_reports_the_refusal_on_one_line(source, tmp_path, capsys):
    set_config(source, num_crops=10**6)
    assert main([str(source), str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "num_crops=1000000 is not allowed" in err


# ----------------------------------------------------------------------------------------------- paths the user gave
def hub_cache_repo(cache: Path, repo_id: str, files: Path, **config_changes) -> Path:
    """`files` laid out as the Hub cache holds repo `repo_id` (refs/main -> snapshots/<rev>), config.json changed."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    shutil.copytree(files, snapshot)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    if config_changes:
        set_config(snapshot, **config_changes)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An offline Hub whose cache is `tmp_path / "cache"` (what `HF_HUB_OFFLINE=1` reads); cwd is `tmp_path`."""
    from huggingface_hub import constants

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    return cache


def test_a_hub_checkpoint_naming_a_local_tower_is_refused_and_an_explicit_tower_is_read(original, offline_hub, tmp_path):
    # The synthetic config names its tower by absolute local path, as a hostile repo would name any local folder.
    local_tower = str(original.vision_tower.resolve())
    hub_cache_repo(offline_hub, "org/deepstack-tiny", original.checkpoint)
    tower_before = tree(original.vision_tower)
    refuse("org/deepstack-tiny", tmp_path / "out",
           rf"The Hub checkpoint's config\.json names mm_vision_tower='{local_tower[:40]}.*', which is not a Hub repo id; "
           r"the converter never reads a local path that a downloaded file names\. Pass --vision-tower")
    assert tree(original.vision_tower) == tower_before
    # The same path given by the user is read; the card names the folder, never the machine's path.
    result = convert_checkpoint("org/deepstack-tiny", tmp_path / "out", vision_tower=local_tower, progress=False)
    card = (result.output_dir / "README.md").read_text()
    assert "the local CLIP folder `clip-tower`" in card and local_tower not in card and "base_model: org/deepstack-tiny" in card


def test_a_tower_named_by_a_hub_checkpoint_is_looked_up_on_the_hub_only(original, offline_hub, tmp_path):
    hub_cache_repo(offline_hub, "org/clip-tiny", original.vision_tower)
    hub_cache_repo(offline_hub, "org/deepstack-tiny", original.checkpoint, mm_vision_tower="org/clip-tiny")
    decoy = tmp_path / "org" / "clip-tiny"  # a local folder with the tower's name, in the current directory
    decoy.mkdir(parents=True)
    (decoy / "config.json").write_text('{"model_type": "not-clip"}')
    result = convert_checkpoint("org/deepstack-tiny", tmp_path / "out", progress=False)
    assert "`org/clip-tiny` (`vision_model.*`)" in (result.output_dir / "README.md").read_text()
    # a tower name that is no Hub id, relative or not, is refused the same way
    hub_cache_repo(offline_hub, "org/deepstack-rel", original.checkpoint, mm_vision_tower="./org/clip-tiny")
    refuse("org/deepstack-rel", tmp_path / "out2", r"names mm_vision_tower='\./org/clip-tiny', which is not a Hub repo id")


def _tower_copy(original, tmp_path, **preprocessor_changes) -> Path:
    tower = tmp_path / "tower"
    shutil.copytree(original.vision_tower, tower)
    preprocessor = json.loads((tower / "preprocessor_config.json").read_text())
    preprocessor.update(preprocessor_changes)
    (tower / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return tower


@pytest.mark.parametrize("changes, message", [
    ({"crop_size": {"height": 28, "width": 28}, "size": {"shortest_edge": 28}},
     r"preprocessor_config\.json crop_size=28 does not match config\.json image_size=56 \(patch_size=14\)"),
    ({"size": {"shortest_edge": 64}}, r"preprocessor_config\.json size=64 differs from crop_size=56"),
], ids=["crop-vs-image-size", "resize-edge"])
def test_tower_geometry_is_checked_against_its_preprocessing_before_writing(original, source, tmp_path, changes, message):
    tower = _tower_copy(original, tmp_path, **changes)
    refuse(source, tmp_path / "out", message, vision_tower=str(tower))


# ----------------------------------------------------------------------------------------------- one-line errors
@pytest.mark.parametrize("rope_scaling, message", [
    ({"type": "weird", "factor": 2.0}, r"rope_scaling type 'weird' is not supported; expected one of default, dynamic, "),
    ({"rope_type": "linear"}, r"config\.json gives an invalid DeepStack config: .*factor"),
    ({"rope_type": "linear", "factor": "x"}, r"config\.json gives a model that cannot be built: TypeError"),
], ids=["unknown-type", "missing-factor", "text-factor"])
def test_rope_scaling_errors_are_one_line(source, tmp_path, rope_scaling, message):
    set_config(source, rope_scaling=rope_scaling)
    refuse(source, tmp_path / "out", message)


def test_an_output_below_a_file_is_refused(source, tmp_path):
    (tmp_path / "afile").write_text("x")
    refuse(source, tmp_path / "afile" / "out", r"Output path .*afile/out cannot be created: .*afile is a file")
    refuse(source, tmp_path / "afile" / "a" / "b", r"cannot be created: .*afile is a file")


def test_an_unwritable_output_folder_is_one_error_line(source, tmp_path, monkeypatch, capsys):
    from deepstack_hf.conversion import output_claim

    real_open = os.open

    def refusing_open(path, *args, **kwargs):  # what a folder without write permission answers (root ignores modes)
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(output_claim.os, "open", refusing_open)
    refuse(source, tmp_path / "out", r"Cannot write the output .*out: Permission denied \(.*\.out\.lock\)")
    assert main([str(source), str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: Cannot write the output")


def test_a_disk_error_while_writing_is_one_error_line_and_leaves_nothing(source, tmp_path, monkeypatch, capsys):
    def full_disk(plan, directory, *args, **kwargs):
        (directory / "model.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device", str(directory / "model.safetensors"))

    monkeypatch.setattr(converter, "write_plan", full_disk)
    before = tree(tmp_path)
    assert main([str(source), str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: No space left on device (")
    assert tree(tmp_path) == before


# ----------------------------------------------------------------------------------------------- symlinked outputs
@pytest.mark.parametrize("spelling", ["out", "out/", "out/."])
def test_overwrite_of_a_symlinked_output_is_refused_and_its_target_untouched(source, tmp_path, spelling):
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("mine")
    (tmp_path / "out").symlink_to(real)
    before = tree(real)
    refuse(source, str(tmp_path / spelling), r"Output path .*out is a symbolic link; give the real directory",
           overwrite=True)
    assert tree(real) == before and (tmp_path / "out").is_symlink()


def test_an_output_ending_in_dotdot_is_refused(source, tmp_path):
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    refuse(source, str(tmp_path / "link" / "sub" / ".."), r"does not name a folder", overwrite=True)


def test_an_output_below_a_symlinked_folder_is_written_in_the_real_folder(source, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "out").mkdir()
    (tmp_path / "real" / "out" / "old.txt").write_text("old")
    result = convert_checkpoint(source, tmp_path / "link" / "out", progress=False, overwrite=True)
    assert result.output_dir == tmp_path.resolve() / "real" / "out"
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "out" / "config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["out"]  # no lock, staging or backup left


@pytest.mark.parametrize("argv, message", [
    (["--dtype", "float8"], "argument --dtype: invalid choice: 'float8'"),
    ([], "the following arguments are required: source, output_dir"),
])
def test_cli_usage_errors_are_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv if not argv or argv[0] != "--dtype" else ["src", "out", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err
