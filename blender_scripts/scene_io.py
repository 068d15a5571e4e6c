"""Blender scene I/O for one asset: reset, import, the asset's own geometry, its clip, evaluated vertices.

Everything here needs bpy, imported lazily inside the functions so that `AssetError` and the constants can be
imported by code without Blender.

Asset geometry = objects of a geometry type (mesh, curve, surface, metaball, text) that are not importer
helpers. Helpers are: objects used as a bone's custom shape (`pose.bones[*].custom_shape`; the glTF
importer's 'Icosphere'), objects in the glTF importer's 'glTF_not_exported' collection, objects not in the
view layer, and objects hidden in the viewport or for rendering. Helpers, lights and cameras that come with
an asset are hidden from rendering, so the scene is lit only by our environment.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS = (".glb", ".gltf", ".fbx", ".obj", ".blend")
GEOMETRY_TYPES = ("MESH", "CURVE", "SURFACE", "META", "FONT")
ROOT_NAME = "sv4d2_root"
_GLTF_HELPER_COLLECTION = "glTF_not_exported"


class AssetError(Exception):
    """A bad asset (not a crash): recorded as a failure with a reason code and never retried.

    reason: one of missing_file, empty_file, unsupported_format, import_error, no_mesh, no_animation,
    varying_topology, bad_clip.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@contextlib.contextmanager
def captured_output(log_path: str | os.PathLike) -> Iterator[None]:
    """Send the process's file descriptors 1 and 2 (Blender's C-level prints) to `log_path` (appended)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def reset_scene() -> None:
    """An empty factory scene (no cube, camera or light)."""
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise AssetError("missing_file", f"{path} does not exist")
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise AssetError(
            "unsupported_format", f"extension {ext!r} of {path.name} not in {SUPPORTED_EXTENSIONS}"
        )
    size = path.stat().st_size
    if size == 0:
        raise AssetError("empty_file", f"{path} is zero bytes")
    if ext == ".glb":
        with open(path, "rb") as f:
            header = f.read(12)
        if len(header) < 12 or header[:4] != b"glTF":
            raise AssetError("import_error", f"{path.name}: not a GLB (bad magic {header[:4]!r})")
        declared = int.from_bytes(header[8:12], "little")
        if declared != size:
            raise AssetError(
                "import_error",
                f"{path.name}: truncated or corrupt GLB ({size} bytes, header says {declared})",
            )


def import_asset(path: str | os.PathLike) -> list[Any]:
    """Import an asset file into the current scene; returns the objects it added.

    .blend files are opened (they replace the scene). Raises AssetError for a missing, unsupported, empty,
    truncated or unreadable file.
    """
    import bpy

    path = Path(path)
    _check_file(path)
    ext = path.suffix.lower()
    before = set(bpy.data.objects)
    try:
        if ext in (".glb", ".gltf"):
            result = bpy.ops.import_scene.gltf(filepath=str(path))
        elif ext == ".fbx":
            result = bpy.ops.import_scene.fbx(filepath=str(path))
        elif ext == ".obj":
            result = bpy.ops.wm.obj_import(filepath=str(path))
        else:
            result = bpy.ops.wm.open_mainfile(filepath=str(path))
            before = set()
    except Exception as exc:  # Blender importers raise RuntimeError with the importer's message
        raise AssetError("import_error", f"{path.name}: {str(exc).strip()[:500]}") from exc
    if "FINISHED" not in result:
        raise AssetError("import_error", f"{path.name}: importer returned {sorted(result)}")
    return [o for o in bpy.data.objects if o not in before]


def helper_objects() -> set[Any]:
    """Objects in the scene that are importer helpers, not part of the asset (see module docstring)."""
    import bpy

    view_layer = bpy.context.view_layer
    helpers = set()
    for obj in bpy.data.objects:
        if obj.type == "ARMATURE" and obj.pose is not None:
            helpers.update(pb.custom_shape for pb in obj.pose.bones if pb.custom_shape is not None)
    for obj in bpy.data.objects:
        if any(c.name.startswith(_GLTF_HELPER_COLLECTION) for c in obj.users_collection):
            helpers.add(obj)
        elif obj.name not in view_layer.objects:
            helpers.add(obj)
        elif obj.hide_render or obj.hide_viewport or obj.hide_get():
            helpers.add(obj)
    return helpers


def asset_meshes() -> list[Any]:
    """The asset's own geometry objects, sorted by name (deterministic vertex order)."""
    import bpy

    helpers = helper_objects()
    return sorted(
        (o for o in bpy.data.objects if o.type in GEOMETRY_TYPES and o not in helpers), key=lambda o: o.name
    )


