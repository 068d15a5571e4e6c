"""Exports: per-frame meshes and the two animated GLBs re-import (pygltflib, trimesh, Blender) and animate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fit4d.export.gltf import to_gltf_axes, write_frames_glb, write_morph_glb
from fit4d.export.mesh import canonical_mesh, deform_to_frame, frame_mesh, marching_cubes, write_ply
from fit4d.fields import DynamicNeRF
from profiles.schema import Fit4DFieldConfig
from tests.gltf_assets import read_accessor

RADIUS, SHIFT, FRAMES = 0.25, 0.2, 3


class Translate(nn.Module):
    """d(x, t) = (-SHIFT t, 0, 0) in box units: the object moves +SHIFT * bound * t along x."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([-SHIFT * t, torch.zeros_like(t), torch.zeros_like(t)], -1)


class SphereNeRF(DynamicNeRF):
    """Canonical density: a sphere (sigma 100 inside, smooth edge); colour red-to-green along x."""

    def canonical_features(self, xc):
        r = xc.norm(dim=-1)
        sigma = 100.0 * torch.sigmoid((RADIUS - r) / 0.01)
        geo = torch.zeros(xc.shape[0], self.geo_feat_dim)
        return sigma, geo

    def forward(self, x, t):
        xc = self.canonical(x, t)
        return self.canonical_features(xc)[0], self.canonical_color(xc)

    def canonical_color(self, xc):
        u = (xc[:, :1] / RADIUS).clamp(-1, 1) * 0.5 + 0.5
        return torch.cat([1 - u, u, torch.zeros_like(u)], -1)


def sphere_nerf(deformation: nn.Module) -> SphereNeRF:
    """The analytic sphere moved by `deformation` (its own field's networks are tiny and unused)."""
    cfg = Fit4DFieldConfig(
        num_levels=2, log2_hashmap_size=8, base_resolution=2, max_resolution=4, hidden_dim=8
    )
    model = SphereNeRF(cfg)
    model.deformation = deformation
    return model


@pytest.fixture(scope="module")
def sphere_model():
    return sphere_nerf(Translate())


def test_marching_cubes_sphere_radius_and_outward_faces():
    n = 40
    axis = np.linspace(-0.5, 0.5, n)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    density = 10.0 * (np.sqrt(x**2 + y**2 + z**2) < 0.3)
    v, f = marching_cubes(density.astype(np.float32), 5.0, 0.5)
    r = np.linalg.norm(v, axis=1)
    assert abs(r.mean() - 0.3) < 0.02
    normals = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    centres = v[f].mean(1)
    assert ((normals * centres).sum(1) > 0).mean() > 0.99  # outward winding
    with pytest.raises(ValueError, match="no surface"):
        marching_cubes(np.zeros((8, 8, 8), np.float32), 5.0, 0.5)


def test_frame_meshes_follow_the_deformation(sphere_model, tmp_path):
    shift = SHIFT * sphere_model.bound
    for f in range(FRAMES):
        t = f / (FRAMES - 1)
        mesh = frame_mesh(sphere_model, t, 48, 50.0)
        assert mesh.vertices[:, 0].mean() == pytest.approx(shift * t, abs=0.01)
        assert np.linalg.norm(mesh.vertices - [shift * t, 0, 0], axis=1).mean() == pytest.approx(
            RADIUS, abs=0.015
        )
    write_ply(tmp_path / "f.ply", mesh)
    import trimesh

    back = trimesh.load(tmp_path / "f.ply", process=False)
    assert len(back.vertices) == len(mesh.vertices) and back.visual.vertex_colors.shape[0] == len(
        mesh.vertices
    )


def test_inverse_deformation_residual(sphere_model):
    canon = canonical_mesh(sphere_model, 32, 50.0)
    pos, resid = deform_to_frame(sphere_model, canon.vertices, 1.0)
    assert resid < 1e-5
    np.testing.assert_allclose(
        pos - canon.vertices, np.tile([SHIFT * sphere_model.bound, 0, 0], (len(pos), 1)), atol=1e-5
    )


def build_glbs(model, tmp_path):
    canon = canonical_mesh(model, 32, 50.0)
    positions = np.stack([deform_to_frame(model, canon.vertices, f / (FRAMES - 1))[0] for f in range(FRAMES)])
    frames = [frame_mesh(model, f / (FRAMES - 1), 32, 50.0) for f in range(FRAMES)]
    write_morph_glb(tmp_path / "morph.glb", canon, positions, fps=10)
    write_frames_glb(tmp_path / "frames.glb", frames, fps=10)
    return canon, positions, frames


