"""Deterministic procedural animated assets (the demo's embedded asset source), exported as .glb.

    .venv/bin/python -m blender_scripts.procedural_assets --out DIR --seed S [--only NAME ...]

Builds each asset in a fresh Blender scene from the seed and exports it as `DIR/{name}.glb` with its
animation (`export_animation_mode='ACTIVE_ACTIONS'`: every assigned action, object, bone or shape-key,
becomes one glTF animation), then writes `DIR/index.json`: a list of
{name, file, kind, expected, license: "cc0", num_frames, fps, description}.

Assets (the animation kinds found in Objaverse, plus cases for the curation filters):
    walker        skinned mesh driven by an armature: a four-legged creature, legs swinging, whose root also
                  drifts about one body length along +X over the clip        expected: render
    morph         shape-key (morph target) animation of a blob               expected: render
    articulated   rigid parented parts with keyframed rotations (a desk lamp) expected: render
    textured      a tumbling, hopping box with a procedural packed image texture   expected: render
    still_breeze  a tree whose crown sways by a fraction of a degree (< 0.5% of its size)
                                                                             expected: small_motion
    balloon       a balloon that grows 3x over the clip                      expected: inconsistent_scale
    statue        no animation at all                                        expected: static
Clips are 24-48 frames at 24 fps; each asset has at most a few thousand vertices. The same seed gives the
same geometry, colours and motion.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from blender_scripts.scene_io import set_interpolation

log = logging.getLogger(__name__)

FPS = 24
PALETTE = [
    (0.80, 0.25, 0.15),
    (0.15, 0.45, 0.80),
    (0.95, 0.75, 0.20),
    (0.20, 0.65, 0.30),
    (0.60, 0.30, 0.70),
    (0.90, 0.50, 0.60),
    (0.35, 0.25, 0.15),
    (0.85, 0.85, 0.80),
]


# ---------------------------------------------------------------- small bpy helpers


def _colours(rng: np.random.Generator, n: int) -> list[tuple[float, float, float]]:
    idx = rng.permutation(len(PALETTE))[:n]
    return [PALETTE[i] for i in idx]


def _material(name: str, rgb: tuple[float, float, float], roughness: float = 0.6) -> Any:
    import bpy

    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    bsdf = mat.node_tree.nodes["Principled BSDF"]
    bsdf.inputs["Base Color"].default_value = (*rgb, 1.0)
    bsdf.inputs["Roughness"].default_value = roughness
    return mat


class _PartBuilder:
    """Accumulates primitive parts in one bmesh, remembering each part's material and vertex group."""

    def __init__(self) -> None:
        import bmesh

        self.bm = bmesh.new()
        self.bm.loops.layers.uv.new("UVMap")  # calc_uvs below fills it only if the layer exists
        # BMVert references, not indices: bmesh reuses the slots of vertices an op deletes (the UV sphere
        # merges its poles), so new vertices are not appended in order and index ranges would be wrong
        self.groups: dict[str, list[Any]] = {}

    def add(self, kind: str, matrix: Any, material: int = 0, group: str | None = None, **kw: Any) -> None:
        import bmesh

        bm = self.bm
        if kind == "cube":
            made = bmesh.ops.create_cube(bm, size=1.0, matrix=matrix, calc_uvs=True)
        elif kind == "sphere":
            made = bmesh.ops.create_uvsphere(
                bm,
                u_segments=kw.get("u", 16),
                v_segments=kw.get("v", 8),
                radius=0.5,
                matrix=matrix,
                calc_uvs=True,
            )
        elif kind == "ico":
            made = bmesh.ops.create_icosphere(
                bm, subdivisions=kw.get("subdiv", 2), radius=0.5, matrix=matrix, calc_uvs=True
            )
        elif kind == "cone":  # radius1 at -z/2, radius2 at +z/2, depth 1
            made = bmesh.ops.create_cone(
                bm,
                cap_ends=True,
                segments=kw.get("segments", 12),
                radius1=kw.get("r1", 0.5),
                radius2=kw.get("r2", 0.5),
                depth=1.0,
                matrix=matrix,
                calc_uvs=True,
            )
        else:
            raise ValueError(f"unknown part kind {kind!r}")
        verts = [v for v in made["verts"] if v.is_valid]
        for f in {f for v in verts for f in v.link_faces}:
            f.material_index = material
        if group is not None:
            self.groups.setdefault(group, []).extend(verts)

    def to_object(self, name: str, materials: list[Any]) -> Any:
        import bpy

        mesh = bpy.data.meshes.new(name)
        self.bm.verts.index_update()  # iteration order = the order to_mesh writes
        groups = {g: sorted(v.index for v in verts) for g, verts in self.groups.items()}
        self.bm.to_mesh(mesh)
        self.bm.free()
        for m in materials:
            mesh.materials.append(m)
        obj = bpy.data.objects.new(name, mesh)
        bpy.context.scene.collection.objects.link(obj)
        for gname, idx in groups.items():
            vg = obj.vertex_groups.new(name=gname)
            vg.add(idx, 1.0, "REPLACE")
        return obj


