# TEMPORARY shim until i12's move lands: re-exports curation.encoders
"""The VAE side of the image encoders for sampling: load the encoder pair, encode renders, decode latents."""

from curation.encoders import (
    VAE_SCALING_FACTOR,
    Encoders,
    EncoderSpec,
    EncoderWeightsError,
    check_weights,
    decode_latents,
    images_to_uint8,
    resolve_spec,
)

__all__ = [
    "VAE_SCALING_FACTOR",
    "EncoderSpec",
    "EncoderWeightsError",
    "Encoders",
    "check_weights",
    "decode_latents",
    "images_to_uint8",
    "resolve_spec",
]
