"""An independent, plain-torch implementation of the ORIGINAL DeepStack model, straight from its original files.

Used by `deepstack-convert --verify` and by the tests to check converted models. It is written from the
original's rules as docs/design.md states them and deliberately shares no code with this package's modeling,
image processing, processor, grid maths or tokenizer conversion: its own header reader use aside, everything here (prompt ids with SentencePiece, image
preprocessing with PIL/numpy, CLIP ViT, projector, Llama / Phi-3 decoders with rotary embeddings, RMSNorm,
attention and MLP, stack construction and injection) is re-derived, so that agreement with the converted
Transformers model is evidence and not a tautology.

Variants: DeepStack-L (plain and HD), the `2xsample` square grid, and DeepStack-V (`deepstack_vit` with
`lsvit_start_layer_S`: stacks into the ViT's layers, the 5 extra layers of the checkpoint when S >= L).

Scope: batch size 1 (like the original), any number of images per prompt (each image's stacks are added at that
image's own visual positions: docs/design.md, "Where the stacks are added"), fp32 compute, no KV cache (greedy decoding recomputes the
full sequence, which is mathematically the same as the original's cached decode), rotary scaling `None` or
`linear`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..conversion.streaming_safetensors import read_header, read_tensor

IMAGE_PLACEHOLDER = -200  # the original's IMAGE_TOKEN_INDEX
WORD_BOUNDARY = "\u2581"

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def original_prompt(model_type: str, question: str, num_images: int = 1) -> str:
    """The original conversation templates (docs/design.md, "Prompts"), one user turn, generation prompt."""
    body = "<image>\n" * num_images + question
    if model_type == "deepstack_phi":
        return f"<|system|>\nYou are a helpful AI assistant.<|end|>\n<|user|>\n{body}<|end|>\n<|assistant|>\n"
    return f"{VICUNA_SYSTEM} USER: {body} ASSISTANT:"


# --------------------------------------------------------------------------------------------- tokenization
class SlowStyleTokenizer:
    """Ids of the original slow `LlamaTokenizer(legacy=False)`, computed with SentencePiece directly.

    The text is split on the tokenizer's added tokens (honouring their `lstrip`/`rstrip`); the first text piece
    gets SentencePiece's word-boundary prefix, text after an added token does not; a text that starts with an
    added token gets a lone word-boundary piece before it unless that token is one of the slow tokenizer's
    special tokens (the named ones and tokenizer_config.json's `additional_special_tokens`); BOS is prepended
    when `add_bos_token` (default true).
    """

    def __init__(self, checkpoint_dir: Path):
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2

        model_bytes = (checkpoint_dir / "tokenizer.model").read_bytes()
        self.with_prefix = spm.SentencePieceProcessor(model_proto=model_bytes)
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(model_bytes)
        proto.normalizer_spec.add_dummy_prefix = False
        self.without_prefix = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        config_path = checkpoint_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        self.add_bos = config.get("add_bos_token", True) is not False
        self.bos_id = self.with_prefix.bos_id()
        # added token content -> (id, lstrip, rstrip)
        self.added: dict[str, tuple[int, bool, bool]] = {}
        for key, entry in (config.get("added_tokens_decoder") or {}).items():
            self.added[entry["content"]] = (int(key), bool(entry.get("lstrip")), bool(entry.get("rstrip")))
        for piece_id in (self.with_prefix.unk_id(), self.with_prefix.bos_id(), self.with_prefix.eos_id()):
            if piece_id >= 0:
                self.added.setdefault(self.with_prefix.id_to_piece(piece_id), (piece_id, False, False))
        named = [config.get(name) for name in ("bos_token", "eos_token", "unk_token", "pad_token")]
        named += config.get("additional_special_tokens") or []
        self.special_tokens = {entry["content"] if isinstance(entry, dict) else entry for entry in named if entry}
        self.vocab_size = max([self.with_prefix.get_piece_size() - 1] + [v[0] for v in self.added.values()]) + 1

    def _split(self, text: str) -> list[tuple[str, int | None]]:
        """(text, None) and (token, id) parts, longest added token first at each position."""
        parts: list[tuple[str, int | None]] = []
        order = sorted(self.added, key=len, reverse=True)
        buffer, position = "", 0
        while position < len(text):
            match = next((tok for tok in order if text.startswith(tok, position)), None)
            if match is None:
                buffer += text[position]
                position += 1
                continue
            token_id, lstrip, rstrip = self.added[match]
            if lstrip:
                buffer = buffer.rstrip()
            if buffer:
                parts.append((buffer, None))
            buffer = ""
            parts.append((match, token_id))
            position += len(match)
            if rstrip:
                while position < len(text) and text[position].isspace():
                    position += 1
        if buffer:
            parts.append((buffer, None))
        return parts

    def encode(self, text: str) -> list[int]:
        text = text.replace(WORD_BOUNDARY, " ")
        ids = [self.bos_id] if self.add_bos else []
        parts = self._split(text)
        if parts and parts[0][1] is not None and parts[0][0] not in self.special_tokens:
            ids.append(self.with_prefix.piece_to_id(WORD_BOUNDARY))
        for index, (part, token_id) in enumerate(parts):
            if token_id is not None:
                ids.append(token_id)
            elif index == 0:
                ids.extend(self.with_prefix.encode(part))
            else:
                ids.extend(self.without_prefix.encode(part))
        return ids

    def prompt_ids(self, prompt: str) -> list[int]:
        """Chunk-wise ids: each `<image>`-separated chunk on its own, BOS kept on the first chunk only."""
        chunks = [self.encode(chunk) for chunk in prompt.split("<image>")]
        skip = 1 if self.add_bos else 0
        ids = list(chunks[0])
        for chunk in chunks[1:]:
            ids.append(IMAGE_PLACEHOLDER)
            ids.extend(chunk[skip:])
        return ids


# --------------------------------------------------------------------------------------------- preprocessing
@dataclass
class ClipPreprocessing:
    crop: int
    edge: int
    mean: np.ndarray
    std: np.ndarray
    scale: float
    resample: int

    @classmethod
    def from_file(cls, path: Path) -> ClipPreprocessing:
        raw = json.loads(path.read_text())

        def edge_of(value, key):
            return int(value[key] if isinstance(value, dict) and key in value else
                       (value.get("height") if isinstance(value, dict) else value))

        crop = edge_of(raw.get("crop_size", 224), "height")
        return cls(
            crop=crop,
            edge=edge_of(raw.get("size", crop), "shortest_edge"),
            mean=np.asarray(raw.get("image_mean", [0.48145466, 0.4578275, 0.40821073]), dtype=np.float32),
            std=np.asarray(raw.get("image_std", [0.26862954, 0.26130258, 0.27577711]), dtype=np.float32),
            scale=float(raw.get("rescale_factor", 1 / 255)),
            resample=int(raw.get("resample", 3)),
        )

    def to_pixels(self, crop: Image.Image) -> torch.Tensor:
        """CLIP's processing of one view: shortest edge resize, center crop, rescale, normalise -> (3, S, S)."""
        crop = crop.convert("RGB")
        width, height = crop.size
        if min(width, height) != self.edge:
            short, long = (width, height) if width <= height else (height, width)
            new_long = int(self.edge * long / short)
            crop = crop.resize((self.edge, new_long) if width <= height else (new_long, self.edge), self.resample)
        width, height = crop.size
        left, top = (width - self.crop) // 2, (height - self.crop) // 2
        if (width, height) != (self.crop, self.crop):
            crop = crop.crop((left, top, left + self.crop, top + self.crop))
        array = np.asarray(crop, dtype=np.float32) * np.float32(self.scale)
        array = (array - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def grid_for(width: int, height: int, num_crops: int, crop: int) -> tuple[int, int]:
    """LLaVA-NeXT best resolution over the w-major candidate grids (docs/design.md, "The crop grid"); returns (w, h)."""
    best, best_effective, best_waste = None, -1, None
    for w in range(1, num_crops + 1):
        for h in range(1, num_crops // w + 1):
            if w == h == 1:
                continue
            cw, ch = w * crop, h * crop
            s = min(cw / width, ch / height)
            effective = min(int(width * s) * int(height * s), width * height)
            waste = cw * ch - effective
            if effective > best_effective or (effective == best_effective and waste < best_waste):
                best, best_effective, best_waste = (w, h), effective, waste
    return best


def _tiles(image: Image.Image, size: int) -> list[Image.Image]:
    width, height = image.size
    return [image.crop((x, y, x + size, y + size)) for y in range(0, height, size) for x in range(0, width, size)]


def original_views(image: Image.Image, num_crops: int, hd: bool, prep: ClipPreprocessing, square: bool = False):
    """All views of one image in the original order, as pixels (V, 3, S, S), and its grid (w, h).

    `square` is the original's `2xsample`: the grid is (sqrt N, sqrt N) whatever the image's shape.
    """
    image = image.convert("RGB")
    if square:
        w = h = int(math.isqrt(num_crops))
    else:
        w, h = grid_for(image.width, image.height, num_crops, prep.crop)
    canvas = (w * prep.crop, h * prep.crop)
    views = [image.resize((prep.edge, prep.edge))] + _tiles(image.resize(canvas), prep.crop)
    if hd:
        s = int(math.isqrt(num_crops))
        views += _tiles(image.resize((prep.edge * s, prep.edge * s)), prep.crop)
        big = _tiles(image.resize((canvas[0] * s, canvas[1] * s)), prep.crop)  # row-major over (h*s, w*s)
        for cell_row in range(h):
            for cell_col in range(w):
                for sub_row in range(s):
                    for sub_col in range(s):
                        views.append(big[(cell_row * s + sub_row) * (w * s) + cell_col * s + sub_col])
    return torch.stack([prep.to_pixels(view) for view in views]), (w, h)


# --------------------------------------------------------------------------------------------- numerics
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def causal_attention(q, k, v) -> torch.Tensor:
    """q (H, L, d), k/v (Hkv, L, d) -> (L, H*d); grouped heads share k/v."""
    groups = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0)
    scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
    length = q.shape[1]
    scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    out = scores.softmax(-1) @ v
    return out.transpose(0, 1).reshape(length, -1)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


VISION_ACTS = {"quick_gelu": quick_gelu, "gelu": lambda x: F.gelu(x), "gelu_new": lambda x: F.gelu(x, approximate="tanh")}


# --------------------------------------------------------------------------------------------- the model
class OriginalDeepStack:
    """The original DeepStack forward (docs/design.md) on the original checkpoint files.

    Args:
        checkpoint_dir: the original-format checkpoint directory.
        vision_tower_dir: the CLIP directory (`mm_vision_tower`); defaults to the config's value.
        vision_weights: `"auto"` (the original loader's rule), `"checkpoint"` or `"tower"`.
        weight_dtype: if given, every weight is rounded to this dtype before the fp32 computation (to compare
            with a converted model saved in that dtype).
    """

    def __init__(self, checkpoint_dir, vision_tower_dir=None, vision_weights="auto", weight_dtype=None):
        self.dir = Path(checkpoint_dir)
        self.config = json.loads((self.dir / "config.json").read_text())
        cfg = self.config
        self.model_type = cfg["model_type"]
        self.tower_dir = Path(vision_tower_dir or cfg["mm_vision_tower"])
        tower_cfg = json.loads((self.tower_dir / "config.json").read_text())
        if tower_cfg.get("model_type") == "clip":
            tower_cfg = {**(tower_cfg.get("vision_config") or {}), **(tower_cfg.get("vision_config_dict") or {})}
        self.vision_cfg = tower_cfg
        self.prep = ClipPreprocessing.from_file(self.tower_dir / "preprocessor_config.json")
        self.tokenizer = SlowStyleTokenizer(self.dir)
        self.weight_dtype = weight_dtype

        self.num_crops = int(cfg.get("num_crops") or 4)
        self.hd = bool(cfg.get("is_anyres_deepstack") or False)
        self.sampling = cfg.get("deepstack_sampling") or "2d"
        self.start = int(cfg.get("deepstack_start_id", 1) if cfg.get("deepstack_start_id") is not None else 1)
        self.interval = int(cfg.get("deepstack_interval") or 1)
        self.select_layer = int(cfg.get("mm_vision_select_layer", -2) if cfg.get("mm_vision_select_layer") is not None else -2)
        self.projector_type = cfg.get("mm_projector_type") or "linear"
        self.ablations = str(cfg.get("deepstack_args_for_ablation") or "").split("+")
        self.square = "2xsample" in self.ablations

        self.tensors = {}
        index = self.dir / "model.safetensors.index.json"
        files = (
            sorted({self.dir / f for f in json.loads(index.read_text())["weight_map"].values()})
            if index.is_file()
            else sorted(self.dir.glob("*.safetensors"))
        )
        for path in files:
            self.tensors.update(read_header(path))
        unfreeze = bool(cfg.get("unfreeze_mm_vision_tower") or False)
        use_checkpoint = unfreeze if vision_weights == "auto" else vision_weights == "checkpoint"
        if use_checkpoint:
            self.vision_prefix, self.vision_tensors = "model.vision_tower.vision_tower.vision_model.", self.tensors
        else:
            tower_tensors = {}
            tower_index = self.tower_dir / "model.safetensors.index.json"
            tower_files = (
                sorted({self.tower_dir / f for f in json.loads(tower_index.read_text())["weight_map"].values()})
                if tower_index.is_file()
                else sorted(self.tower_dir.glob("*.safetensors"))
            )
            for path in tower_files:
                tower_tensors.update(read_header(path))
            self.vision_prefix, self.vision_tensors = "vision_model.", tower_tensors

    # ---- weights
    def _load(self, records, name):
        """One weight in fp32, read from its file at every use and never kept (the forward streams the weights,
        so peak memory is the largest tensor, not a model copy)."""
        value = read_tensor(records[name])
        if self.weight_dtype is not None and value.is_floating_point():
            value = value.to(self.weight_dtype)
        return value.to(torch.float32)

    def w(self, name):
        return self._load(self.tensors, name)

    def vw(self, name):
        return self._load(self.vision_tensors, self.vision_prefix + name)

    def has(self, name):
        return name in self.tensors

    # ---- vision
    def encode_views(self, pixels: torch.Tensor) -> torch.Tensor:
        """(V, 3, S, S) -> (V, p*p, hidden): CLIP hidden state `select_layer`, CLS dropped, projector applied."""
        layers = int(self.vision_cfg.get("num_hidden_layers", 12))
        x = self.clip_embed(pixels)
        states = [x]
        wanted = self.select_layer % (layers + 1)
        for i in range(wanted):
            x = self.clip_layer(x, self.vw, f"encoder.layers.{i}.")
            states.append(x)
        features = states[wanted][:, 1:]
        return self.project(features)

    def clip_embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(V, 3, S, S) -> (V, 1 + p*p, C): patch + class + position embeddings, then `pre_layrnorm`."""
        eps = float(self.vision_cfg.get("layer_norm_eps", 1e-5))
        patch = self.vw("embeddings.patch_embedding.weight")
        x = F.conv2d(pixels, patch, stride=patch.shape[-1]).flatten(2).transpose(1, 2)
        cls = self.vw("embeddings.class_embedding").expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], 1) + self.vw("embeddings.position_embedding.weight")[None]
        return F.layer_norm(x, x.shape[-1:], self.vw("pre_layrnorm.weight"), self.vw("pre_layrnorm.bias"), eps)

    def clip_layer(self, x: torch.Tensor, weight, p: str) -> torch.Tensor:
        """One pre-norm CLIP encoder layer whose weights are `weight(p + name)`; (V, T, C) -> (V, T, C)."""
        vc = self.vision_cfg
        heads = int(vc.get("num_attention_heads", 12))
        eps = float(vc.get("layer_norm_eps", 1e-5))
        act = VISION_ACTS[vc.get("hidden_act", "quick_gelu")]
        h = F.layer_norm(x, x.shape[-1:], weight(p + "layer_norm1.weight"), weight(p + "layer_norm1.bias"), eps)
        views, length, dim = h.shape
        d = dim // heads

        def proj(name, t):
            return F.linear(t, weight(p + f"self_attn.{name}.weight"), weight(p + f"self_attn.{name}.bias"))

        q, k, v = (proj(n, h).view(views, length, heads, d).transpose(1, 2) for n in ("q_proj", "k_proj", "v_proj"))
        attn = ((q @ k.transpose(-1, -2)) / math.sqrt(d)).softmax(-1) @ v
        x = x + proj("out_proj", attn.transpose(1, 2).reshape(views, length, dim))
        h = F.layer_norm(x, x.shape[-1:], weight(p + "layer_norm2.weight"), weight(p + "layer_norm2.bias"), eps)
        h = F.linear(act(F.linear(h, weight(p + "mlp.fc1.weight"), weight(p + "mlp.fc1.bias"))),
                     weight(p + "mlp.fc2.weight"), weight(p + "mlp.fc2.bias"))
        return x + h

    # ---- DeepStack-V: the stacks go into the ViT's layers
    def vit_split_layer(self) -> int | None:
        """S of `deepstack_vit` + `lsvit_start_layer_S`; `None` without `deepstack_vit` (DeepStack-L)."""
        if "deepstack_vit" not in self.ablations:
            return None
        splits = [item for item in self.ablations if item.startswith("lsvit_start_layer_")]
        if len(splits) != 1:
            raise ValueError("The original runs deepstack_vit only with exactly one lsvit_start_layer_S.")
        return int(splits[0].rsplit("_", 1)[1])

    def vit_image_features(self, image: Image.Image, split: int):
        """DeepStack-V (docs/design.md, "DeepStack-V"): (sequence tokens (p*p, hidden), no decoder stacks) of one image.

        The grid is always (sqrt N, sqrt N) (what `2xsample` gives; the original without it only runs on images
        whose best grid is already square).
        """
        pixels, _ = original_views(image, self.num_crops, False, self.prep, square=True)
        depth = int(self.vision_cfg.get("num_hidden_layers", 12))
        extra = 5 if split >= depth else 0
        select = -1 if extra else self.select_layer

        def layer(i, x):
            if i < depth:
                return self.clip_layer(x, self.vw, f"encoder.layers.{i}.")
            return self.clip_layer(x, self.w, f"model.vision_tower.post_encoder.{i - depth}.")

        n = int(math.isqrt(self.num_crops))
        x = self.clip_embed(pixels)
        p = int(math.isqrt(x.shape[1] - 1))
        stacks, states = [], []
        for i in range(depth + extra):
            if i == split:
                mosaic = x[1:, 1:].reshape(n, n, p, p, -1).permute(0, 2, 1, 3, 4).reshape(n * p, n * p, -1)
                stacks = [mosaic[a::n, b::n].reshape(p * p, -1) for a in range(n) for b in range(n)]
                x = x[:1]
            if 0 <= i - split < len(stacks):
                x = torch.cat([x[:, :1], x[:, 1:] + stacks[i - split]], 1)
            states.append(x[:1])
            x = layer(i, x)
        states.append(x[:1])
        return self.project(states[select][0, 1:]), []

    def project(self, x):
        if self.projector_type == "linear":
            return F.linear(x, self.w("model.mm_projector.weight"), self.w("model.mm_projector.bias"))
        depth = int(self.projector_type[3:].split("x")[0])
        for i in range(depth):
            if i:
                x = F.gelu(x)
            x = F.linear(x, self.w(f"model.mm_projector.{2 * i}.weight"), self.w(f"model.mm_projector.{2 * i}.bias"))
        return x

    # ---- features and stacks for one image
    def image_features(self, image: Image.Image):
        """(sequence tokens (T, hidden), [K stacks, each (T, hidden)]) of one image."""
        split = self.vit_split_layer()
        if split is not None:
            return self.vit_image_features(image, split)
        pixels, (w, h) = original_views(image, self.num_crops, self.hd, self.prep, self.square)
        feats = self.encode_views(pixels)
        p = int(math.isqrt(feats.shape[1]))
        dim = feats.shape[-1]
        if not self.hd:
            base = feats[0]
            local = feats[1 : 1 + w * h].view(h, w, p, p, dim).permute(0, 2, 1, 3, 4).reshape(h * p, w * p, dim)
            if self.sampling == "2d":
                stacks = [local[i::h, j::w].reshape(-1, dim) for i in range(h) for j in range(w)]
            elif self.sampling == "1d":
                flat = local.reshape(-1, dim)
                stacks = [flat[i :: w * h] for i in range(w * h)]
            elif self.sampling == "grid":
                stacks = [local[i * p : (i + 1) * p, j * p : (j + 1) * p].reshape(-1, dim) for i in range(h) for j in range(w)]
            else:
                raise ValueError(f"deepstack_sampling {self.sampling!r} not implemented by the reference")
            stacks += [torch.zeros_like(base)] * (self.num_crops - len(stacks))
            return base, stacks
        newline = self.w("model.image_newline")
        s = int(math.isqrt(self.num_crops))
        n_seq = 1 + w * h

        def lay_out(view_maps):  # view_maps (n_seq, p, p, dim) -> the sequence layout with newlines
            base = view_maps[0].reshape(-1, dim)
            grid = view_maps[1:].view(h, w, p, p, dim).permute(0, 2, 1, 3, 4).reshape(h * p, w * p, dim)
            grid = torch.cat([grid, newline.expand(h * p, 1, dim)], dim=1).reshape(-1, dim)
            return torch.cat([base, grid])

        sequence = lay_out(feats[:n_seq].view(n_seq, p, p, dim))
        sub = feats[n_seq:].view(n_seq, s, s, p, p, dim).permute(0, 1, 3, 2, 4, 5).reshape(n_seq, s * p, s * p, dim)
        stacks = [lay_out(sub[:, a::s, b::s]) for a in range(s) for b in range(s)]
        return sequence, stacks

    # ---- decoder
    def logits(self, ids: list[int], images: list[Image.Image]) -> torch.Tensor:
        """(L, vocab) fp32 logits of a prompt whose `IMAGE_PLACEHOLDER`s stand for `images` in order."""
        cfg = self.config
        embed = self.w("model.embed_tokens.weight")
        pieces, positions, stacks_per_image, cursor, text = [], [], [], 0, []
        images = list(images)
        for token in ids + [None]:
            if token is None or token == IMAGE_PLACEHOLDER:
                if text:
                    pieces.append(embed[torch.tensor(text)])
                    cursor += len(text)
                    text = []
                if token is None:
                    break
                sequence, stacks = self.image_features(images.pop(0))
                pieces.append(sequence)
                positions.append(torch.arange(cursor, cursor + sequence.shape[0]))
                stacks_per_image.append(stacks)
                cursor += sequence.shape[0]
            else:
                text.append(token)
        x = torch.cat(pieces)
        length = x.shape[0]
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        d = int(cfg.get("head_dim") or hidden // heads)
        eps = float(cfg.get("rms_norm_eps", 1e-6))
        theta = float(cfg.get("rope_theta", 10000.0))
        pos = torch.arange(length, dtype=torch.float32)
        scaling = cfg.get("rope_scaling")
        if scaling:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind != "linear":
                raise ValueError(f"The reference implements rope_scaling None or 'linear', not {kind!r}.")
            pos = pos / float(scaling["factor"])
        inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
        angles = torch.outer(pos, inv_freq)
        angles = torch.cat([angles, angles], -1)
        cos, sin = angles.cos(), angles.sin()
        phi = self.model_type == "deepstack_phi"
        inject = {}
        num_stacks = len(stacks_per_image[0]) if stacks_per_image else 0
        for k in range(num_stacks):
            inject[self.start + k * self.interval] = k

        for i in range(int(cfg["num_hidden_layers"])):
            if i in inject and positions:
                k = inject[i]
                x = x.clone()
                for where, stacks in zip(positions, stacks_per_image):
                    x[where] = x[where] + stacks[k]
            p = f"model.layers.{i}."
            h = rms_norm(x, self.w(p + "input_layernorm.weight"), eps)
            if phi:
                qkv = F.linear(h, self.w(p + "self_attn.qkv_proj.weight"))
                q, k_, v = qkv.split([heads * d, kv_heads * d, kv_heads * d], -1)
            else:
                bias = bool(cfg.get("attention_bias"))
                q, k_, v = (
                    F.linear(h, self.w(p + f"self_attn.{n}.weight"), self.w(p + f"self_attn.{n}.bias") if bias else None)
                    for n in ("q_proj", "k_proj", "v_proj")
                )
            q = rotate(q.view(length, heads, d).transpose(0, 1), cos, sin)
            k_ = rotate(k_.view(length, kv_heads, d).transpose(0, 1), cos, sin)
            v = v.view(length, kv_heads, d).transpose(0, 1)
            attn = causal_attention(q, k_, v)
            o_bias = self.w(p + "self_attn.o_proj.bias") if self.has(p + "self_attn.o_proj.bias") else None
            x = x + F.linear(attn, self.w(p + "self_attn.o_proj.weight"), o_bias)
            h = rms_norm(x, self.w(p + "post_attention_layernorm.weight"), eps)
            if phi:
                gate, up = F.linear(h, self.w(p + "mlp.gate_up_proj.weight")).chunk(2, -1)
            else:
                gate, up = F.linear(h, self.w(p + "mlp.gate_proj.weight")), F.linear(h, self.w(p + "mlp.up_proj.weight"))
            x = x + F.linear(F.silu(gate) * up, self.w(p + "mlp.down_proj.weight"))
        x = rms_norm(x, self.w("model.norm.weight"), eps)
        head = self.w("lm_head.weight") if self.has("lm_head.weight") else embed
        # The original loader resizes the embeddings to the slow tokenizer's length: logits beyond it never exist.
        vocab = min(head.shape[0], self.tokenizer.vocab_size)
        return F.linear(x, head[:vocab])

    def greedy(self, ids: list[int], images: list[Image.Image], max_new_tokens: int, eos_ids=()) -> list[int]:
        """Greedy continuation (new token ids only), recomputing the full sequence at every step."""
        ids, new = list(ids), []
        for _ in range(max_new_tokens):
            token = int(self.logits(ids, images)[-1].argmax())
            new.append(token)
            ids.append(token)
            if token in eos_ids:
                break
        return new


__all__ = [
    "IMAGE_PLACEHOLDER",
    "OriginalDeepStack",
    "SlowStyleTokenizer",
    "grid_for",
    "original_prompt",
    "original_views",
]
