"""Procedural glTF files written byte by byte (no Blender), built to break the render stage's old behaviour.

Every builder returns GLB bytes. glTF is Y-up; Blender's importer maps glTF (x, y, z) to Blender (x, -z, y).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np


class GltfBuilder:
    """Accumulates buffers, accessors, meshes, nodes and animations of one GLB."""

    def __init__(self) -> None:
        self.binary = bytearray()
        self.gltf: dict[str, Any] = {
            "asset": {"version": "2.0"},
            "scene": 0,
            "scenes": [{"nodes": []}],
            "nodes": [],
            "meshes": [],
            "materials": [],
            "buffers": [],
            "bufferViews": [],
            "accessors": [],
        }

    def accessor(self, array: np.ndarray, kind: str, minmax: bool = False) -> int:
        array = np.ascontiguousarray(array)
        component = {np.float32: 5126, np.uint16: 5123, np.uint32: 5125}[array.dtype.type]
        self.binary += b"\0" * (-len(self.binary) % 4)
        view = {"buffer": 0, "byteOffset": len(self.binary), "byteLength": array.nbytes}
        self.binary += array.tobytes()
        self.gltf["bufferViews"].append(view)
        acc: dict[str, Any] = {
            "bufferView": len(self.gltf["bufferViews"]) - 1,
            "componentType": component,
            "count": int(array.shape[0]),
            "type": kind,
        }
        if minmax:
            acc["min"] = array.min(0).reshape(-1).tolist()
            acc["max"] = array.max(0).reshape(-1).tolist()
        self.gltf["accessors"].append(acc)
        return len(self.gltf["accessors"]) - 1

    def material(self, rgb: tuple[float, float, float], double_sided: bool) -> int:
        self.gltf["materials"].append(
            {
                "pbrMetallicRoughness": {"baseColorFactor": [*rgb, 1.0], "metallicFactor": 0.0},
                "doubleSided": double_sided,
            }
        )
        return len(self.gltf["materials"]) - 1

    def mesh(
        self,
        positions: np.ndarray,
        triangles: np.ndarray,
        material: int | None = None,
        targets: list[np.ndarray] | None = None,
    ) -> int:
        prim: dict[str, Any] = {
            "attributes": {"POSITION": self.accessor(positions.astype(np.float32), "VEC3", True)},
            "indices": self.accessor(triangles.astype(np.uint32).reshape(-1), "SCALAR"),
        }
        if material is not None:
            prim["material"] = material
        mesh: dict[str, Any] = {"primitives": [prim]}
        if targets:
            prim["targets"] = [
                {"POSITION": self.accessor(t.astype(np.float32), "VEC3", True)} for t in targets
            ]
            mesh["weights"] = [0.0] * len(targets)
        self.gltf["meshes"].append(mesh)
        return len(self.gltf["meshes"]) - 1

    def node(self, name: str, mesh: int | None = None, root: bool = True, **trs: Any) -> int:
        node: dict[str, Any] = {"name": name, **trs}
        if mesh is not None:
            node["mesh"] = mesh
        self.gltf["nodes"].append(node)
        index = len(self.gltf["nodes"]) - 1
        if root:
            self.gltf["scenes"][0]["nodes"].append(index)
        return index

    def animation(self, name: str, channels: list[tuple[int, str, np.ndarray, np.ndarray]]) -> None:
        """channels: (node, path, times (K,), values (K, n)); path: translation, rotation, scale, weights."""
        anim: dict[str, Any] = {"name": name, "samplers": [], "channels": []}
        for node, path, times, values in channels:
            kind = {"translation": "VEC3", "scale": "VEC3", "rotation": "VEC4", "weights": "SCALAR"}[path]
            values = np.asarray(values, np.float32)
            out = self.accessor(values.reshape(-1) if kind == "SCALAR" else values, kind)
            inp = self.accessor(np.asarray(times, np.float32), "SCALAR", True)
            anim["samplers"].append({"input": inp, "output": out, "interpolation": "LINEAR"})
            anim["channels"].append(
                {"sampler": len(anim["samplers"]) - 1, "target": {"node": node, "path": path}}
            )
        self.gltf.setdefault("animations", []).append(anim)

    def glb(self) -> bytes:
        gltf = {k: v for k, v in self.gltf.items() if v != []}
        gltf["buffers"] = [{"byteLength": len(self.binary) + (-len(self.binary) % 4)}]
        js = json.dumps(gltf).encode()
        js += b" " * (-len(js) % 4)
        binary = bytes(self.binary) + b"\0" * (-len(self.binary) % 4)
        chunks = struct.pack("<I4s", len(js), b"JSON") + js + struct.pack("<I4s", len(binary), b"BIN\0")
        chunks += binary
        return struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks


def box(lo: tuple[float, float, float], hi: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """An axis-aligned box: 8 corners and 12 outward-facing (counter-clockwise) triangles."""
    x0, y0, z0 = lo
    x1, y1, z1 = hi
    v = np.array(
        [[x, y, z] for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)], dtype=np.float64
    )  # index = 4 * ix + 2 * iy + iz
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    tris = [t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))]
    return v, np.array(tris)


def unit_cube_glb() -> bytes:
    """A still unit cube: the old framing (largest extent 1 at radius 2) cut it in every image."""
    g = GltfBuilder()
    v, t = box((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
    g.node("cube", g.mesh(v, t, g.material((0.8, 0.3, 0.2), True)))
    return g.glb()


def plane_glb(double_sided: bool) -> bytes:
    """A unit square in glTF's XY plane facing glTF +Z (Blender -Y), rocking a little so it is animated."""
    g = GltfBuilder()
    v = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], dtype=np.float64)
    t = np.array([[0, 1, 2], [0, 2, 3]])
    n = g.node("plane", g.mesh(v, t, g.material((0.9, 0.9, 0.9), double_sided)))
    times = np.array([0.0, 1.0])
    g.animation("rock", [(n, "translation", times, np.array([[0, 0, 0], [0.0, 0.05, 0]]))])
    return g.glb()