def _trs(loc: tuple = (0, 0, 0), scale: tuple = (1, 1, 1), rot_deg: tuple = (0, 0, 0)) -> Any:
    from mathutils import Euler, Matrix

    rot = Euler([math.radians(a) for a in rot_deg]).to_matrix().to_4x4()
    return Matrix.Translation(loc) @ rot @ Matrix.Diagonal((*scale, 1.0))


def _part_object(name: str, parts: list[tuple], materials: list[Any], parent: Any = None, location=(0, 0, 0)):
    builder = _PartBuilder()
    for kind, matrix, mat_index, kw in parts:
        builder.add(kind, matrix, mat_index, **kw)
    obj = builder.to_object(name, materials)
    obj.parent = parent
    obj.location = location
    return obj


def _set_scene_range(num_frames: int) -> None:
    import bpy

    scene = bpy.context.scene
    scene.render.fps = FPS
    scene.render.fps_base = 1.0
    scene.frame_start = 1
    scene.frame_end = num_frames


def _keyframe_rotation(obj: Any, frames: np.ndarray, angles_deg: np.ndarray, axis: int) -> None:
    obj.rotation_mode = "XYZ"
    for f, a in zip(frames, angles_deg, strict=True):
        rot = list(obj.rotation_euler)
        rot[axis] = math.radians(float(a))
        obj.rotation_euler = rot
        obj.keyframe_insert("rotation_euler", index=axis, frame=float(f))


# ---------------------------------------------------------------- the assets


def build_walker(rng: np.random.Generator) -> dict:
    """Four-legged creature skinned to an armature; legs swing, the armature root drifts along +X."""
    import bpy
    from mathutils import Quaternion, Vector

    n = 48
    _set_scene_range(n)
    body_c, leg_c, head_c = _colours(rng, 3)
    mats = [_material("body", body_c), _material("legs", leg_c), _material("head", head_c)]
    length, width, height = 1.0, 0.4 * rng.uniform(0.9, 1.1), 0.35
    hip_z, leg_len = 0.6, 0.55
    parts = _PartBuilder()
    parts.add("cube", _trs((0, 0, hip_z + 0.1), (length, width, height)), 0, "body")
    parts.add("sphere", _trs((0.62, 0, hip_z + 0.3), (0.32, 0.3, 0.3)), 2, "body", u=16, v=8)
    parts.add("cone", _trs((-0.62, 0, hip_z + 0.2), (1, 1, 0.4), (0, -60, 0)), 1, "body", r1=0.06, r2=0.02)
    hips = {
        "leg_fl": (0.35, 0.15),
        "leg_fr": (0.35, -0.15),
        "leg_bl": (-0.35, 0.15),
        "leg_br": (-0.35, -0.15),
    }
    for name, (x, y) in hips.items():
        parts.add("cone", _trs((x, y, hip_z - leg_len / 2), (1, 1, leg_len)), 1, name, r1=0.06, r2=0.08)
    mesh_obj = parts.to_object("walker_body", mats)

    arm_data = bpy.data.armatures.new("walker_rig")
    arm = bpy.data.objects.new("walker_rig", arm_data)
    bpy.context.scene.collection.objects.link(arm)
    bpy.context.view_layer.objects.active = arm
    bpy.ops.object.mode_set(mode="EDIT")
    root = arm_data.edit_bones.new("body")
    root.head, root.tail = (-0.3, 0, hip_z + 0.1), (0.3, 0, hip_z + 0.1)
    for name, (x, y) in hips.items():
        b = arm_data.edit_bones.new(name)
        b.head, b.tail = (x, y, hip_z), (x, y, hip_z - leg_len)
        b.parent = root
    bpy.ops.object.mode_set(mode="OBJECT")
    mesh_obj.parent = arm
    mod = mesh_obj.modifiers.new("Armature", "ARMATURE")
    mod.object = arm

    frames = np.arange(1, n + 1)
    # two strides over the clip; the phase offset keeps F uniform samples off the zero crossings (F = 4
    # end-excluded samples of two strides would all land on legs at rest)
    phase = 2 * np.pi * 2 * (frames - 1) / (n - 1) + np.pi / 3
    amp = math.radians(rng.uniform(25, 35))
    world_axis = Vector((0, 1, 0))  # legs swing forward/back in the XZ plane
    for name in hips:
        pb = arm.pose.bones[name]
        pb.rotation_mode = "QUATERNION"
        local_axis = arm_data.bones[name].matrix_local.to_3x3().inverted() @ world_axis
        sign = 1.0 if name in ("leg_fl", "leg_br") else -1.0  # diagonal gait
        for f, ph in zip(frames[::2], phase[::2], strict=True):
            pb.rotation_quaternion = Quaternion(local_axis, sign * amp * math.sin(ph))
            pb.keyframe_insert("rotation_quaternion", frame=float(f))
    drift = length * rng.uniform(0.9, 1.1)
    for f, x in ((1, -drift / 2), (n, drift / 2)):
        arm.location = (x, 0, 0)
        arm.keyframe_insert("location", frame=float(f))
    set_interpolation(arm.animation_data.action, "LINEAR", "location")  # a steady walk, no ease in/out
    return {"kind": "skinned", "expected": "render", "num_frames": n, "description": "walker, root drift"}


