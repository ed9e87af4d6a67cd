"""Upload a converted model directory to the Hugging Face Hub (or list what would be uploaded)."""

from __future__ import annotations

from pathlib import Path


def files_to_upload(folder: str | Path) -> list[tuple[str, int]]:
    """(relative path, size in bytes) of every file `upload_folder` would send, sorted."""
    folder = Path(folder)
    return sorted(
        (path.relative_to(folder).as_posix(), path.stat().st_size)
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, dry_run: bool = False,
                commit_message: str = "Upload DeepStack model converted to Transformers") -> list[tuple[str, int]]:
    """`create_repo` + `upload_folder`; with `dry_run` nothing touches the network and the file list is returned."""
    files = files_to_upload(folder)
    if dry_run:
        return files
    from huggingface_hub import create_repo, upload_folder

    from .source_checkpoint import hub_timeout, hub_timeout_seconds

    with hub_timeout(hub_timeout_seconds()):  # a Hub that stops answering fails the upload instead of hanging it
        create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=commit_message)
    return files


def format_listing(repo_id: str, files: list[tuple[str, int]]) -> str:
    total = sum(size for _, size in files)
    lines = [f"Would upload {len(files)} files ({total / 1e6:.1f} MB) to https://huggingface.co/{repo_id}:"]
    lines += [f"  {name}  ({size:,} bytes)" for name, size in files]
    return "\n".join(lines)


__all__ = ["files_to_upload", "format_listing", "push_to_hub"]
