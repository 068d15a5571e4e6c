"""GPU kernels of the image encoders (Triton GroupNorm statistics, the deferred-bias VAE encoder forward)."""