def build_morph(rng: np.random.Generator) -> dict:
    """A blob with two shape keys (bulge, stretch) keyed in and out."""
    n = 36
    _set_scene_range(n)
    c1, c2 = _colours(rng, 2)
    parts = [
        ("sphere", _trs((0, 0, 0.5)), 0, {"u": 32, "v": 16}),
        ("cube", _trs((0, 0, 0.05), (0.8, 0.8, 0.1)), 1, {}),
    ]
    obj = _part_object("morph_blob", parts, [_material("blob", c1), _material("plate", c2)])
    obj.shape_key_add(name="Basis")
    co = np.array([v.co[:] for v in obj.data.vertices])
    on_blob = co[:, 2] > 0.11
    centre = np.array([0, 0, 0.5])
    k = rng.integers(3, 5)
    bulge = obj.shape_key_add(name="bulge")
    stretch = obj.shape_key_add(name="stretch")
    for i, p in enumerate(co):
        if not on_blob[i]:
            continue
        d = p - centre
        az = math.atan2(d[1], d[0])
        bulge.data[i].co = tuple(centre + d * (1.0 + 0.35 * max(0.0, math.cos(k * az))))
        stretch.data[i].co = tuple(centre + d * np.array([0.75, 0.75, 1.6]))
    key_frames = np.linspace(1, n, 7)
    for sk, vals in ((bulge, [0, 1, 0, 1, 0, 1, 0]), (stretch, [0, 0, 1, 0, 0.5, 1, 0])):
        for f, v in zip(key_frames, vals, strict=True):
            sk.value = v
            sk.keyframe_insert("value", frame=float(round(f)))
    return {"kind": "shape_key", "expected": "render", "num_frames": n, "description": "shape-key blob"}


def build_articulated(rng: np.random.Generator) -> dict:
    """A desk lamp: base, turning shoulder, lower arm, upper arm and head, parented, with keyed rotations."""
    n = 36
    _set_scene_range(n)
    cols = _colours(rng, 3)
    mats = [_material("metal", cols[0], 0.3), _material("arm", cols[1]), _material("shade", cols[2])]
    base = _part_object(
        "lamp_base", [("cone", _trs((0, 0, 0.05), (1, 1, 0.1)), 0, {"r1": 0.3, "r2": 0.25})], mats
    )
    shoulder = _part_object(
        "lamp_shoulder", [("sphere", _trs(scale=(0.16, 0.16, 0.16)), 0, {})], mats, base, (0, 0, 0.12)
    )
    lower = _part_object(
        "lamp_lower", [("cube", _trs((0, 0, 0.3), (0.07, 0.07, 0.6)), 1, {})], mats, shoulder
    )
    upper = _part_object(
        "lamp_upper", [("cube", _trs((0, 0, 0.25), (0.06, 0.06, 0.5)), 1, {})], mats, lower, (0, 0, 0.6)
    )
    _part_object(
        "lamp_head",
        [("cone", _trs((0, 0, 0.1), (1, 1, 0.25), (0, 0, 0)), 2, {"r1": 0.08, "r2": 0.2, "segments": 16})],
        mats,
        upper,
        (0, 0, 0.5),
    )
    frames = np.arange(1, n + 1, 3)
    t = (frames - 1) / (n - 1)
    ph = rng.uniform(0, 2 * np.pi, 3)
    _keyframe_rotation(shoulder, frames, 70 * np.sin(2 * np.pi * t + ph[0]), axis=2)
    _keyframe_rotation(lower, frames, 20 + 25 * np.sin(2 * np.pi * t + ph[1]), axis=1)
    _keyframe_rotation(upper, frames, 60 + 35 * np.sin(4 * np.pi * t + ph[2]), axis=1)
    return {"kind": "articulated", "expected": "render", "num_frames": n, "description": "desk lamp"}


