"""Checks on a glTF file's own JSON (no bpy): what the importer is known to get wrong.

Orphan skeleton roots: a skin whose joints are not all reachable from the file's scenes (the skeleton's
root node is in no scene). glTF viewers pose such a skin from its joints' own transforms; Blender's
importer builds the armature from the nodes that ARE reachable and puts the rest in an "Orphan Nodes"
collection, so any axis-conversion transform that sits on the scene side of the hierarchy (a root node
rotating Z-up data to glTF's Y-up, as many converters write) no longer applies to the skin: the figure
imports lying down. We record the case and let a filter decide (FilterConfig.filter_orphan_skeleton).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any


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
