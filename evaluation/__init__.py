"""Evaluation of novel-view videos and 4D outputs with the SV4D 2.0 metrics (paper section 5, Tables 1-6).

- `evaluation.fvd`: FVD orderings (FVD-F, FVD-V, FVD-Diag, FV4D zig-zag), short clips, Frechet distance.
- `evaluation.metrics`: PSNR, SSIM, MSE on the whole image or the foreground (no weights).
- `evaluation.networks`: LPIPS, CLIP and I3D from local weight files (and tiny random stand-ins).
- `evaluation.inputs`: ground truth from render shards, predictions from the documented folder layout.
- `evaluation.evaluate`: one object's metrics; `evaluation.report`: totals and the paper's table.
- `evaluation.run`: the command line (`python -m evaluation.run`).
"""