def _procedural_texture(rng: np.random.Generator, size: int = 64) -> Any:
    """A packed RGBA image: a checker of two palette colours under a diagonal gradient and a stripe."""
    import bpy

    c1, c2, c3 = (np.array(c) for c in _colours(rng, 3))
    yy, xx = np.mgrid[0:size, 0:size] / size
    checker = ((np.floor(xx * 8) + np.floor(yy * 8)) % 2)[..., None]
    rgb = checker * c1 + (1 - checker) * c2
    rgb = rgb * (0.7 + 0.3 * (xx + yy)[..., None] / 2)
    stripe = (np.abs(yy - 0.5) < 0.06)[..., None]
    rgb = np.where(stripe, c3, rgb)
    rgba = np.concatenate([np.clip(rgb, 0, 1), np.ones((size, size, 1))], axis=-1).astype(np.float32)
    img = bpy.data.images.new("procedural_texture", size, size, alpha=False)
    img.pixels.foreach_set(rgba.ravel())
    img.pack()
    return img


def build_textured(rng: np.random.Generator) -> dict:
    """A box with a packed procedural image texture, tumbling and hopping (rigid animation)."""
    import bpy

    n = 30
    _set_scene_range(n)
    img = _procedural_texture(rng)
    mat = bpy.data.materials.new("textured")
    mat.use_nodes = True
    nodes = mat.node_tree.nodes
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = img
    mat.node_tree.links.new(tex.outputs["Color"], nodes["Principled BSDF"].inputs["Base Color"])
    body = _PartBuilder()
    body.add("sphere", _trs(scale=(0.75, 0.75, 0.75)), 0, u=24, v=12)
    body.add("cube", _trs(scale=(0.6, 0.6, 0.6)), 0)
    obj = body.to_object("textured_box", [mat])
    frames = np.arange(1, n + 1, 2)
    t = (frames - 1) / (n - 1)
    obj.rotation_mode = "XYZ"
    for f, tt in zip(frames, t, strict=True):
        obj.location = (0.0, 0.0, 0.3 + 0.5 * abs(math.sin(2 * math.pi * tt)))
        obj.rotation_euler = (math.radians(30 * math.sin(2 * math.pi * tt)), 0.0, 2 * math.pi * tt)
        obj.keyframe_insert("location", frame=float(f))
        obj.keyframe_insert("rotation_euler", frame=float(f))
    return {"kind": "textured", "expected": "render", "num_frames": n, "description": "textured tumbling box"}


def _tree(rng: np.random.Generator) -> tuple[Any, Any]:
    trunk_c, crown_c = PALETTE[6], _colours(rng, 1)[0]
    mats = [_material("bark", trunk_c), _material("leaves", crown_c)]
    trunk = _part_object(
        "tree_trunk", [("cone", _trs((0, 0, 0.6), (1, 1, 1.2)), 0, {"r1": 0.12, "r2": 0.08})], mats
    )
    crown = _part_object(
        "tree_crown",
        [("ico", _trs((0, 0, 0.45), (1.0, 1.0, 1.1)), 1, {"subdiv": 2})],
        mats,
        trunk,
        (0, 0, 1.15),
    )
    return trunk, crown


def build_still_breeze(rng: np.random.Generator) -> dict:
    """A tree whose crown sways by +-0.3 degrees about its base: animated, but the motion is tiny."""
    n = 36
    _set_scene_range(n)
    _, crown = _tree(rng)
    frames = np.arange(1, n + 1, 3)
    _keyframe_rotation(crown, frames, 0.3 * np.sin(2 * np.pi * (frames - 1) / (n - 1)), axis=0)
    return {
        "kind": "articulated",
        "expected": "small_motion",
        "num_frames": n,
        "description": "tree, tiny sway",
    }


