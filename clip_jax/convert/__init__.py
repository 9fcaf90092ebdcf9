"""Checkpoint formats <-> clip_jax variables, one module per format and direction.

- `openai`: OpenAI / open_clip state dicts (the canonical tensor table every converter uses).
- `unwrap`: the model's weights inside a training checkpoint (wrapper entries, module
  prefixes, the trained or EMA copy).
- `open_clip_import`, `open_clip_export`: open_clip hub directories (every model, ResNets too).
- `hf_import`, `hf_export`: transformers `CLIPModel` directories (ViT models); `hf_keys` names
  the tensors for both, `hf_tokenizer` reads and writes their tokenizer files.
- `host`: what they share: sharded variables gathered to host numpy, tensor and JSON files,
  dtype names (`clip_jax.models.config.DTYPES`).

Nothing here loads by name or path: `clip_jax.pretrained` composes these into `clip_jax.load`,
`clip_jax.save` and `export_hf_from`.
"""

from clip_jax import lazy

__getattr__ = lazy.submodules(__name__)
