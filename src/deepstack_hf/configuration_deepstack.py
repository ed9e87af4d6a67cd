"""DeepStack configuration: a LLaVA-NeXT-style composite config plus the stacking layout."""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import CONFIG_MAPPING, AutoConfig, PreTrainedConfig
from transformers.activations import ACT2FN

from .grid_layout import check_num_crops, num_stacks, short_repr

MAX_PROJECTOR_DEPTH = 16


@strict
class DeepStackConfig(PreTrainedConfig):
    r"""
    Configuration of a DeepStack-L / DeepStack-L-HD model: CLIP vision tower, MLP projector, Llama-family
    decoder (Llama, Vicuna, Phi-3), and the rule that turns high-resolution crops into stacks that are added
    to the visual-token hidden states before early decoder layers. Defaults are those of the released
    `menglc/deepstack-l-vicuna-7b`.

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            CLIP vision config (defaults to CLIP ViT-L/14 at 336 pixels).
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Decoder config; any Llama-family `model_type` listed in `deepstack_hf.SUPPORTED_TEXT_MODELS`.
        image_token_id (`int`, *optional*, defaults to 32000):
            Placeholder id that the processor repeats once per visual token.
        projector_depth (`int`, *optional*, defaults to 2):
            Number of Linear layers in the projector (`mlp2x_gelu` is 2, `linear` is 1).
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation between projector layers.
        multimodal_projector_bias (`bool`, *optional*, defaults to `True`):
            Whether the projector's Linear layers have a bias.
        vision_feature_layer (`int`, *optional*, defaults to -2):
            CLIP hidden state that feeds the projector (`mm_vision_select_layer`).
        vision_feature_select_strategy (`str`, *optional*, defaults to `"default"`):
            `"default"` drops the CLS token (`patch`). Stacks need the square patch map, so `"full"`
            (`cls_patch`) is refused.
        num_crops (`int`, *optional*, defaults to 4):
            High-resolution crops per image; bounds the candidate grids.
        hd_layout (`bool`, *optional*, defaults to `False`):
            DeepStack-L-HD layout (`is_anyres_deepstack`): LLaVA-NeXT-style sequence with `image_newline`,
            stacks drawn from 2x-upsampled sub-crops.
        stack_sampling (`str`, *optional*, defaults to `"2d"`):
            How plain-layout stacks are drawn from the high-resolution map: `"2d"` (strided rows and columns,
            the released rule), `"1d"` (strided over the flattened map) or `"grid"` (one crop per stack).
            The HD layout only has `"2d"`.
        deepstack_layers (`list[int]`, *optional*):
            Decoder layer (0-based) that receives stack k, just before it runs. Defaults to
            `[1, 2, ..., K]` (original `deepstack_start_id=1`, `deepstack_interval=1`).
        image_seq_length (`int`, *optional*, defaults to 576):
            Tokens of one 336-pixel view: `(image_size // patch_size) ** 2`.
        tie_word_embeddings (`bool`, *optional*, defaults to `False`):
            Whether `lm_head` shares the input embedding matrix.
    """

    model_type = "deepstack"
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}
    default_vision_config = {
        "model_type": "clip_vision_model",
        "intermediate_size": 4096,
        "hidden_size": 1024,
        "patch_size": 14,
        "image_size": 336,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "vocab_size": 32000,
        "projection_dim": 768,
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 32000
    projector_depth: int = 2
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True
    vision_feature_layer: int = -2
    vision_feature_select_strategy: Literal["default", "full"] = "default"
    num_crops: int = 4
    hd_layout: bool = False
    stack_sampling: str = "2d"
    deepstack_layers: list[int] | None = None
    image_seq_length: int = 576
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        self.vision_config = _build_sub_config(self.vision_config, self.default_vision_config)
        self.text_config = _build_sub_config(self.text_config, {"model_type": "llama"})
        super().__post_init__(**kwargs)
        check_num_crops(self.num_crops)  # bounds num_stacks before the default layer list is built from it
        if self.deepstack_layers is None:
            self.deepstack_layers = list(range(1, 1 + self.num_stacks))
        self.deepstack_layers = [int(layer) for layer in self.deepstack_layers]
        self._check_vision_fields()
        self._check_stack_fields()

    @property
    def num_stacks(self) -> int:
        """Number of stacks K each image contributes."""
        return num_stacks(self.num_crops, self.hd_layout)

    @property
    def patches_per_side(self) -> int:
        """Side of one view's patch map (24 for CLIP-L/14 at 336 pixels)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    def _check_vision_fields(self):
        if self.vision_feature_select_strategy != "default":
            raise ValueError(
                f"vision_feature_select_strategy={self.vision_feature_select_strategy!r} is not supported: stacks "
                "are regrouped on the square patch map, which needs the CLS token dropped ('default')."
            )
        if self.vision_config.image_size % self.vision_config.patch_size:
            raise ValueError(
                f"vision_config.image_size ({self.vision_config.image_size}) must be a multiple of "
                f"vision_config.patch_size ({self.vision_config.patch_size})."
            )
        if self.image_seq_length != self.patches_per_side**2:
            raise ValueError(
                f"image_seq_length={self.image_seq_length} does not match the vision tower's "
                f"{self.patches_per_side}x{self.patches_per_side} patch map."
            )
        if not 1 <= self.projector_depth <= MAX_PROJECTOR_DEPTH:
            raise ValueError(f"projector_depth={short_repr(self.projector_depth)} is not allowed; expected [1, {MAX_PROJECTOR_DEPTH}].")
        tower_layers = self.vision_config.num_hidden_layers
        if not -(tower_layers + 1) <= self.vision_feature_layer <= tower_layers:
            raise ValueError(
                f"vision_feature_layer={self.vision_feature_layer} is not allowed; the {tower_layers}-layer vision "
                f"tower has hidden states [{-(tower_layers + 1)}, {tower_layers}]."
            )
        if self.image_token_id < 0:
            raise ValueError(f"image_token_id={self.image_token_id} is not allowed; expected a non-negative id.")
        if self.projector_hidden_act not in ACT2FN:
            raise ValueError(f"Unknown projector_hidden_act {self.projector_hidden_act!r}.")

    def _check_stack_fields(self):
        check_num_crops(self.num_crops)
        if self.stack_sampling not in ("2d", "1d", "grid"):
            raise ValueError(f"Unknown stack_sampling {self.stack_sampling!r}; expected '2d', '1d' or 'grid'.")
        if self.hd_layout and self.stack_sampling != "2d":
            raise ValueError(f"stack_sampling={self.stack_sampling!r} is not defined for hd_layout=True; use '2d'.")
        layers = self.deepstack_layers
        if len(layers) != self.num_stacks:
            raise ValueError(
                f"deepstack_layers={short_repr(layers)} has {len(layers)} entries but the model builds {self.num_stacks} stacks "
                f"(num_crops={self.num_crops}, hd_layout={self.hd_layout})."
            )
        depth = self.text_config.num_hidden_layers
        if any(not 0 <= layer < depth for layer in layers):
            raise ValueError(f"deepstack_layers={short_repr(layers)} must lie in [0, {depth}) for a {depth}-layer decoder.")
        if any(later <= earlier for earlier, later in zip(layers, layers[1:])):
            raise ValueError(f"deepstack_layers={short_repr(layers)} must be strictly increasing.")


def _build_sub_config(value: dict | PreTrainedConfig | None, default: dict) -> PreTrainedConfig:
    """A sub-config from a config object, a dict (``model_type`` defaults to ``default``'s) or ``None`` (the default)."""
    if isinstance(value, PreTrainedConfig):
        return value
    fields = dict(default) if value is None else {"model_type": default["model_type"], **value}
    model_type = fields.pop("model_type")
    return CONFIG_MAPPING[model_type](**fields)


def deepstack_layers_from_original(start: int, interval: int, count: int) -> list[int]:
    """Layers receiving the stacks in the original code: stack k goes in before layer ``start + k * interval``."""
    return [start + k * interval for k in range(count)]


__all__ = ["DeepStackConfig", "deepstack_layers_from_original"]
