"""Meshes from the dynamic NeRF: marching cubes on a density grid, vertex colours from the colour field,
and the canonical mesh carried to each frame through the inverse of the deformation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fit4d.fields import DynamicNeRF


@dataclass
class Mesh:
    """vertices (N, 3) float32 world (Z up); faces (M, 3) int64; colors (N, 3) float32 in [0, 1]."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray


def grid_points(resolution: int, bound: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """(R^3, 3) vertex positions of a regular grid spanning [-bound, bound]^3, index order (i, j, k)."""
    axis = torch.linspace(-bound, bound, resolution, device=device)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


@torch.no_grad()
def evaluate(fn, points: torch.Tensor, chunk: int = 2**17) -> torch.Tensor:
    return torch.cat([fn(points[s : s + chunk]) for s in range(0, points.shape[0], chunk)])


def marching_cubes(density: np.ndarray, threshold: float, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface of a (R, R, R) density grid over [-bound, bound]^3 -> (vertices (N, 3), faces (M, 3)),
    faces wound so normals point out of the dense region."""
    from skimage.measure import marching_cubes as skimage_mc

    if not np.isfinite(density).all():
        raise ValueError("density grid contains NaN or Inf")
    if density.max() <= threshold or density.min() >= threshold:
        raise ValueError(
            f"no surface at density {threshold} (grid range {density.min():.3g}..{density.max():.3g}): "
            "change fit4d.export_threshold"
        )
    r = density.shape[0]
    spacing = (2 * bound / (r - 1),) * 3
    # for a density (high inside), skimage's "ascent" winding gives outward-facing triangles (tested)
    verts, faces, _, _ = skimage_mc(density, level=threshold, spacing=spacing, gradient_direction="ascent")
    return (verts - bound).astype(np.float32), np.ascontiguousarray(faces, dtype=np.int64)


def surface_level(model: DynamicNeRF, resolution: int, threshold: float) -> float:
    """The iso-level of the meshes: `threshold`, or the middle of the canonical grid's density range when
    `threshold` lies outside it (a short fit that never got that dense), so the export finds a surface."""
    dev = next(model.parameters()).device
    pts = grid_points(resolution, model.bound, dev)
    density = evaluate(lambda x: model.canonical_features(x)[0], pts)
    lo, hi = float(density.min()), float(density.max())
    return threshold if lo < threshold < hi else 0.5 * (lo + hi)


def frame_mesh(model: DynamicNeRF, t: float, resolution: int, threshold: float) -> Mesh:
    """The surface at time t in world space, coloured by the field at its vertices."""
    dev = next(model.parameters()).device
    pts = grid_points(resolution, model.bound, dev)

    def dens(x: torch.Tensor) -> torch.Tensor:
        return model.density(x, torch.full((x.shape[0], 1), t, device=dev))

    density = evaluate(dens, pts).reshape((resolution,) * 3).cpu().numpy()
    verts, faces = marching_cubes(density, threshold, model.bound)
    v = torch.from_numpy(verts).to(dev)
    colors = evaluate(lambda x: model(x, torch.full((x.shape[0], 1), t, device=dev))[1], v)
    return Mesh(verts, faces, colors.cpu().numpy().astype(np.float32))


def canonical_mesh(model: DynamicNeRF, resolution: int, threshold: float) -> Mesh:
    """The surface of the canonical NeRF (no deformation), with its canonical colours."""
    dev = next(model.parameters()).device
    pts = grid_points(resolution, model.bound, dev)
    density = evaluate(lambda x: model.canonical_features(x)[0], pts).reshape((resolution,) * 3).cpu().numpy()
    verts, faces = marching_cubes(density, threshold, model.bound)
    colors = evaluate(model.canonical_color, torch.from_numpy(verts).to(dev))
    return Mesh(verts, faces, colors.cpu().numpy().astype(np.float32))


@torch.no_grad()
def deform_to_frame(
    model: DynamicNeRF, canonical: np.ndarray, t: float, iterations: int = 30
) -> tuple[np.ndarray, float]:
    """World positions x of canonical points x_c at time t, solving x + d(x, t) = x_c by the fixed-point
    iteration x <- x_c - d(x, t). Returns (x (N, 3), max residual |x + d(x, t) - x_c|)."""
    dev = next(model.parameters()).device
    xc = torch.from_numpy(canonical).float().to(dev)
    tt = torch.full((xc.shape[0], 1), t, device=dev)
    x = xc.clone()
    for _ in range(iterations):
        x = xc - (model.canonical(x, tt) - x)  # x_c - d(x, t), since canonical(x) = x + d(x, t)
        x = x.clamp(-model.bound, model.bound)
    residual = float((model.canonical(x, tt) - xc).norm(dim=-1).max()) if xc.shape[0] else 0.0
    return x.cpu().numpy().astype(np.float32), residual


def write_ply(path, mesh: Mesh) -> None:
    """A binary PLY with per-vertex RGB (uint8), readable by trimesh, Blender and MeshLab."""
    import trimesh

    rgba = np.concatenate([mesh.colors, np.ones((len(mesh.colors), 1), np.float32)], 1)
    tm = trimesh.Trimesh(
        mesh.vertices, mesh.faces, vertex_colors=(rgba * 255).round().astype(np.uint8), process=False
    )
    tm.export(path)
