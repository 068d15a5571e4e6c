"""Animated GLB files (glTF 2.0, written with pygltflib) of a fitted 4D asset.

- `write_morph_glb`: fixed topology. The canonical mesh deformed to frame 0 is the base; frame f > 0 is
  morph target f - 1 (POSITION displacements); a LINEAR weight track sets target f - 1 to 1 at time f / fps,
  so players blend between neighbouring frames.
- `write_frames_glb`: one mesh per frame (each its own marching-cubes topology) under one root; node f is
  shown (scale 1) during [f / fps, (f + 1) / fps) and hidden (scale 0) otherwise, by STEP scale keys.

Vertex colours are COLOR_0 (linear float RGB). Our world is Z up, glTF's Y up: (x, y, z) -> (x, z, -y).
An optional per-frame translation track on the root puts back a global motion removed before fitting.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fit4d.export.mesh import Mesh

Z_UP_TO_Y_UP = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], np.float32)


def to_gltf_axes(v: np.ndarray) -> np.ndarray:
    return (np.asarray(v, np.float32) @ Z_UP_TO_Y_UP.T).astype(np.float32)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """COLOR_0 is linear; the field's colours are display (sRGB) values like the PNG targets."""
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


class _Builder:
    """Accumulates one binary buffer, its views and accessors."""

    def __init__(self) -> None:
        import pygltflib as g

        self.g = g
        self.blob = bytearray()
        self.views: list = []
        self.accessors: list = []

    def add(self, array: np.ndarray, kind: str, target: int | None, minmax: bool = False) -> int:
        g = self.g
        array = np.ascontiguousarray(array)
        while len(self.blob) % 4:
            self.blob.append(0)
        offset = len(self.blob)
        self.blob += array.tobytes()
        self.views.append(g.BufferView(buffer=0, byteOffset=offset, byteLength=array.nbytes, target=target))
        ctype = {np.dtype(np.float32): g.FLOAT, np.dtype(np.uint32): g.UNSIGNED_INT}[array.dtype]
        acc = g.Accessor(
            bufferView=len(self.views) - 1,
            componentType=ctype,
            count=int(array.shape[0]),
            type=kind,
        )
        if minmax:
            flat = array.reshape(array.shape[0], -1)
            acc.min = flat.min(0).astype(float).tolist()
            acc.max = flat.max(0).astype(float).tolist()
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def primitive(self, mesh: Mesh, positions: np.ndarray, targets: list[dict] | None = None):
        g = self.g
        if len(mesh.faces) == 0 or len(positions) == 0:
            raise ValueError("cannot export an empty mesh")
        pos = self.add(to_gltf_axes(positions), g.VEC3, g.ARRAY_BUFFER, minmax=True)
        col = self.add(srgb_to_linear(mesh.colors), g.VEC3, g.ARRAY_BUFFER)
        idx = self.add(
            mesh.faces.astype(np.uint32).reshape(-1), g.SCALAR, g.ELEMENT_ARRAY_BUFFER, minmax=True
        )
        return g.Primitive(
            attributes=g.Attributes(POSITION=pos, COLOR_0=col), indices=idx, mode=g.TRIANGLES, targets=targets
        )

    def save(self, path: str | Path, gltf) -> None:
        g = self.g
        gltf.asset = g.Asset(version="2.0", generator="sv4d2-open fit4d")
        gltf.buffers = [g.Buffer(byteLength=len(self.blob))]
        gltf.bufferViews = self.views
        gltf.accessors = self.accessors
        gltf.set_binary_blob(bytes(self.blob))
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        gltf.save_binary(str(tmp))
        tmp.replace(path)


def _translation_channel(b: _Builder, node: int, times: int, translations: np.ndarray | None):
    if translations is None:
        return [], []
    g = b.g
    out = b.add(to_gltf_axes(translations), g.VEC3, None)
    return [g.AnimationSampler(input=times, output=out, interpolation="LINEAR")], [out]


