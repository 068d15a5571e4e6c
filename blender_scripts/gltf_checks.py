"""Checks on a glTF file's own JSON (no bpy): what the importer is known to get wrong.

Orphan skeleton roots: a skin whose joints are not all reachable from the file's scenes (the skeleton's
root node is in no scene). The glTF rule is that a skinned mesh ignores its own node's transform: only the
joints' world transforms place it. Blender's importer follows the rule (it reparents the mesh to the
armature, and the armature built from the orphan joints gets no scene transform at all); three.js-based
viewers instead bind the mesh with its node's world matrix (`SkinnedMesh.bind(skeleton, matrixWorld)`).
When the mesh node sits under a scene root that rotates Z-up data to glTF's Y-up, as many converters
write, the viewers show the figure upright and Blender shows it lying down. Nothing in the file says which
is meant. By default the renderer poses such a skin as the viewers show it (`render.orphan_skeleton:
viewer`, scene_io.apply_viewer_transform: a new root bone carries the mesh node's world matrix; the armature
object cannot, as the importer makes it the parent of every scene node); `gltf` keeps the importer's
orientation. Either way the analysis records the case and the disagreeing rotation
(`orphan_skin_rotation_deg`), and a filter can drop such assets (FilterConfig.filter_orphan_skeleton).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np


def read_gltf_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON of a .gltf or .glb file; None for other files or unreadable ones."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(20)
            if head[:4] == b"glTF":
                length, kind = struct.unpack("<I4s", head[12:20])
                if kind != b"JSON":
                    return None
                return json.loads(f.read(length))
            if path.lower().endswith(".gltf"):
                return json.loads(head + f.read())
    except (OSError, ValueError, struct.error):
        return None
    return None


def scene_nodes(gltf: dict[str, Any]) -> set[int]:
    """Indices of the nodes reachable from any scene's root nodes."""
    nodes = gltf.get("nodes") or []
    seen: set[int] = set()
    stack = [n for s in gltf.get("scenes") or [] for n in s.get("nodes") or []]
    while stack:
        n = stack.pop()
        if n in seen or not 0 <= n < len(nodes):
            continue
        seen.add(n)
        stack.extend(nodes[n].get("children") or [])
    return seen


def orphan_skins(gltf: dict[str, Any]) -> list[int]:
    """Indices of the skins with a joint (or the declared skeleton root) that no scene reaches."""
    reachable = scene_nodes(gltf)
    out = []
    for i, skin in enumerate(gltf.get("skins") or []):
        joints = list(skin.get("joints") or [])
        if "skeleton" in skin:
            joints.append(skin["skeleton"])
        if any(j not in reachable for j in joints):
            out.append(i)
    return out


def _local_matrix(node: dict[str, Any]) -> np.ndarray:
    if "matrix" in node:
        return np.asarray(node["matrix"], dtype=np.float64).reshape(4, 4).T  # column-major in glTF
    x, y, z, w = node.get("rotation", [0.0, 0.0, 0.0, 1.0])
    rot = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    m = np.eye(4)
    m[:3, :3] = rot * np.asarray(node.get("scale", [1.0, 1.0, 1.0]))[None, :]
    m[:3, 3] = node.get("translation", [0.0, 0.0, 0.0])
    return m


def node_world_matrix(gltf: dict[str, Any], index: int) -> np.ndarray:
    """(4, 4) world matrix of node `index` through its parents (glTF coordinates)."""
    nodes = gltf.get("nodes") or []
    parent = {c: i for i, n in enumerate(nodes) for c in n.get("children") or []}
    m = np.eye(4)
    seen = set()
    while index is not None and index not in seen:
        seen.add(index)
        m = _local_matrix(nodes[index]) @ m
        index = parent.get(index)
    return m


def orphan_skin_rotation_deg(gltf: dict[str, Any]) -> float:
    """Largest rotation (degrees) of the world matrix of a mesh node skinned by an orphan skin: how far
    three.js-style viewers and Blender (the glTF rule) disagree on its orientation; 0 when they agree.

    Example: a mesh node under a root rotated -90 degrees about X, skinned by joints in no scene -> 90.
    """
    orphans = set(orphan_skins(gltf))
    worst = 0.0
    for i, node in enumerate(gltf.get("nodes") or []):
        if node.get("skin") in orphans and "mesh" in node:
            rot = node_world_matrix(gltf, i)[:3, :3]
            rot = rot / np.linalg.norm(rot, axis=0, keepdims=True)
            cos = np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0)
            worst = max(worst, float(np.degrees(np.arccos(cos))))
    return worst


#: glTF (Y up) to Blender (Z up) coordinates: (x, y, z) -> (x, -z, y), as the importer converts them
GLTF_TO_BLENDER = np.array([[1.0, 0, 0, 0], [0, 0, -1.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0]])


def orphan_skin_viewer_matrix(gltf: dict[str, Any]) -> np.ndarray | None:
    """(4, 4) Blender-space matrix that three.js-style viewers apply to the mesh skinned by an orphan skin
    (its mesh node's world matrix); None without an orphan skin, or when several disagree."""
    orphans = set(orphan_skins(gltf))
    found = []
    for i, node in enumerate(gltf.get("nodes") or []):
        if node.get("skin") in orphans and "mesh" in node:
            m = node_world_matrix(gltf, i)
            found.append(GLTF_TO_BLENDER @ m @ GLTF_TO_BLENDER.T)
    if not found or any(not np.allclose(f, found[0], atol=1e-6) for f in found):
        return None
    return found[0]
