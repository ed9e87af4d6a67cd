"""DeepStack configuration: a LLaVA-NeXT-style composite config plus the stacking layout."""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import CONFIG_MAPPING, AutoConfig, PreTrainedConfig

from ._compat import ACT2FN

from .grid_layout import check_num_crops, num_stacks, short_repr, square_grid_for

MAX_PROJECTOR_DEPTH = 16


@strict
class DeepStackConfig(PreTrainedConfig):
    r"""
    Configuration of a DeepStack-L / DeepStack-L-HD / DeepStack-V model: CLIP vision tower, MLP projector,
    Llama-family decoder (Llama, Vicuna, Phi-3), and the rule that turns high-resolution crops into stacks that are
    added to the visual-token hidden states before early decoder layers (DeepStack-L) or before layers of the
    vision tower (DeepStack-V). Defaults are those of the released `menglc/deepstack-l-vicuna-7b`.

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
        square_grid (`bool`, *optional*):
            Give every image the square crop grid `(sqrt(num_crops), sqrt(num_crops))` whatever its aspect ratio
            (the original's `2xsample` option) instead of the best-fitting grid; `num_crops` must then be a square
            number. Applies to the plain, HD and DeepStack-V layouts. Defaults to `False` (`True` for DeepStack-V,
            which needs it). The image processor has the same option: both must agree.
        stack_sampling (`str`, *optional*, defaults to `"2d"`):
            How plain-layout stacks are drawn from the high-resolution map: `"2d"` (strided rows and columns,
            the released rule), `"1d"` (strided over the flattened map) or `"grid"` (one crop per stack).
            The HD layout only has `"2d"`.
        deepstack_layers (`list[int]`, *optional*):
            Decoder layer (0-based) that receives stack k, just before it runs. Defaults to
            `[1, 2, ..., K]` (original `deepstack_start_id=1`, `deepstack_interval=1`).
        deepstack_variant (`str`, *optional*, defaults to `"L"`):
            `"L"`: the stacks go into the decoder (`deepstack_layers`). `"V"` (DeepStack-V, the original's
            `deepstack_vit`): the `num_crops` stacks are drawn from the local views' vision-tower states at
            `vision_split_layer` and added to the global view's patch tokens before the vision-tower layers
            `vision_split_layer, vision_split_layer + 1, ...` (stacks past the last layer are dropped); the decoder
            gets no stacks. DeepStack-V uses the plain layout, `stack_sampling="2d"` and the square grid.
        vision_split_layer (`int`, *optional*):
            DeepStack-V only: index S of the vision-tower layer before which the local views split off (0 = right
            after `pre_layrnorm`). Defaults to `vision_config.num_hidden_layers // 2`. Indices count the CLIP
            encoder layers, then the `vision_post_layers` extra ones; S at or past the last layer means no split.
        vision_post_layers (`int`, *optional*):
            DeepStack-V only: extra CLIP encoder layers appended after the CLIP encoder (`post_encoder`). Defaults
            to 5 when `vision_split_layer >= vision_config.num_hidden_layers` (the original's rule), else 0. With
            extra layers, `vision_feature_layer` must be -1 (the original forces it).
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
    square_grid: bool | None = None
    stack_sampling: str = "2d"
    deepstack_layers: list[int] | None = None
    deepstack_variant: Literal["L", "V"] = "L"
    vision_split_layer: int | None = None
    vision_post_layers: int | None = None
    image_seq_length: int = 576
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        self.vision_config = _build_sub_config(self.vision_config, self.default_vision_config)
        self.text_config = _build_sub_config(self.text_config, {"model_type": "llama"})
        super().__post_init__(**kwargs)
        check_num_crops(self.num_crops)  # bounds num_stacks before the default layer list is built from it
        self._fill_defaults()
        self.validate_deepstack_fields()

    def _fill_defaults(self):
        """The fields left `None` that follow from the others: the stack layers, the square grid and DeepStack-V's
        split layer and extra layers (contradictions are left to [`validate_deepstack_fields`])."""
        if self.deepstack_variant == "V":
            self.square_grid = True if self.square_grid is None else self.square_grid
            self.deepstack_layers = [] if self.deepstack_layers is None else self.deepstack_layers
            if self.vision_split_layer is None:
                self.vision_split_layer = self.vision_config.num_hidden_layers // 2
            if self.vision_post_layers is None and isinstance(self.vision_split_layer, int):
                self.vision_post_layers = 5 if self.vision_split_layer >= self.vision_config.num_hidden_layers else 0
        if self.deepstack_layers is None:
            self.deepstack_layers = list(range(1, 1 + self.num_stacks))
        self.deepstack_layers = [int(layer) for layer in self.deepstack_layers]
        if self.square_grid is None:
            self.square_grid = False

    def validate_deepstack_fields(self):
        """`ValueError` naming the field unless every DeepStack field is consistent with the others and with the
        sub-configs.

        Runs at construction, again in `validate()` (which `save_pretrained` calls: `@strict` collects every
        `validate_*` method) and at the start of every model forward, so that a field changed after construction
        (`config.deepstack_layers = [1, 1, 2, 3]`) is refused where it would be used, not silently applied.
        """
        for name in ("vision_config", "text_config"):
            if not isinstance(getattr(self, name), PreTrainedConfig):
                raise ValueError(f"{name} must be a config object, got {type(getattr(self, name)).__name__}.")
        check_num_crops(self.num_crops)
        self._check_vision_fields()
        self._check_variant_fields()
        self._check_stack_fields()
        self._check_grid_fields()

    @property
    def num_stacks(self) -> int:
        """Number of stacks K each image contributes to the decoder (0 for DeepStack-V)."""
        if self.deepstack_variant == "V":
            return 0
        return num_stacks(self.num_crops, self.hd_layout)

    @property
    def num_vision_stacks(self) -> int:
        """Number of stacks each image contributes to the vision tower (`num_crops` for DeepStack-V, else 0)."""
        return self.num_crops if self.deepstack_variant == "V" else 0

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
        tower_layers = self.vision_config.num_hidden_layers + (self.vision_post_layers or 0)
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
        if self.stack_sampling not in ("2d", "1d", "grid"):
            raise ValueError(f"Unknown stack_sampling {self.stack_sampling!r}; expected '2d', '1d' or 'grid'.")
        if self.hd_layout and self.stack_sampling != "2d":
            raise ValueError(f"stack_sampling={self.stack_sampling!r} is not defined for hd_layout=True; use '2d'.")
        layers = self.deepstack_layers
        if not isinstance(layers, list):
            raise ValueError(f"deepstack_layers must be a list of decoder layers, got {short_repr(layers)}.")
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

    def _check_variant_fields(self):
        """DeepStack-V's fields (split layer, extra layers, square grid, no decoder stacks), or their absence."""
        if self.deepstack_variant == "L":
            for name in ("vision_split_layer", "vision_post_layers"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} is a DeepStack-V field; set deepstack_variant='V' to use it.")
            return
        if self.hd_layout:
            raise ValueError("DeepStack-V (deepstack_variant='V') is only defined for the plain layout: hd_layout=False.")
        if self.stack_sampling != "2d":
            raise ValueError(f"DeepStack-V draws its stacks with '2d' sampling, got stack_sampling={self.stack_sampling!r}.")
        if self.square_grid is not True:
            raise ValueError("DeepStack-V needs square_grid=True: its stacks are drawn from a square mosaic of crops.")
        if self.deepstack_layers:
            raise ValueError(f"DeepStack-V adds no stacks to the decoder, got deepstack_layers={short_repr(self.deepstack_layers)}.")
        for name in ("vision_split_layer", "vision_post_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer of at least 0, got {short_repr(value)}.")
        if self.vision_post_layers and self.vision_feature_layer != -1:
            raise ValueError(
                f"With vision_post_layers={self.vision_post_layers} the projector reads the last extra layer's output: "
                f"set vision_feature_layer=-1 (got {self.vision_feature_layer})."
            )

    def _check_grid_fields(self):
        if not isinstance(self.square_grid, bool):
            raise ValueError(f"square_grid must be True or False, got {short_repr(self.square_grid)}.")
        if self.square_grid:
            square_grid_for(self.num_crops)


def _build_sub_config(value: dict | PreTrainedConfig | None, default: dict) -> PreTrainedConfig:
    """A sub-config from a config object, a dict (``model_type`` defaults to ``default``'s) or ``None`` (the default)."""
    if isinstance(value, PreTrainedConfig):
        return value
    fields = dict(default) if value is None else {"model_type": default["model_type"], **value}
    model_type = fields.pop("model_type")
    return CONFIG_MAPPING[model_type](**fields)


__all__ = ["DeepStackConfig"]
