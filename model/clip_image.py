# TEMPORARY shim until i12's move lands: re-exports curation.encoders
"""The CLIP image tower for sampling (the embedding itself comes from `model.vae.Encoders.encode`)."""

from curation.encoders import clip_preprocess, load_clip

__all__ = ["clip_preprocess", "load_clip"]