def bent_cylinder_glb(segments: int = 12, rings: int = 10) -> bytes:
    """A cylinder of height 1 along glTF Y that bends sideways (a morph target) in the second half only.

    Its straight pose sits at one side of the clip's box: the union box is centred off the straight axis.
    The motion also starts only halfway through the take (2 s still, then 2 s bending), so a clip of the
    whole take's start is nearly still.
    """
    g = GltfBuilder()
    ang = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    ys = np.linspace(0, 1, rings)
    r = 0.08
    pos = np.array([[r * np.cos(a), y, r * np.sin(a)] for y in ys for a in ang])
    tris = []
    for i in range(rings - 1):
        for j in range(segments):
            a, b = i * segments + j, i * segments + (j + 1) % segments
            c, d = a + segments, b + segments
            tris += [(a, c, b), (b, c, d)]
    cap0, cap1 = len(pos), len(pos) + 1
    pos = np.vstack([pos, [[0, 0, 0], [0, 1, 0]]])
    for j in range(segments):
        tris += [(cap0, (j + 1) % segments, j)]
        top = (rings - 1) * segments
        tris += [(cap1, top + j, top + (j + 1) % segments)]
    # bent: each ring moves along +X by an arc of a quarter circle of radius 2 / pi (same length)
    bend = np.zeros_like(pos)
    rad = 2.0 / np.pi
    y = pos[:, 1]
    theta = y / rad
    bend[:, 0] = rad * (1 - np.cos(theta)) + pos[:, 0] * (np.cos(theta) - 1)
    bend[:, 1] = rad * np.sin(theta) - y - pos[:, 0] * np.sin(theta)
    n = g.node("cylinder", g.mesh(pos, np.array(tris), g.material((0.2, 0.6, 0.9), True), [bend]))
    times = np.array([0.0, 2.0, 3.0, 4.0])
    g.animation("take", [(n, "weights", times, np.array([0.0, 0.0, 1.0, 0.0]))])
    return g.glb()


def two_actions_glb() -> bytes:
    """A box with two named animations: 'bob' (1 s, up and down) and 'spin_long' (2 s, a sideways slide)."""
    g = GltfBuilder()
    v, t = box((-0.3, -0.2, -0.1), (0.3, 0.2, 0.1))
    n = g.node("box", g.mesh(v, t, g.material((0.3, 0.8, 0.3), True)))
    g.animation("bob", [(n, "translation", [0.0, 0.5, 1.0], [[0, 0, 0], [0, 0.5, 0], [0, 0, 0]])])
    g.animation("slide_long", [(n, "translation", [0.0, 1.0, 2.0], [[0, 0, 0], [0.8, 0, 0], [0, 0, 0]])])
    return g.glb()


def orphan_skeleton_glb() -> bytes:
    """A figure 2 tall along glTF Z, skinned to a root joint that is in no scene, its mesh node under a
    scene root rotating Z-up to Y-up (-90 degrees about X), as converters write them.

    three.js-style viewers apply the mesh node's world matrix (upright); Blender follows the glTF rule that
    a skinned mesh ignores it (lying down along Blender Y).
    """
    g = GltfBuilder()
    v, t = box((-0.2, -0.1, 0.0), (0.2, 0.1, 2.0))
    mesh = g.mesh(v, t, g.material((0.8, 0.8, 0.8), True))
    prim = g.gltf["meshes"][mesh]["primitives"][0]
    prim["attributes"]["JOINTS_0"] = g.accessor(np.zeros((8, 4), np.uint16), "VEC4")
    weights = np.zeros((8, 4), np.float32)
    weights[:, 0] = 1.0
    prim["attributes"]["WEIGHTS_0"] = g.accessor(weights, "VEC4")
    half = float(np.sqrt(0.5))
    model = g.node("Model", rotation=[-half, 0.0, 0.0, half])
    figure = g.node("figure", mesh, root=False, skin=0)
    joint = g.node("root_joint", root=False)
    g.gltf["nodes"][model]["children"] = [figure]
    ibm = np.eye(4, dtype=np.float32).reshape(1, 16)
    g.gltf["skins"] = [{"joints": [joint], "inverseBindMatrices": g.accessor(ibm, "MAT4")}]
    return g.glb()


def read_accessor(gltf: Any, index: int) -> np.ndarray:
    """The float32/uint32 data of accessor `index` of a pygltflib GLB (SCALAR -> (N,), VECn -> (N, n))."""
    import pygltflib

    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    comps = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc.type]
    dtype = np.float32 if acc.componentType == pygltflib.FLOAT else np.uint32
    offset = view.byteOffset + (acc.byteOffset or 0)
    data = np.frombuffer(gltf.binary_blob(), dtype, acc.count * comps, offset)
    return data.reshape(acc.count, comps) if comps > 1 else data