def write_morph_glb(
    path: str | Path,
    mesh: Mesh,
    frame_positions: np.ndarray,
    fps: float,
    translations: np.ndarray | None = None,
) -> None:
    """mesh: topology and colours; frame_positions (F, N, 3) world positions of its vertices per frame;
    translations (F, 3) optional root motion."""
    b = _Builder()
    g = b.g
    frame_positions = np.asarray(frame_positions, np.float32)
    num_frames = frame_positions.shape[0]
    if frame_positions.ndim != 3 or frame_positions.shape[1:] != mesh.vertices.shape:
        raise ValueError(f"frame_positions {frame_positions.shape} must be (F, {len(mesh.vertices)}, 3)")
    base = frame_positions[0]
    targets = []
    for f in range(1, num_frames):
        delta = to_gltf_axes(frame_positions[f]) - to_gltf_axes(base)
        targets.append({"POSITION": b.add(delta, g.VEC3, g.ARRAY_BUFFER, minmax=True)})
    prim = b.primitive(mesh, base, targets or None)
    gltf = g.GLTF2()
    gltf.meshes = [
        g.Mesh(
            primitives=[prim],
            weights=[0.0] * (num_frames - 1) if targets else None,
            extras={"targetNames": [f"frame_{f:03d}" for f in range(1, num_frames)]} if targets else {},
        )
    ]
    gltf.nodes = [g.Node(name="asset", mesh=0)]
    gltf.scenes = [g.Scene(nodes=[0])]
    gltf.scene = 0
    samplers, channels = [], []
    if num_frames > 1:
        times = b.add(np.arange(num_frames, dtype=np.float32)[:, None] / fps, g.SCALAR, None, minmax=True)
        weights = np.zeros((num_frames, num_frames - 1), np.float32)
        for f in range(1, num_frames):
            weights[f, f - 1] = 1.0
        # weights output: count = keyframes * targets, flattened keyframe-major
        w_acc = b.add(weights.reshape(-1), g.SCALAR, None)
        samplers.append(g.AnimationSampler(input=times, output=w_acc, interpolation="LINEAR"))
        channels.append(
            g.AnimationChannel(sampler=0, target=g.AnimationChannelTarget(node=0, path="weights"))
        )
        extra_samplers, _ = _translation_channel(b, 0, times, translations)
        if extra_samplers:
            samplers += extra_samplers
            channels.append(
                g.AnimationChannel(sampler=1, target=g.AnimationChannelTarget(node=0, path="translation"))
            )
        gltf.animations = [g.Animation(name="clip", samplers=samplers, channels=channels)]
    b.save(path, gltf)


def write_frames_glb(
    path: str | Path, meshes: Sequence[Mesh], fps: float, translations: np.ndarray | None = None
) -> None:
    """One node per frame's mesh under a root node; STEP scale keys show node f during frame f only."""
    b = _Builder()
    g = b.g
    num_frames = len(meshes)
    if num_frames == 0:
        raise ValueError("no frame meshes to export")
    gltf = g.GLTF2()
    gltf.meshes = [g.Mesh(primitives=[b.primitive(m, m.vertices)]) for m in meshes]
    children = list(range(1, num_frames + 1))
    gltf.nodes = [g.Node(name="asset", children=children)] + [
        g.Node(name=f"frame_{f:03d}", mesh=f, scale=[1.0, 1.0, 1.0] if f == 0 else [0.0, 0.0, 0.0])
        for f in range(num_frames)
    ]
    gltf.scenes = [g.Scene(nodes=[0])]
    gltf.scene = 0
    if num_frames > 1:
        times = b.add(np.arange(num_frames, dtype=np.float32)[:, None] / fps, g.SCALAR, None, minmax=True)
        samplers, channels = [], []
        for f in range(num_frames):
            scale = np.zeros((num_frames, 3), np.float32)
            scale[f] = 1.0
            samplers.append(
                g.AnimationSampler(input=times, output=b.add(scale, g.VEC3, None), interpolation="STEP")
            )
            channels.append(
                g.AnimationChannel(sampler=f, target=g.AnimationChannelTarget(node=f + 1, path="scale"))
            )
        extra, _ = _translation_channel(b, 0, times, translations)
        if extra:
            samplers += extra
            channels.append(
                g.AnimationChannel(
                    sampler=len(samplers) - 1, target=g.AnimationChannelTarget(node=0, path="translation")
                )
            )
        gltf.animations = [g.Animation(name="clip", samplers=samplers, channels=channels)]
    b.save(path, gltf)
