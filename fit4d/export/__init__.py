"""Exports of a fitted dynamic NeRF: per-frame meshes, animated GLBs, orbit videos."""
