"""Loading any supported checkpoint by path, name or Hub id (`load`, `registry`); the
open_clip-style factory: create (random or released weights), transforms, tokenizer, save and
export of whatever `load` reads (`factory`)."""

from clip_jax import lazy

__getattr__ = lazy.submodules(__name__)