def build_balloon(rng: np.random.Generator) -> dict:
    """A balloon on a string that grows to 3x its size over the clip (inconsistent scale)."""
    n = 36
    _set_scene_range(n)
    c = _colours(rng, 1)[0]
    parts = [
        ("sphere", _trs((0, 0, 0.5), (0.8, 0.8, 0.95)), 0, {"u": 24, "v": 12}),
        ("cone", _trs((0, 0, -0.25), (1, 1, 0.6)), 1, {"r1": 0.01, "r2": 0.01, "segments": 6}),
    ]
    obj = _part_object("balloon", parts, [_material("rubber", c, 0.3), _material("string", PALETTE[7])])
    for f, s in ((1, 1.0), (n, 3.0)):
        obj.scale = (s, s, s)
        obj.keyframe_insert("scale", frame=float(f))
    set_interpolation(obj.animation_data.action, "LINEAR", "scale")
    return {
        "kind": "rigid",
        "expected": "inconsistent_scale",
        "num_frames": n,
        "description": "balloon grows 3x",
    }


def build_statue(rng: np.random.Generator) -> dict:
    """A figure on a pedestal, without any animation."""
    n = 24
    _set_scene_range(n)
    cols = _colours(rng, 3)
    mats = [_material("stone", cols[0]), _material("figure", cols[1]), _material("head", cols[2])]
    parts = [
        ("cube", _trs((0, 0, 0.15), (0.6, 0.6, 0.3)), 0, {}),
        ("cone", _trs((0, 0, 0.6), (1, 1, 0.6)), 1, {"r1": 0.2, "r2": 0.12, "segments": 16}),
        ("sphere", _trs((0, 0, 1.02), (0.25, 0.25, 0.28)), 2, {}),
        ("cube", _trs((0.18, 0, 0.75), (0.3, 0.06, 0.06), (0, -30, 0)), 1, {}),
    ]
    _part_object("statue", parts, mats)
    return {"kind": "static", "expected": "static", "num_frames": 0, "description": "statue, no animation"}


BUILDERS: dict[str, Callable[[np.random.Generator], dict]] = {
    "walker": build_walker,
    "morph": build_morph,
    "articulated": build_articulated,
    "textured": build_textured,
    "still_breeze": build_still_breeze,
    "balloon": build_balloon,
    "statue": build_statue,
}


def export_glb(path: Path) -> None:
    """Export the whole scene as .glb with every assigned action (object, bone and shape-key animation)."""
    import bpy

    bpy.ops.export_scene.gltf(
        filepath=str(path),
        export_format="GLB",
        export_animation_mode="ACTIVE_ACTIONS",  # NLA/"ACTIONS" mode drops shape-key animation
        export_apply=False,  # applying modifiers would bake away the shape keys
        export_yup=True,
    )


def build_assets(out_dir: str | os.PathLike, seed: int, only: list[str] | None = None) -> list[dict]:
    """Build, export and index the assets (in-process bpy; resets the current scene for each asset)."""
    from blender_scripts.scene_io import captured_output, reset_scene

    names = list(BUILDERS) if not only else list(only)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise ValueError(f"unknown procedural asset(s) {unknown}; known: {list(BUILDERS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, name in enumerate(BUILDERS):
        if name not in names:
            continue
        rng = np.random.default_rng([seed, i])
        path = out / f"{name}.glb"
        tmp = out / f".{name}.tmp.glb"
        with captured_output(out / "procedural.log"):
            reset_scene()
            meta = BUILDERS[name](rng)
            export_glb(tmp)
        os.replace(tmp, path)
        entries.append({"name": name, "file": path.name, "license": "cc0", "fps": FPS, **meta})
        log.info("built %s (%s)", path, meta["kind"])
    index = out / "index.json"
    tmp_index = out / "index.json.tmp"
    tmp_index.write_text(json.dumps(entries, indent=1))
    os.replace(tmp_index, index)
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output folder for the .glb files and index.json")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (same seed, same assets)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"build only these, among {list(BUILDERS)}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    t0 = time.perf_counter()
    try:
        entries = build_assets(args.out, args.seed, args.only)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    log.info("%d assets in %.1f s -> %s", len(entries), time.perf_counter() - t0, args.out)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