def prepare_asset_scene() -> list[Any]:
    """Hide helpers, lights and cameras from rendering; return the asset geometry (AssetError no_mesh)."""
    import bpy

    meshes = asset_meshes()
    keep = set(meshes)
    for obj in bpy.data.objects:
        if obj.type in GEOMETRY_TYPES and obj not in keep or obj.type in ("LIGHT", "CAMERA", "LIGHT_PROBE"):
            obj.hide_render = True
    if not meshes:
        raise AssetError("no_mesh", "the file contains no mesh (or only importer helper objects)")
    return meshes


@dataclass
class Clip:
    """The animation clip: action (the chosen action, or None), its range and the fps.

    actions: every action of the file that drives something (name, frame_range, owners), whichever is
    rendered, so that the manifest can list them all.
    """

    action: str | None
    frame_start: float
    frame_end: float
    fps: float
    actions_in_use: list[str]
    unassigned_actions: list[str] = field(default_factory=list)
    """Actions in the file that drive nothing (not rendered; named in the no_animation detail)."""
    actions: list[dict] = field(default_factory=list)

    @property
    def has_animation(self) -> bool:
        return self.action is not None and self.frame_end > self.frame_start

    def to_json(self) -> dict:
        return {
            "action": self.action,
            "action_frame_range": [self.frame_start, self.frame_end],
            "fps": self.fps,
            "actions_in_use": self.actions_in_use,
            "actions": self.actions,
        }


def _animation_owners() -> list[tuple[Any, Any]]:
    """(owner, animation_data) of every object and shape-key block that has animation data."""
    import bpy

    found = []
    for obj in bpy.data.objects:
        owners = [obj]
        data = getattr(obj, "data", None)
        if data is not None and getattr(data, "shape_keys", None) is not None:
            owners.append(data.shape_keys)
        for owner in owners:
            ad = owner.animation_data
            if ad is not None:
                found.append((owner, ad))
    return found


def _owned_actions(ad: Any) -> list[Any]:
    """The active action and the actions of the NLA strips (where the glTF importer stashes the others)."""
    acts = [ad.action] if ad.action is not None else []
    for track in ad.nla_tracks:
        for strip in track.strips:
            if strip.action is not None and strip.action not in acts:
                acts.append(strip.action)
    return acts


def _active_actions() -> list[Any]:
    """Actions driving the scene's objects or their shape keys (object or shape-key animation data)."""
    found = []
    for _owner, ad in _animation_owners():
        if ad.action is not None and ad.action not in found:
            found.append(ad.action)
    return found


def list_actions() -> list[dict]:
    """Every action that some object (or shape-key block) has, active or in its NLA stack, sorted by name."""
    owners: dict[str, list[str]] = {}
    ranges: dict[str, list[float]] = {}
    for owner, ad in _animation_owners():
        for act in _owned_actions(ad):
            owners.setdefault(act.name, []).append(owner.name)
            ranges[act.name] = [float(v) for v in act.frame_range]
    return [
        {"name": name, "frame_range": ranges[name], "owners": sorted(set(owners[name]))}
        for name in sorted(owners)
    ]


def _assign(ad: Any, owner: Any, action: Any) -> None:
    """Make `action` the active action of `ad`, with the slot meant for `owner` (Blender >= 4.4 slots)."""
    ad.action = action
    slots = list(getattr(action, "slots", ()) or ())
    if slots and getattr(ad, "action_slot", None) is None:
        named = [s for s in slots if s.name_display == owner.name] or slots
        ad.action_slot = named[0]


def apply_action(name: str) -> list[str]:
    """Play action `name`: its owners get it as their active action and every NLA track is muted.

    Owners without it stop (glTF semantics: an animation that does not play leaves its nodes at rest),
    except that actions already playing together with `name` (per-object actions of one take, as FBX and
    older .blend files have them) keep playing. Returns the actions now in use. AssetError bad_clip when no
    object has `name`.
    """
    import bpy

    target = bpy.data.actions.get(name)
    pairs = _animation_owners()
    if target is None or not any(target in _owned_actions(ad) for _o, ad in pairs):
        names = [a["name"] for a in list_actions()]
        raise AssetError("bad_clip", f"no action {name!r} in the file (actions: {names[:20]})")
    playing = {ad.action for _o, ad in pairs if ad.action is not None}
    together = target in playing
    for owner, ad in pairs:
        if target in _owned_actions(ad):
            if ad.action is not target:
                _assign(ad, owner, target)
        elif ad.action is not None and not (together and ad.action in playing):
            ad.action = None
        for track in ad.nla_tracks:
            track.mute = True
    bpy.context.view_layer.update()
    return sorted(a.name for a in _active_actions())


