"""Helpers for tests, the demo and the benchmarks; nothing in the model, the processors or the integrations imports
them (docs/design.md, "Package layout"):

* `synthetic_checkpoint`: tiny random checkpoints in the original's format (config, shards, tokenizer, CLIP tower);
* `tiny_sentencepiece`: a tiny Llama-style SentencePiece model trained on the spot;
* `original_reference`: an independent plain-torch implementation of the original model, which
  `deepstack-convert --verify` and the parity tests compare the converted model with.
"""
