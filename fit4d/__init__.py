"""The 4D optimizer: a dynamic NeRF fitted to generated multi-view videos in two stages."""