def _clip_of_active(fps: float, actions: list[dict]) -> Clip:
    import bpy

    scene = bpy.context.scene
    active = _active_actions()
    if not active:
        unassigned = sorted(a.name for a in bpy.data.actions)
        return Clip(None, float(scene.frame_start), float(scene.frame_end), fps, [], unassigned, actions)
    ranges = [tuple(float(v) for v in a.frame_range) for a in active]
    longest = max(range(len(active)), key=lambda i: (ranges[i][1] - ranges[i][0], active[i].name))
    start = min(r[0] for r in ranges)
    end = max(r[1] for r in ranges)
    return Clip(active[longest].name, start, end, fps, sorted(a.name for a in active), [], actions)


def find_clip(action: str | None = None) -> Clip:
    """The clip to render: action `action`, or (None) the longest of the file's actions.

    The clip spans the union of the frame ranges of the actions that play with it (a glTF animation that
    drives several nodes is one action with a slot per node; per-object actions of one take play together).
    Without any action the scene range is kept (and has_animation is False).
    """
    import bpy

    scene = bpy.context.scene
    fps = scene.render.fps / scene.render.fps_base
    actions = list_actions()
    if action is None and actions:
        spans = []
        for a in actions:
            apply_action(a["name"])
            clip = _clip_of_active(fps, actions)
            spans.append((clip.frame_end - clip.frame_start, a["name"]))
        action = max(spans)[1]
    if action is not None:
        apply_action(action)
        clip = _clip_of_active(fps, actions)
        clip.action = action
        return clip
    return _clip_of_active(fps, actions)


def set_frame(frame: float) -> None:
    """Evaluate the scene at a (possibly fractional) frame."""
    import bpy

    whole = math.floor(frame)
    bpy.context.scene.frame_set(int(whole), subframe=float(frame - whole))


def evaluated_vertices(meshes: list[Any]) -> list[np.ndarray]:
    """World-space evaluated (deformed) vertex positions per object, (n_i, 3) float64, at the current frame.

    Covers armature skinning, shape keys, modifiers and rigid (object/parent) animation.
    """
    import bpy

    depsgraph = bpy.context.evaluated_depsgraph_get()
    out = []
    for obj in meshes:
        ev = obj.evaluated_get(depsgraph)
        mesh = ev.to_mesh()
        try:
            co = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
            mesh.vertices.foreach_get("co", co)
            co = co.reshape(-1, 3)
            mw = np.array(ev.matrix_world, dtype=np.float64)
            out.append(co @ mw[:3, :3].T + mw[:3, 3])
        finally:
            ev.to_mesh_clear()
    return out