def test_glbs_reimport_with_pygltflib_and_animate(sphere_model, tmp_path):
    import pygltflib

    canon, positions, frames = build_glbs(sphere_model, tmp_path)
    g = pygltflib.GLTF2().load(str(tmp_path / "morph.glb"))
    assert g.asset.version == "2.0"

    def read(acc_idx):
        return read_accessor(g, acc_idx)

    prim = g.meshes[0].primitives[0]
    base = read(prim.attributes.POSITION)
    assert len(prim.targets) == FRAMES - 1
    anim = g.animations[0]
    assert anim.channels[0].target.path == "weights"
    times = read(anim.samplers[0].input)
    weights = read(anim.samplers[0].output).reshape(FRAMES, FRAMES - 1)
    np.testing.assert_allclose(times, np.arange(FRAMES) / 10)
    for f in range(FRAMES):
        # play frame f: base + sum_k w_k target_k must equal the deformed canonical mesh at frame f
        pos = base + sum(weights[f, k] * read(prim.targets[k]["POSITION"]) for k in range(FRAMES - 1))
        np.testing.assert_allclose(pos, to_gltf_axes(positions[f]), atol=1e-5)
        # and lie on the per-frame marching-cubes surface (same sphere, own topology)
        ref = to_gltf_axes(frames[f].vertices)
        nearest = np.sqrt(((pos[::7, None] - ref[None]) ** 2).sum(-1)).min(1)
        assert nearest.max() < 2 * sphere_model.bound / 31  # within one marching-cubes cell
    last = base + read(prim.targets[-1]["POSITION"])
    assert np.abs(last - base).max() > 0.1  # it moves

    g2 = pygltflib.GLTF2().load(str(tmp_path / "frames.glb"))
    assert len(g2.nodes) == FRAMES + 1 and g2.nodes[0].children == list(range(1, FRAMES + 1))
    anim2 = g2.animations[0]
    assert all(s.interpolation == "STEP" for s in anim2.samplers)
    assert [c.target.path for c in anim2.channels] == ["scale"] * FRAMES


def test_glbs_load_in_trimesh(sphere_model, tmp_path):
    import trimesh

    canon, _, frames = build_glbs(sphere_model, tmp_path)
    scene = trimesh.load(tmp_path / "morph.glb")
    assert sum(len(m.vertices) for m in scene.geometry.values()) == len(canon.vertices)
    scene2 = trimesh.load(tmp_path / "frames.glb")
    assert len(scene2.geometry) == FRAMES


@pytest.mark.blender
@pytest.mark.slow
def test_glbs_import_in_blender_and_play(sphere_model, tmp_path):
    """Blender's own glTF importer: shape keys animate the morph GLB; vertex positions differ per frame."""
    import subprocess
    import sys

    build_glbs(sphere_model, tmp_path)
    script = f"""
import bpy, json
import numpy as np
out = {{}}
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath={str(tmp_path / "morph.glb")!r})
obj = [o for o in bpy.context.scene.objects if o.type == 'MESH'][0]
out['shape_keys'] = len(obj.data.shape_keys.key_blocks)
scene = bpy.context.scene
fps = scene.render.fps / scene.render.fps_base
xs = []
for f in range({FRAMES}):
    when = f / 10 * fps  # the importer puts glTF time 0 at frame 0
    scene.frame_set(int(when), subframe=when - int(when))
    ev = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    m = ev.to_mesh()
    xs.append(float(np.mean([v.co.x for v in m.vertices])))
    ev.to_mesh_clear()
out['mean_x'] = xs
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath={str(tmp_path / "frames.glb")!r})
out['frame_meshes'] = len([o for o in bpy.context.scene.objects if o.type == 'MESH'])
print('RESULT' + json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    import json

    out = json.loads(line[0][6:])
    assert out["shape_keys"] == FRAMES  # basis + one per later frame
    shift = SHIFT * sphere_model.bound
    # Blender is Z up again, so x is x: the mean moves by the deformation's shift
    assert out["mean_x"] == pytest.approx([shift * f / (FRAMES - 1) for f in range(FRAMES)], abs=0.02)
    assert out["frame_meshes"] == FRAMES


def test_a_hash_deformation_learns_a_motion_the_exporter_inverts():
    """The 4D-hash deformation (the sv4d2 default) fitted to the Translate motion: the fixed-topology
    export's fixed-point inverse carries canonical points to where the motion puts them."""
    from fit4d.field_components.deformation import HashDeformation

    torch.manual_seed(0)
    deform = HashDeformation(
        num_levels=4,
        log2_hashmap_size=12,
        base_resolution=4,
        max_resolution=16,
        time_resolution=4,
        hidden_dim=32,
        num_layers=2,
    )
    target = Translate()
    opt = torch.optim.Adam(deform.parameters(), lr=0.01)
    for _ in range(300):
        x, t = torch.rand(2048, 3) * 2 - 1, torch.rand(2048, 1)
        loss = ((deform(x, t) - target(x, t)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-5
    model = sphere_nerf(deform)
    canon = canonical_mesh(model, 32, 50.0)
    pos, resid = deform_to_frame(model, canon.vertices, 1.0)
    assert resid < 1e-3
    shift = (pos - canon.vertices).mean(0)
    np.testing.assert_allclose(shift, [SHIFT * model.bound, 0, 0], atol=5e-3)
