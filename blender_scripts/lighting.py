"""World lighting hook: `setup_environment(env)` builds the scene's world from an environment spec.

Specs (JSON-compatible dicts):
    {"kind": "sky", "strength": 1.0}
        A procedural near-uniform sky: radiance goes linearly with the view direction's z from
        `bottom` (default 0.8) at the nadir to `top` (default 1.0) at the zenith, grey, times `strength`;
        near-ambient light with a hint of top lighting so shapes read.
        The sky is not importance-sampled (`sampling` "none"): for a smooth sky, BSDF sampling alone has
        about the same noise per sample at half the rays (no shadow rays), and no importance map is built.
    {"kind": "hdri", "path": "/abs/map.hdr", "rotation_deg": 37.0, "strength": 1.0}
        An equirectangular environment map from a file (.hdr/.exr), rotated about world Z by rotation_deg.

Optional for both: "sampling": "auto" (an importance map, Cycles' default; the hdri default) or "none".

Returns the spec as given plus what was used (resolved path, image size, defaults filled in).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def setup_environment(env: dict[str, Any]) -> dict[str, Any]:
    """Create and assign the scene's world for `env`; returns the spec with the values actually used."""
    import bpy

    kind = env.get("kind", "sky")
    strength = float(env.get("strength", 1.0))
    world = bpy.data.worlds.new("sv4d2_world")
    world.use_nodes = True
    bpy.context.scene.world = world
    nodes, links = world.node_tree.nodes, world.node_tree.links
    nodes.clear()
    out = nodes.new("ShaderNodeOutputWorld")
    bg = nodes.new("ShaderNodeBackground")
    bg.inputs["Strength"].default_value = strength
    links.new(bg.outputs["Background"], out.inputs["Surface"])
    coords = nodes.new("ShaderNodeTexCoord")
    used: dict[str, Any] = dict(env)
    used["kind"], used["strength"] = kind, strength
    sampling = str(env.get("sampling", "none" if kind == "sky" else "auto")).lower()
    if sampling not in ("auto", "none"):
        raise ValueError(f"environment sampling must be 'auto' or 'none', got {sampling!r}")
    world.cycles.sampling_method = "AUTOMATIC" if sampling == "auto" else "NONE"
    used["sampling"] = sampling

    if kind == "sky":
        top, bottom = float(env.get("top", 1.0)), float(env.get("bottom", 0.8))
        # world "Generated" coordinates are the normalized view direction
        sep = nodes.new("ShaderNodeSeparateXYZ")
        remap = nodes.new("ShaderNodeMapRange")
        remap.inputs["From Min"].default_value = -1.0
        remap.inputs["From Max"].default_value = 1.0
        remap.inputs["To Min"].default_value = bottom
        remap.inputs["To Max"].default_value = top
        grey = nodes.new("ShaderNodeCombineColor")
        links.new(coords.outputs["Generated"], sep.inputs["Vector"])
        links.new(sep.outputs["Z"], remap.inputs["Value"])
        for channel in ("Red", "Green", "Blue"):
            links.new(remap.outputs["Result"], grey.inputs[channel])
        links.new(grey.outputs["Color"], bg.inputs["Color"])
        used["top"], used["bottom"] = top, bottom
    elif kind == "hdri":
        path = Path(env["path"]).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"environment map {path} does not exist")
        rotation = float(env.get("rotation_deg", 0.0))
        mapping = nodes.new("ShaderNodeMapping")
        mapping.vector_type = "POINT"
        mapping.inputs["Rotation"].default_value = (0.0, 0.0, math.radians(rotation))
        tex = nodes.new("ShaderNodeTexEnvironment")
        tex.image = bpy.data.images.load(str(path), check_existing=True)
        links.new(coords.outputs["Generated"], mapping.inputs["Vector"])
        links.new(mapping.outputs["Vector"], tex.inputs["Vector"])
        links.new(tex.outputs["Color"], bg.inputs["Color"])
        used["path"], used["rotation_deg"] = str(path), rotation
        used["image_size"] = list(tex.image.size)
    else:
        raise ValueError(f"environment kind must be 'sky' or 'hdri', got {kind!r}")
    return used