def bboxes_at_frames(meshes: list[Any], frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-space bounding box (mins (F, 3), maxs (F, 3)) of all asset vertices at each frame."""
    mins, maxs = [], []
    for f in frames:
        set_frame(float(f))
        pts = [v for v in evaluated_vertices(meshes) if len(v)]
        if not pts:
            raise AssetError("no_mesh", f"the asset's meshes have no vertices at frame {f}")
        allp = np.concatenate(pts)
        mins.append(allp.min(0))
        maxs.append(allp.max(0))
    return np.array(mins), np.array(maxs)


def mesh_counts(meshes: list[Any]) -> tuple[int, int]:
    """(vertices, faces) of the asset's evaluated geometry at the current frame."""
    import bpy

    depsgraph = bpy.context.evaluated_depsgraph_get()
    nv = nf = 0
    for obj in meshes:
        ev = obj.evaluated_get(depsgraph)
        mesh = ev.to_mesh()
        try:
            nv += len(mesh.vertices)
            nf += len(mesh.polygons)
        finally:
            ev.to_mesh_clear()
    return nv, nf


def add_root(frames: np.ndarray, scale: float, offset: np.ndarray, global_offsets: np.ndarray | None) -> Any:
    """Parent every top-level object under an empty `sv4d2_root` that applies the per-frame transform.

    World points become p' = scale * (p - global_offsets[f] + offset): the root's scale is `scale` and its
    location, keyframed (linear) at each rendered frame, is scale * (offset - global_offsets[f]). Children
    keep their world transforms (the root is at the identity when they are parented).
    """
    import bpy

    root = bpy.data.objects.new(ROOT_NAME, None)
    bpy.context.scene.collection.objects.link(root)
    for obj in list(bpy.data.objects):
        if obj is root or obj.parent is not None:
            continue
        obj.parent = root
        obj.matrix_parent_inverse.identity()
    root.scale = (scale, scale, scale)
    offset = np.asarray(offset, dtype=np.float64)
    for i, f in enumerate(frames):
        g = np.zeros(3) if global_offsets is None else np.asarray(global_offsets[i], dtype=np.float64)
        root.location = tuple(float(v) for v in scale * (offset - g))
        root.keyframe_insert("location", frame=float(f))
    if root.animation_data is not None and root.animation_data.action is not None:
        # linear: a subframe evaluated a float rounding away from a key still gets (almost) the key's value
        set_interpolation(root.animation_data.action, "LINEAR")
    return root


def action_fcurves(action: Any) -> list[Any]:
    """All F-curves of an action (legacy `action.fcurves`, or the channel bags of a slotted action)."""
    fcurves = list(getattr(action, "fcurves", None) or [])
    if not fcurves:
        fcurves = [
            fc
            for layer in action.layers
            for strip in layer.strips
            for cb in strip.channelbags
            for fc in cb.fcurves
        ]
    return fcurves


def set_interpolation(action: Any, interpolation: str, data_path: str | None = None) -> None:
    """Set the interpolation of every keyframe of `action` (only F-curves of `data_path`, when given)."""
    for fc in action_fcurves(action):
        if data_path is None or fc.data_path == data_path:
            for kp in fc.keyframe_points:
                kp.interpolation = interpolation


def select_frames(
    clip: Clip,
    mode: str,
    num_frames: int,
    duration_s: float,
    static_frame: float | None,
    clip_start: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Source frames (F,) and their times (F,) in seconds for a job.

    4d: F frames uniformly over the clip from `clip_start` (default: its start) (frames.sample_frames);
    AssetError no_animation without a clip.
    static: one frame, `static_frame` if given, else the clip's first frame (the scene's start without one).
    """
    from blender_scripts.frames import sample_frames

    if mode == "static":
        frame = float(static_frame) if static_frame is not None else float(clip.frame_start)
        return np.array([frame]), np.zeros(1)
    if not clip.has_animation:
        if clip.action is not None:
            detail = f"action {clip.action} has no duration"
        elif clip.unassigned_actions:
            names = clip.unassigned_actions[:5]
            detail = f"no action drives the asset ({len(clip.unassigned_actions)} unassigned: {names})"
        else:
            detail = "no action drives the asset"
        raise AssetError("no_animation", detail)
    try:
        start = clip.frame_start if clip_start is None else float(clip_start)
        if not clip.frame_start - 1e-6 <= start < clip.frame_end:
            raise ValueError(f"clip_start {start} outside the action [{clip.frame_start}, {clip.frame_end}]")
        sample = sample_frames(start, clip.frame_end, clip.fps, num_frames, duration_s)
    except ValueError as exc:
        raise AssetError("bad_clip", str(exc)) from exc
    return sample.source_frames, sample.times_s


@dataclass
class LoadedAsset:
    meshes: list[Any]
    clip: Clip
    source_frames: np.ndarray
    times_s: np.ndarray
    import_s: float
    single_sided: int = 0
    """Materials whose back faces were made transparent (glTF doubleSided false)."""
    viewer_fix: str | None = None
    """What apply_viewer_transform did: None (no orphan skin), "applied", or why not."""

    def frames_json(self) -> dict:
        d = self.clip.to_json()
        d["source_frames"] = self.source_frames.tolist()
        d["times_s"] = self.times_s.tolist()
        return d


def load_asset(job: Any, log_path: str) -> LoadedAsset:
    """Reset the scene, import the job's asset (importer output to `log_path`), find its meshes, the clip
    (`job.action`, else the longest) and the frames (from `job.clip_start`); single-sided materials get
    transparent back faces."""
    import time

    import bpy

    r = job.render
    t0 = time.perf_counter()
    with captured_output(log_path):
        reset_scene()
        import_asset(job.asset_path)
    import_s = time.perf_counter() - t0
    meshes = prepare_asset_scene()
    single_sided = honour_backface_culling(meshes)
    viewer_fix = None
    if getattr(r, "orphan_skeleton", "gltf") == "viewer":
        viewer_fix = apply_viewer_transform(job.asset_path)
    clip = find_clip(job.action)
    frames, times = select_frames(
        clip, r.mode, r.num_frames, r.clip_duration_s, job.static_frame, job.clip_start
    )
    scene = bpy.context.scene
    scene.frame_start = min(scene.frame_start, math.floor(frames.min()))
    scene.frame_end = max(scene.frame_end, math.ceil(frames.max()))
    return LoadedAsset(meshes, clip, frames, times, import_s, single_sided, viewer_fix)


BACKFACE_NODE = "sv4d2_backface"


def honour_backface_culling(meshes: list[Any]) -> int:
    """Make back faces transparent in Cycles for materials marked single-sided; returns how many changed.

    The glTF importer maps `doubleSided: false` to `use_backface_culling`, which only EEVEE and the
    viewport honour: Cycles shades the back faces (black, seen from inside). Each such material's surface
    becomes mix(surface, transparent, Backfacing), which keeps front faces exactly as authored.
    """
    done = 0
    seen: set[str] = set()
    for obj in meshes:
        for slot in getattr(obj, "material_slots", ()):
            mat = slot.material
            if mat is None or mat.name in seen or not mat.use_backface_culling or not mat.use_nodes:
                continue
            seen.add(mat.name)
            tree = mat.node_tree
            outputs = [n for n in tree.nodes if n.type == "OUTPUT_MATERIAL"]
            if not outputs or tree.nodes.get(BACKFACE_NODE) is not None:
                continue
            out = next((n for n in outputs if n.is_active_output), outputs[0])
            links = list(out.inputs["Surface"].links)
            if not links:
                continue
            source = links[0].from_socket
            geo = tree.nodes.new("ShaderNodeNewGeometry")
            transparent = tree.nodes.new("ShaderNodeBsdfTransparent")
            mix = tree.nodes.new("ShaderNodeMixShader")
            mix.name = BACKFACE_NODE
            tree.links.new(geo.outputs["Backfacing"], mix.inputs["Fac"])
            tree.links.new(source, mix.inputs[1])
            tree.links.new(transparent.outputs["BSDF"], mix.inputs[2])
            tree.links.new(mix.outputs["Shader"], out.inputs["Surface"])
            done += 1
    return done


VIEWER_BONE = "sv4d2_viewer_root"


def apply_viewer_transform(asset_path: str) -> str | None:
    """Pose a glTF skin whose joints are in no scene as three.js viewers show it (gltf_checks docstring).

    A new root bone (rest: identity) becomes the parent of the armature's root bones, and its pose carries
    the skinned mesh node's world matrix, so the deformed mesh turns with it while the importer's other
    objects (parented to the armature object, not to bones) stay put. Returns None when the file has no
    orphan skin, "applied", or the reason it was not ("ambiguous": not exactly one such skin/armature).
    """
    import bpy
    from mathutils import Matrix

    from blender_scripts.gltf_checks import orphan_skin_viewer_matrix, orphan_skins, read_gltf_json

    gltf = read_gltf_json(asset_path)
    if gltf is None or not orphan_skins(gltf):
        return None
    matrix = orphan_skin_viewer_matrix(gltf)
    orphan_collections = [c for c in bpy.data.collections if c.name.startswith("Orphan Nodes")]
    armatures = [
        o for c in orphan_collections for o in c.objects if o.type == "ARMATURE" and o.parent is None
    ]
    if matrix is None or len(armatures) != 1 or len(orphan_skins(gltf)) != 1:
        return "ambiguous"
    if np.allclose(matrix, np.eye(4), atol=1e-9):
        return "identity"
    arm = armatures[0]
    view_layer = bpy.context.view_layer
    scene_root = bpy.context.scene.collection
    linked = arm.name not in view_layer.objects  # the importer's orphan collection is excluded
    if linked:  # edit mode needs the object in the view layer, for the edit only
        scene_root.objects.link(arm)
    view_layer.objects.active = arm
    bpy.ops.object.mode_set(mode="EDIT")
    bones = arm.data.edit_bones
    roots = [b for b in bones if b.parent is None]
    fix = bones.new(VIEWER_BONE)
    fix.head, fix.tail, fix.roll = (0.0, 0.0, 0.0), (0.0, 0.1, 0.0), 0.0  # rest = identity
    fix.use_deform = False
    for b in roots:
        b.use_connect = False
        b.parent = fix
    bpy.ops.object.mode_set(mode="OBJECT")
    if linked:
        scene_root.objects.unlink(arm)
    pose = arm.pose.bones[VIEWER_BONE]
    pose.matrix_basis = Matrix(np.asarray(matrix, dtype=np.float64).tolist())
    view_layer.update()
    return "applied"
