"""Conversion of original DeepStack checkpoints to Transformers repositories.

Modules (one concept each):

* `convert_deepstack_to_hf`: the CLI (`deepstack-convert`) and `convert_checkpoint()`, plus `verify_conversion()`;
* `source_checkpoint`: locating a checkpoint (Hub id or directory, with a network timeout), its index and
  shards, every read confined to the folder; refusing pickles;
* `vision_tower`: the CLIP tower named by `mm_vision_tower` (vision config, image-processor settings, weights);
* `config_bounds`: types and ranges of every config / CLIP config field read, checked before anything is built;
* `config_mapping`: original config.json -> `DeepStackConfig`, defaults and refusals, the stacks' layers;
* `output_claim`: the output directory's atomic claim (lock, staging folder, overlap checks) and publication;
* `weight_mapping`: original weight names -> Transformers names;
* `tokenizer_conversion`: SentencePiece -> fast tokenizer with the original ids and `<image>`;
* `streaming_safetensors`: header parsing and bounded-memory shard writing by file offsets;
* `remote_code`: the package's runtime modules + `auto_map` in the converted repo (loads without deepstack_hf);
* `model_card`: the model card template (README.md and `model_cards/*.md`);
* `hub_upload`: `--push-to-hub` and its dry run.

`--verify` compares the converted model with `deepstack_hf.testing_utils.original_reference`, an independent
implementation of the original.
"""

from .convert_deepstack_to_hf import ConversionResult, VerificationReport, convert_checkpoint, main, verify_conversion
from .errors import ConversionError

__all__ = [
    "ConversionError",
    "ConversionResult",
    "VerificationReport",
    "convert_checkpoint",
    "main",
    "verify_conversion",
]
