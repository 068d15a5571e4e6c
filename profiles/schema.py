"""The config schema: one typed dataclass per section of a `pipelines.yaml` profile.

`pipelines.yaml` holds values only. Every field has a default here so that a profile states only what it
changes; the `demo` profile is the embedded default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Dtype = Literal["float32", "bfloat16", "float16"]
"""The one dtype vocabulary of every dtype setting (torch's names; model/dtypes.py maps them to torch)."""


@dataclass
class AssetsConfig:
    """Where the asset list comes from."""

    source: Literal["procedural", "local", "objaverse", "objaverse_xl"] = "procedural"
    """procedural: generated .glb files; local: a folder; objaverse / objaverse_xl: the public datasets."""
    local_dir: str = ""
    """Folder scanned (recursively) for .glb/.gltf/.fbx/.obj/.blend when source is `local`."""
    procedural_count: int = 0
    """How many procedural assets to generate (0: the full built-in set)."""
    seed: int = 0
    """Seed of the procedural generator and of every per-asset random choice."""
    cache_dir: str = "~/.cache/sv4d2/assets"
    """Where generated or downloaded assets are kept between runs."""
    objaverse_annotations: str = ""
    """Optional local annotation table (parquet/json) for objaverse / objaverse_xl; empty: the package's."""
    licenses: list[str] = field(
        default_factory=lambda: ["by", "by-sa", "cc0", "cc-by", "cc-by-sa", "cc-by-4.0", "cc0-1.0", "mit"]
    )
    """Allow-list of licences, compared exactly after `curation.sources.normalize_license` on both sides
    ("cc-by-4.0" and "CC BY 4.0" are "by"; an allowed "by" does not admit "by-nc")."""
    local_license: str = "unknown"
    """Licence of a `local` asset with no sidecar `.license` file and no entry in `licenses.json`."""
    fetch_timeout_s: float = 60.0
    """Network timeout of one download (a reachability probe first fails fast when offline)."""
    assets_per_shard: int = 8
    """Shard N renders assets [N * assets_per_shard, (N + 1) * assets_per_shard) of the sorted list."""
    limit: int = 0
    """Keep only the first `limit` assets of the list (0: all)."""

    def validate(self) -> None:
        if self.assets_per_shard < 1:
            raise ValueError("assets_per_shard must be at least 1")
        if self.source == "local" and not self.local_dir:
            raise ValueError("source 'local' needs assets.local_dir")


@dataclass
class OrbitConfig:
    """Camera orbits, as SV3D: a static one (uniform azimuth, fixed elevation) and a dynamic one."""

    num_views: int = 4
    static_elevation_deg: float = 10.0
    """Elevation of the static orbit."""
    dynamic_elevation_range_deg: tuple[float, float] = (-5.0, 30.0)
    """Dynamic orbit: elevation varies smoothly inside this range."""
    dynamic_azimuth_jitter: float = 0.5
    """Dynamic orbit: azimuth steps are uniform steps times 1 +/- this fraction (then renormalized)."""
    radius: float = 2.0
    """Camera distance from the origin, in units of the normalized object (largest extent 1)."""
    fov_deg: float = 33.8
    """Vertical = horizontal field of view (square images); SV3D uses 33.8 degrees."""

    def validate(self) -> None:
        if self.num_views < 1:
            raise ValueError("num_views must be at least 1")
        if not 0.0 < self.fov_deg < 180.0:
            raise ValueError("fov_deg must lie in (0, 180)")
        if self.radius <= 0.87:  # inside the unit cube's bounding sphere the camera would clip the object
            raise ValueError("radius must exceed 0.87 (the bounding sphere of a unit cube)")


@dataclass
class ClipConfig:
    """Which animation of an asset becomes a sample (every action is listed in the manifest anyway)."""

    select: Literal["longest", "action", "most_motion", "all"] = "longest"
    """longest: the longest action (the union of the actions playing together); action: the one named
    `action`; most_motion: the clip_duration_s window of any action with the most local motion; all: every
    action as its own sample (uid suffixed by the action)."""
    action: str = ""
    """The action's name for select 'action' (as listed in the manifest's `actions` column)."""
    motion_samples: int = 48
    """most_motion: frames sampled over each action to measure the motion of every window."""

    def validate(self) -> None:
        if self.select == "action" and not self.action:
            raise ValueError("clip.select 'action' needs clip.action (the action's name)")
        if self.motion_samples < 2:
            raise ValueError("clip.motion_samples must be at least 2")


@dataclass
class RenderConfig:
    """Blender CYCLES settings and the per-asset job limits."""

    resolution: int = 128
    num_frames: int = 8
    """F frames per orbit view (4D mode; static mode renders one)."""
    clip_duration_s: float = 0.0
    """Take F frames uniformly over this many seconds of the action (0: the whole action)."""
    orbits: list[Literal["static", "dynamic"]] = field(default_factory=lambda: ["static", "dynamic"])
    orbit: OrbitConfig = field(default_factory=OrbitConfig)
    samples: int = 16
    denoiser: Literal["none", "OIDN", "OPTIX"] = "none"
    device: Literal["auto", "CPU", "CUDA", "OPTIX"] = "CPU"
    """auto: OPTIX, then CUDA when a GPU is present, else CPU."""
    threads: int = 0
    """Cycles CPU threads per Blender process (0: all cores)."""
    adaptive_threshold: float = 0.0
    """Cycles adaptive sampling noise threshold (0: adaptive sampling off)."""
    max_bounces: int = 4
    sky_strength: float = 1.0
    """Strength of the procedural near-uniform sky used when no HDRI library is configured."""
    mode: Literal["4d", "static"] = "4d"
    """4d: animated assets, F frames; static: orbit-only samples (F = 1) for 3D pre-training."""
    timeout_s: float = 600.0
    """Wall-clock limit of one Blender process: this fixed part plus timeout_per_image_s per image."""
    retries: int = 1
    """Extra attempts after a crash or a timeout (a bad asset is not retried)."""
    cpus_per_task: float = 1.0
    """Ray CPUs reserved per asset task."""
    gpus_per_task: float = 0.0
    clip: ClipConfig = field(default_factory=ClipConfig)
    fill: float = 0.9
    """Framing: the object's scale makes its farthest projected point, over every image of both orbits and
    the whole clip, reach this fraction of the half side from the image centre (the release crops its input
    so the object fills about 90% of the side). shards/render_schema.py states the rule."""
    min_margin_px: float = 2.0
    """Framing: at least this many pixels between the object and the border (small images)."""
    crop_border: bool = True
    """Render only each image's projected object box (+3 px); the pixels outside are transparent anyway."""
    timeout_per_image_s: float = 0.0
    """Each Blender process's limit is timeout_s + timeout_per_image_s x its image count."""
    timeout_growth: float = 2.0
    """A retry after a timeout gets this many times the budget (1: a timeout is not retried, since the
    same budget would time out again)."""
    orphan_skeleton: Literal["viewer", "gltf"] = "viewer"
    """A glTF skin whose joints are in no scene: pose it as three.js viewers show it (viewer: the mesh
    node's world matrix applies, usually upright) or as the glTF rule and Blender's importer do (gltf)."""
    keep_work_images: bool = True
    """false: delete the work folder's PNGs once the shard tar holds them (result.json etc. stay)."""

    def validate(self) -> None:
        if self.resolution < 8:
            raise ValueError("resolution must be at least 8")
        if not 0.0 < self.fill <= 1.0:
            raise ValueError(f"fill must lie in (0, 1], got {self.fill}")
        if self.min_margin_px < 0 or 2 * self.min_margin_px >= self.resolution:
            raise ValueError(f"min_margin_px must lie in [0, resolution / 2), got {self.min_margin_px}")
        if self.timeout_s <= 0 or self.timeout_per_image_s < 0:
            raise ValueError("timeout_s must be positive and timeout_per_image_s >= 0")
        if self.timeout_growth < 1.0:
            raise ValueError(f"timeout_growth must be >= 1, got {self.timeout_growth}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.cpus_per_task <= 0 or self.gpus_per_task < 0:
            raise ValueError("cpus_per_task must be positive and gpus_per_task >= 0")
        if self.num_frames < 1:
            raise ValueError("num_frames must be at least 1")
        if self.samples < 1:
            raise ValueError("samples must be at least 1")
        if not self.orbits:
            raise ValueError("orbits must name at least one of static, dynamic")
        if len(set(self.orbits)) != len(self.orbits):
            raise ValueError("orbits has duplicates")


@dataclass
class MotionConfig:
    """Global/local motion disentanglement (paper section 3.3, supplement 7.1)."""

    enabled: bool = True
    static_quantile: float = 0.2
    """Points whose mean temporal displacement is within this quantile form the static region."""
    max_points: int = 20000
    """Vertices subsampled (deterministically) for the analysis."""
    box_fraction: float = 0.3
    """Side of the most static box (a cube), relative to the object's largest extent."""
    anchor: Literal["pivot", "mean"] = "pivot"
    """mean: the box points' mean offset (the paper's); pivot: the motion of the box's least-moving point
    (the same when the box only translates; no drift for a body spinning in place)."""


@dataclass
class FilterConfig:
    """Asset filters; every decision is recorded in the manifest with the measured value."""

    min_motion: float = 0.01
    """small_motion: mean per-vertex displacement after correction, relative to object size, below this."""
    max_scale_ratio: float = 1.5
    """inconsistent_scale: max over min over time of the object's local scale (the area change of small
    surface patches: exact for uniform scaling, 1 for rigid or articulated motion, ~1 for squash and
    stretch) above this. The radius-of-gyration ratio (which rises when rigid parts move apart) stays
    recorded as gyration_scale_ratio."""
    min_clip_frames: int = 2
    """clip_too_short: the chosen action spans fewer frames than this (4d mode)."""
    max_vertices: int = 2_000_000
    max_faces: int = 4_000_000
    require_license: bool = True
    """license: filter assets whose licence is not in assets.licenses."""
    max_border_images: int = 0
    """border_touch: more than this many images have alpha on their outermost pixel ring."""
    min_alpha_coverage: float = 0.001
    """transparent_image: an image whose mean alpha is below this (a flat asset seen edge-on)."""
    max_transparent_images: int = 0
    """transparent_image: more than this many images are below min_alpha_coverage."""
    filter_orphan_skeleton: bool = False
    """orphan_skeleton: filter skinned glTF assets whose skeleton root is in no scene (recorded anyway)."""


@dataclass
class HdriConfig:
    """Near-ambient environment lighting."""

    library_dir: str = ""
    """Folder of .hdr/.exr maps; empty: the procedural near-uniform sky."""
    generate_demo_maps: int = 0
    """Generate this many synthetic maps into library_dir at run time (the demo has no real HDRIs)."""
    max_ambient_score: float = 0.5
    """Maps whose shading score exceeds this are excluded."""
    strength: float = 1.0


@dataclass
class CurationConfig:
    motion: MotionConfig = field(default_factory=MotionConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    hdri: HdriConfig = field(default_factory=HdriConfig)


@dataclass
class EncodeConfig:
    """Latent encoding (SD2.1 VAE + OpenCLIP ViT-H-14); see model/encoders.py for the pixel rules."""

    vae_path: str = ""
    """Local folder (or a hub id in the HF cache) of the SD2.1 model; the VAE is in its `vae` subfolder."""
    vae_subfolder: str = "vae"
    clip_model: str = "ViT-H-14"
    clip_pretrained: str = ""
    """Local open_clip checkpoint file (laion2b_s32b_b79k weights); empty: an error unless tiny."""
    clip_model_config: str = ""
    """Optional open_clip model-config json registered before creating `clip_model` (not for ViT-H-14)."""
    official_checkpoint: str = ""
    """Official sv4d2/sv3d_p .safetensors: take the VAE and CLIP weights from its conditioner and first stage
    (model/official_encoders.py) instead of vae_path/clip_pretrained. Excludes `tiny`."""
    official_vae_config: str = ""
    """AutoencoderKL config json for `official_checkpoint` (empty: the SD2.1 VAE; other values for tests)."""
    tiny: bool = False
    """Use tiny randomly initialized encoders, saved to disk first and loaded through the same path."""
    tiny_dir: str = ""
    """Where tiny weights are saved (empty: <out_dir>/encoders/tiny)."""
    batch_size: int = 16
    """Images per encoder call."""
    num_actors: int = 1
    """Encoder actors (one GPU each when GPUs exist, else `cpus_per_actor` CPUs each)."""
    cpus_per_actor: float = 1.0
    dtype: Dtype = "float32"
    """Compute dtype on GPU (CPU always runs float32). Stored arrays are float16 regardless."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: GPU actors when the Ray cluster has GPUs, else CPU actors."""
    channels_last: bool = False
    """channels_last VAE: use with compile (eager it is slower on an H100: GroupNorm transposes)."""
    compile: bool = False
    """torch.compile the VAE in each GPU actor (ignored on CPU); the CLIP tower stays eager (faster)."""
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = "default"
    """max-autotune: more VAE throughput for a compile of minutes per actor (benchmarks/RESULTS.md)."""

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError("encode.batch_size must be at least 1")
        if self.num_actors < 1:
            raise ValueError("encode.num_actors must be at least 1")
        if self.cpus_per_actor <= 0:
            raise ValueError("encode.cpus_per_actor must be positive")
        if self.official_checkpoint and self.tiny:
            raise ValueError("encode.official_checkpoint and encode.tiny exclude each other: set one of them")


@dataclass
class ModelSection:
    """The diffusion network (model/): which named UNet config, its init weights, memory/speed knobs."""

    unet: Literal["tiny", "sv4d2"] = "tiny"
    """Named UNet config of model/config.py: tiny (CPU tests, demo) or sv4d2 (the official geometry)."""
    init_checkpoint: str = ""
    """Weights to start the first stage from: one of our checkpoint folders, or an official sv4d2 /
    sv3d_p .safetensors (converted by model/convert.py). Empty: random init."""
    activation_checkpointing: bool = False
    """Recompute each block in the backward pass (saves memory at about 30% more compute)."""
    checkpoint_policy: Literal["full", "selective", "attention"] = "full"
    """With activation_checkpointing: what the backward recomputes. full: everything; attention: keeps the
    long self-attention outputs (more memory, faster steps: benchmarks/RESULTS.md); selective: keeps every
    matmul/conv/attention output (no matmul recompute; does not fit batch 2 at full size)."""
    dtype: Dtype = "bfloat16"
    """Autocast dtype on CUDA (weights and optimizer stay float32). CPU runs float32 unless cpu_autocast."""
    cpu_autocast: bool = False
    """Use bf16 autocast on the CPU too (slow; only to test the bf16 path)."""
    camera_attention: Literal["auto", "paper", "snapshot", "views"] = "auto"
    """Token layout of the camera ("3D") attention (model/config.py). paper: all V*H*W tokens of a frame (eq.
    2); snapshot / views: the released sv4d2 / sv4d2_8views code. auto: the release's mode for an official
    sv4d2 init_checkpoint (views if its name has "8views"), the saved one for our checkpoints, else paper."""


@dataclass
class StageConfig:
    """One stage of the progressive 3D-to-4D schedule (paper sec. 3.4)."""

    name: Literal["3d", "4d"] = "3d"
    """3d: static data, frame attention bypassed (alpha_f = 0) and frozen; 4d: frame attention trained."""
    steps: int = 10
    """Optimizer steps of this stage."""
    data: list[str] = field(default_factory=list)
    """Latent shards: paths, globs or brace patterns (shard-{000000..000009}.tar); relative to out_dir."""
    lr: float = 1e-4
    num_views: int = 4
    """V target views per example (the input view is drawn besides them)."""
    num_frames: int = 12
    """F frames per example (1 for the 3d stage: one frame of each object)."""
    orbits: list[Literal["static", "dynamic"]] = field(default_factory=lambda: ["static", "dynamic"])
    """Orbits an example may be drawn from (one orbit per example, uniformly among those present)."""
    ref_mask_prob: float = 0.5
    """Probability that an example's reference multi-views are masked (zeroed, flagged absent)."""
    init_from: str = ""
    """Checkpoint folder (or `latest` of a stage, e.g. `3d`) to start from; empty: model.init_checkpoint for
    the first stage, the previous stage's final EMA-free weights for later ones."""
    init_weights: Literal["model", "ema"] = "ema"
    """Which weights of the init checkpoint start this stage."""

    def validate(self) -> None:
        if self.steps < 0:
            raise ValueError(f"stage {self.name}: steps must be >= 0, got {self.steps}")
        if self.num_views < 1 or self.num_frames < 1:
            raise ValueError(f"stage {self.name}: num_views and num_frames must be >= 1")
        if not 0.0 <= self.ref_mask_prob <= 1.0:
            raise ValueError(f"stage {self.name}: ref_mask_prob must lie in [0, 1], got {self.ref_mask_prob}")
        if self.lr <= 0:
            raise ValueError(f"stage {self.name}: lr must be positive, got {self.lr}")


@dataclass
class TrainConfig:
    """EDM trainer (model/train.py): optimizer, noise schedule, conditioning dropout, data, checkpoints."""

    stages: list[StageConfig] = field(
        default_factory=lambda: [
            StageConfig(name="3d", num_frames=1, ref_mask_prob=1.0),
            StageConfig(name="4d"),
        ]
    )
    """The progressive schedule, run in order; `--stage` runs one of them."""
    seed: int = 0
    batch_size: int = 1
    """Examples per process per micro-step (global batch = batch_size * grad_accum * world size)."""
    grad_accum: int = 1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    """Linear learning-rate warm-up from 0 (then constant)."""
    grad_clip: float = 1.0
    """Max global gradient norm (0: no clipping)."""
    ema_decay: float = 0.9999
    p_mean: float = 1.0
    """ln(sigma) ~ N(p_mean, p_std^2). 1.0 / 1.6: SVD/SV3D high-resolution finetuning (see model/edm.py)."""
    p_std: float = 1.6
    cond_aug: Literal["lognormal", "uniform", "fixed"] = "lognormal"
    """Noise level of the conditioning latents (also fed to the network's 256-d sigma embedding)."""
    cond_aug_p_mean: float = -3.0
    cond_aug_p_std: float = 0.5
    cond_aug_low: float = 0.0
    """uniform: lower bound; fixed: the value."""
    cond_aug_high: float = 0.1
    cond_drop_prob: float = 0.1
    """Probability of zeroing the conditioning latents, CLIP embeddings and reference views jointly (CFG)."""
    max_frame_stride: int = 2
    """Frames of an example are a window start + s * (0..F-1), s drawn in [1, max_frame_stride] (clamped)."""
    data_mode: Literal["indexed", "streaming"] = "indexed"
    """indexed: examples are a function of (seed, step, rank), exact resume; streaming: WebDataset pipeline
    with resampled shards for datasets whose index does not fit (resume is approximate)."""
    shuffle_buffer: int = 64
    """streaming: samples in the shuffle buffer."""
    num_workers: int = 0
    """DataLoader worker processes per rank."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: Literal["none", "full", "regional"] = "none"
    """torch.compile on CUDA: `regional` compiles each ResBlock and transformer step (one graph per block
    shape; faster training steps, benchmarks/RESULTS.md), `full` the whole network (its compile takes too
    long at full size)."""
    compile_min_tokens: int = 1296
    """regional: blocks at resolutions with fewer tokens per image than this stay eager (compile time)."""
    log_every: int = 1
    ckpt_every: int = 1000
    """Checkpoint every N steps (the last step is always saved)."""
    keep_checkpoints: int = 2
    """Keep the newest N step checkpoints of a stage (0: keep all)."""
    max_bad_steps: int = 5
    """Abort after this many consecutive steps with a non-finite loss or gradient (each is skipped)."""
    max_bad_sample_fraction: float = 0.05
    """Bad latent samples (unreadable, wrong shapes, NaN) are skipped and listed in
    <out>/logs/train_<stage>/skipped_samples.jsonl; the stage stops when more than this fraction is bad."""
    progress: bool = True
    """tqdm progress bar on rank 0."""

    def validate(self) -> None:
        if not self.stages:
            raise ValueError("train.stages must list at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"train.stages has duplicate names {names}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("train.batch_size and train.grad_accum must be >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"train.cond_drop_prob must lie in [0, 1], got {self.cond_drop_prob}")
        if self.max_frame_stride < 1 or self.max_bad_steps < 1 or self.log_every < 1 or self.ckpt_every < 1:
            raise ValueError("train.max_frame_stride, max_bad_steps, log_every, ckpt_every must be >= 1")
        if self.p_std < 0 or self.cond_aug_p_std < 0:
            raise ValueError("train.p_std and train.cond_aug_p_std must be >= 0")
        if not 0.0 <= self.max_bad_sample_fraction < 1.0:
            frac = self.max_bad_sample_fraction
            raise ValueError(f"train.max_bad_sample_fraction must lie in [0, 1), got {frac}")

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise ValueError(f"no stage {name!r} in train.stages (stages: {[s.name for s in self.stages]})")


@dataclass
class SampleConfig:
    """Novel-view video synthesis (`python -m model.sample`; model/novel_views.py)."""

    checkpoint: str = "4d"
    """Our checkpoint folder, a stage name (its latest checkpoint under <out_dir>/checkpoints), or an official
    sv4d2 / sv4d2_8views .safetensors (converted on load with the `model.unet` geometry)."""
    weights: Literal["ema", "model"] = "ema"
    """Which weights of one of our checkpoints."""
    encoders_from_checkpoint: bool = True
    """Official checkpoint: take the VAE and CLIP from the same file (else from the `encode` section)."""
    resolution: int = 576
    """Model input/output image side (a multiple of 8 * 2^(levels - 1) of the UNet)."""
    views_per_pass: int = 4
    """V: views the network samples at once (8 for sv4d2_8views)."""
    frames_per_pass: int = 12
    """T: frames per window (5 for sv4d2_8views)."""
    cameras: str | list[tuple[float, float]] = "sv4d2"
    """A preset (sv4d2: azimuth 60/120/180/240; sv4d2_8views; orbit), a .json/.yaml file, or a list of
    [elevation, azimuth] pairs in degrees, azimuth relative to the input view (e.g. [[0, 90], [10, 180]])."""
    orbit_views: int = 8
    """`orbit` preset: number of views, evenly spaced around the turn after the input view."""
    orbit_elevation_deg: float = 0.0
    """Elevation of the presets' views."""
    input_elevation_deg: float = 0.0
    """Elevation assumed for the input camera (the release assumes 0)."""
    group_anchors: int = 1
    """More views than V: views of the previous group repeated in each later group as its reference views."""
    radius: float = 2.0
    """Camera distance of the written poses (the training orbits' radius)."""
    fov_deg: float = 33.8
    """Field of view of the written intrinsics (the training renders')."""
    dtype: Dtype = "float16"
    """Autocast dtype of the network while sampling: float16 as the release (which also casts the UNet to
    half); float32 runs without autocast."""
    num_steps: int = 50
    """Euler EDM steps (sigma sigma_max -> sigma_min, rho)."""
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    rho: float = 7.0
    guidance: Literal["linear", "spatiotemporal"] = "linear"
    """CFG schedule over the (frame, view) latents: linear (4-view release: cfg_min at the first latent rising
    to cfg_max along views and time) or spatiotemporal (8-view release, 1.5 -> 2.5, highest at the middle
    views and the last frames)."""
    cfg_min: float = 1.0
    cfg_max: float = 2.0
    cond_aug: float = 1e-5
    """Noise sigma of the conditioning latents (the release's)."""
    seed: int = 23
    """The release's default seed."""
    start_step: int = 0
    """Start-from-image: k > 0 noises `init_images` to step k of num_steps and denoises (paper: 25)."""
    init_images: str = ""
    """Start-from-image: a generated.tar whose views 1..N are the images to start from."""
    crop: Literal["union", "per_frame"] = "union"
    """union: one box for all frames (the release); per_frame: constant scale, centred in every frame."""
    crop_fill: float = 0.9
    """Fraction of the crop side the object fills."""
    fg_threshold: int = 5
    """Background difference (0-255) above which a pixel of an RGB input is foreground."""
    masks: str = ""
    """Optional user masks: a folder of images or a video, white = object, one per input frame."""
    frame_stride: int = 1
    """Keep every n-th input frame."""
    num_frames: int = 0
    """Then keep this many, evenly spaced (0: all)."""
    fill: Literal["repeat", "interpolate"] = "repeat"
    """Fewer frames than one window: repeat frames (nearest) or interpolate between them."""
    input_orbit: Literal["static", "dynamic"] = "dynamic"
    """Render-shard input: which orbit's images are the input video."""
    input_view: int = 0
    """Render-shard input: which view of that orbit."""
    fps: float = 10.0
    """Frame rate of the written videos (the input's when it has one and this is 0)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    decode_batch: int = 8
    """Latents per VAE decoder call."""
    progress: bool = True
    gpus_per_task: float = 1.0
    """Batch mode: GPUs per Ray task (0 on a CPU-only machine)."""
    cpus_per_task: float = 1.0
    predictions: str = "predictions/sample"
    """A render-sample input: also sample at the ground-truth cameras of `evaluation.orbit` (its views and
    frames, relative to the input camera), undo the crop to the shard's framing and resolution, on white,
    into `<predictions>/<uid>/vVV.fFF.png`, the layout `python -m evaluation.run` reads (relative paths
    under out_dir; empty: off). model/eval_predictions.py."""

    def validate(self) -> None:
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"sample.resolution must be a positive multiple of 8, got {self.resolution}")
        if self.views_per_pass < 1 or self.frames_per_pass < 1:
            raise ValueError("sample.views_per_pass and sample.frames_per_pass must be >= 1")
        if self.num_steps < 1 or not 0 <= self.start_step < self.num_steps:
            raise ValueError(f"sample.start_step must lie in [0, num_steps={self.num_steps})")
        if self.start_step and not self.init_images:
            raise ValueError("sample.start_step > 0 needs sample.init_images (the images to start from)")
        if not 0.0 < self.crop_fill <= 1.0:
            raise ValueError(f"sample.crop_fill must lie in (0, 1], got {self.crop_fill}")
        if not 0 < self.cfg_min <= self.cfg_max:
            raise ValueError(f"sample needs 0 < cfg_min <= cfg_max, got {self.cfg_min}, {self.cfg_max}")
        if self.cond_aug < 0:
            raise ValueError(f"sample.cond_aug must be >= 0, got {self.cond_aug}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError("sample.sigma_min must be positive and below sigma_max")
        if self.frame_stride < 1 or self.num_frames < 0:
            raise ValueError("sample.frame_stride must be >= 1 and sample.num_frames >= 0")


@dataclass
class EvalSystemConfig:
    """One evaluated system: a row of the table and the folder of its predictions."""

    name: str = ""
    """Row label in the Markdown table, e.g. "SV4D 2.0 (4D fit)"."""
    predictions: str = ""
    """Folder in the prediction layout `<predictions>/<uid>/v{VV}.f{FF}.png` (evaluation/inputs.py);
    relative paths are under out_dir."""

    def validate(self) -> None:
        if not self.name or not self.predictions:
            raise ValueError("every evaluation.systems entry needs a name and a predictions folder")


@dataclass
class EvaluationConfig:
    """`python -m evaluation.run`: the paper's metrics of predicted views x frames against render shards."""

    ground_truth: list[str] = field(default_factory=lambda: ["renders/shard-*.tar"])
    """Render shards holding the ground truth (globs; relative ones under out_dir)."""
    orbit: Literal["static", "dynamic"] = "static"
    """Orbit of the render samples whose images are the ground truth (and the predictions' cameras)."""
    views: list[int] = field(default_factory=list)
    """Held-out view indices of that orbit (empty: all). The paper evaluates 8 views x 21 frames."""
    frames: list[int] = field(default_factory=list)
    """Held-out frame indices (empty: all)."""
    systems: list[EvalSystemConfig] = field(default_factory=list)
    """The rows of the table; `--predictions NAME=DIR` on the command line replaces them."""
    stand_in: bool = False
    """A system whose folder does not exist is evaluated on the ground truth plus noise instead, labelled as
    a stand-in (the demo, before sampled views and 4D fits exist). False: such a system is an error."""
    stand_in_noise: float = 0.05
    """Standard deviation (of [0, 1] pixel values) of the stand-in's Gaussian noise."""
    region: Literal["whole", "foreground"] = "whole"
    """Which PSNR/SSIM/MSE the table shows (whole image, or ground-truth alpha > alpha_threshold); the JSON
    holds both."""
    alpha_threshold: float = 0.5
    """Ground-truth alpha above which a pixel is foreground."""
    lpips_nets: list[Literal["vgg", "alex"]] = field(default_factory=lambda: ["vgg", "alex"])
    """LPIPS backbones to compute (the SV4D papers report VGG)."""
    table_lpips: Literal["vgg", "alex"] = "vgg"
    """The backbone of the table's LPIPS column."""
    lpips_vgg_path: str = ""
    """torchvision VGG16 checkpoint (vgg16-397923af.pth) for LPIPS; empty: LPIPS-VGG is skipped."""
    lpips_alex_path: str = ""
    """torchvision AlexNet checkpoint (alexnet-owt-7be5be79.pth) for LPIPS; empty: skipped."""
    clip_model: str = "ViT-B-32"
    """open_clip architecture of CLIP-S (ViT-B/32, as the Consistent4D protocol)."""
    clip_pretrained: str = ""
    """open_clip checkpoint file of clip_model (OpenAI ViT-B/32 weights); empty: CLIP-S is skipped."""
    clip_model_config: str = ""
    """Optional open_clip model-config json for an architecture open_clip does not ship."""
    i3d_path: str = ""
    """TorchScript I3D (i3d_torchscript.pt of the StyleGAN-V FVD); empty: every FVD is skipped."""
    fvd_min_frames: int = 16
    """Shorter FVD videos are stretched to this length (the standard 16-frame clip; I3D needs >= 9)."""
    fvd_short_clip: Literal["resample", "pad"] = "resample"
    """How: nearest-index resampling, or repeating the last frame."""
    fvd_protocol: Literal["per_video", "set"] = "per_video"
    """FVD of the table: per_video (each clip against its own ground truth, averaged) or set (all clips of
    all objects as two sets). The JSON holds both."""
    diagonal: Literal["wrap", "main"] = "wrap"
    """FVD-Diag video: (i mod V, i mod F) for i < max(V, F), or (i, i) for i < min(V, F)."""
    zigzag_rows: Literal["view", "frame"] = "view"
    """FV4D zig-zag: rows are views (frames run forward, then backward) or frames."""
    tiny: bool = False
    """Use tiny random networks saved under <out_dir>/evaluation/tiny_networks (demo, tests); the table
    then says that LPIPS, CLIP-S and FVD come from random weights."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = 16
    """Images per network call."""
    out_subdir: str = "evaluation"
    """Outputs under <out_dir>/<out_subdir>: <system>/<uid>.json, total.json, table.md."""

    def validate(self) -> None:
        if self.batch_size < 1 or self.fvd_min_frames < 1:
            raise ValueError("evaluation.batch_size and evaluation.fvd_min_frames must be >= 1")
        if not 0.0 <= self.alpha_threshold < 1.0:
            raise ValueError(f"evaluation.alpha_threshold must lie in [0, 1), got {self.alpha_threshold}")
        if self.stand_in_noise < 0:
            raise ValueError("evaluation.stand_in_noise must be >= 0")
        if any(i < 0 for i in [*self.views, *self.frames]):
            raise ValueError("evaluation.views and evaluation.frames are indices (>= 0)")
        names = [s.name for s in self.systems]
        if len(set(names)) != len(names):
            raise ValueError(f"evaluation.systems has duplicate names {names}")


@dataclass
class Fit4DFieldConfig:
    """The dynamic NeRF (fit4d/fields.py): canonical hash grid + density/colour MLPs, deformation MLP."""

    bound: float = 0.6
    """Half side of the axis-aligned box [-bound, bound]^3 that holds the object (normalized assets have
    largest extent 1 centred at the origin, so 0.5 plus a margin)."""
    num_levels: int = 16
    features_per_level: int = 2
    log2_hashmap_size: int = 19
    """Entries per level table (2^k); levels with fewer grid vertices are indexed densely."""
    base_resolution: int = 16
    max_resolution: int = 2048
    hidden_dim: int = 64
    geo_feat_dim: int = 15
    """Features the density MLP passes to the colour MLP."""
    deform_encoding: Literal["frequency", "hash"] = "frequency"
    """Input of the deformation MLP. frequency: D-NeRF's sin/cos octaves of x and t (deform_pos_freqs,
    deform_time_freqs); hash: a 4D hash encoding of (x, t) (deform_num_levels ... deform_time_resolution),
    which captures large local motion (legs) in the iteration budget."""
    deform_hidden_dim: int = 128
    deform_layers: int = 3
    deform_pos_freqs: int = 6
    """Frequency octaves of x fed to the deformation MLP."""
    deform_time_freqs: int = 6
    """Frequency octaves of t (frame / (F - 1) in [0, 1]) fed to the deformation MLP."""
    deform_num_levels: int = 8
    deform_log2_hashmap_size: int = 17
    deform_base_resolution: int = 8
    deform_max_resolution: int = 128
    """Spatial resolution of the 4D grid's coarsest and finest levels."""
    deform_time_resolution: int = 8
    """Cells over the clip's time [0, 1] at the finest level (coarser levels have fewer, down to 2)."""
    hash_kernel: Literal["auto", "torch", "triton"] = "auto"
    """Hash encodings on CUDA: torch (PyTorch ops, any device, twice differentiable), triton (fused
    kernels, fit4d/field_components/hash_kernels.py; needs the triton package; CPU tensors still take the
    PyTorch path; not with the normal losses, which differentiate the field twice, nor with fit4d.compile),
    or auto: triton where it is installed and the fit allows it, else torch (the field's training step 3.1x
    faster on the H200: benchmarks/RESULTS.md)."""

    def validate(self) -> None:
        if self.bound <= 0:
            raise ValueError("fit4d.nerf.bound must be positive")
        if min(self.num_levels, self.features_per_level, self.hidden_dim, self.deform_layers) < 1:
            raise ValueError("fit4d.nerf: num_levels, features_per_level, hidden_dim, deform_layers >= 1")
        if not 8 <= self.log2_hashmap_size <= 26:
            raise ValueError("fit4d.nerf.log2_hashmap_size must lie in [8, 26]")
        if not 2 <= self.base_resolution <= self.max_resolution:
            raise ValueError("fit4d.nerf: need 2 <= base_resolution <= max_resolution")
        if not 8 <= self.deform_log2_hashmap_size <= 26:
            raise ValueError("fit4d.nerf.deform_log2_hashmap_size must lie in [8, 26]")
        if not 2 <= self.deform_base_resolution <= self.deform_max_resolution:
            raise ValueError("fit4d.nerf: need 2 <= deform_base_resolution <= deform_max_resolution")
        if self.deform_num_levels < 1 or self.deform_time_resolution < 1:
            raise ValueError("fit4d.nerf: deform_num_levels and deform_time_resolution must be >= 1")
        if self.hash_kernel == "triton" and self.features_per_level & (self.features_per_level - 1):
            raise ValueError("fit4d.nerf.hash_kernel=triton needs features_per_level a power of 2")


@dataclass
class Fit4DRenderConfig:
    """Ray marching (fit4d/rendering.py) and the occupancy grid that skips empty space."""

    num_samples: int = 128
    """Stratified samples per ray across the box (the field runs only at occupied ones)."""
    occupancy_resolution: int = 64
    """Cells per side of the occupancy grid (max density over the frames of the current window)."""
    occupancy_update_every: int = 16
    """Iterations between occupancy-grid updates (all cells, current window's frames)."""
    occupancy_threshold: float = 0.01
    """A cell is empty when its maximum density stays below this value."""
    occupancy_warmup: int = 64
    """Iterations before the first update (the grid starts all occupied)."""
    background: float = 1.0
    """Grey level composited behind the object (targets are composited on the same)."""
    early_stop_eps: float = 0.0
    """> 0: training rays skip the samples whose transmittance is below this (found by a no-gradient pass
    first): behind the surface, they change no pixel by more than it. Off by default: at 1e-4 the dense Fox
    fit's stage 1 took ~15% longer on the H200 (128 samples per ray; benchmarks/RESULTS.md, fit4d)."""

    def validate(self) -> None:
        if self.num_samples < 2 or self.occupancy_resolution < 2 or self.occupancy_update_every < 1:
            raise ValueError("fit4d.render: num_samples, occupancy_resolution >= 2, update_every >= 1")
        if not 0.0 <= self.early_stop_eps < 1.0:
            raise ValueError(f"fit4d.render.early_stop_eps must be in [0, 1), got {self.early_stop_eps}")


@dataclass
class Fit4DLossConfig:
    """Loss weights (paper supplement 7.3); 0 switches a loss off."""

    mse: float = 1.0
    """Visibility-weighted MSE (W = clip(v . n, 0, 1))."""
    visibility_weighting: bool = True
    """False: plain MSE (W = 1), the ablation."""
    visibility_start: int = 300
    """Stage-1 iteration from which W uses the NeRF's own normals (before: W = 1; stage 2 always uses
    the stage-1 normals)."""
    lpips: float = 0.0
    """LPIPS (VGG) weight; > 0 needs `lpips_backbone_path` (random backbones make the loss meaningless)."""
    lpips_backbone_path: str = ""
    """torchvision vgg16 state dict (.pth); the LPIPS linear heads ship with torchmetrics."""
    mask: float = 1.0
    """Silhouette MSE between the rendered opacity and the target alpha."""
    normal: float = 0.0
    """1 - n . n_hat on the foreground against the normal estimator's pseudo ground truth."""
    normal_estimator: Literal["nerf", "omnidata"] = "nerf"
    """Stage-2 normal targets (normal loss and visibility weights). nerf: the stage-1 NeRF's own rendered
    normals; omnidata: Omnidata v2's DPT-Hybrid on the stage-2 target images (fit4d/normal_estimators.py)."""
    omnidata_checkpoint: str = ""
    """omnidata_dpt_normal_v2.ckpt of EPFL-VILAB/omnidata (needed by normal_estimator=omnidata)."""
    omnidata_batch_size: int = 8
    """Images per Omnidata forward pass (384x384 each)."""
    smooth_depth: float = 0.0
    """Total variation of the rendered depth inside each patch (SV3D's smooth depth loss)."""
    normal_smoothness: float = 0.0
    """Bilateral normal smoothness: |grad n| weighted by exp(-|grad I| / sigma) of the target image."""
    bilateral_sigma: float = 0.1

    @property
    def differentiates_normals(self) -> bool:
        """The normal losses train through the analytic normals (d sigma / dx): the field is differentiated
        twice, which neither torch.compile nor the Triton hash kernels support."""
        return self.normal > 0 or self.normal_smoothness > 0

    def validate(self) -> None:
        weights = (self.mse, self.lpips, self.mask, self.normal, self.smooth_depth, self.normal_smoothness)
        if min(weights) < 0:
            raise ValueError("fit4d.loss weights must be >= 0")
        if self.normal_estimator == "omnidata" and not self.omnidata_checkpoint:
            raise ValueError(
                "fit4d.loss.normal_estimator=omnidata needs fit4d.loss.omnidata_checkpoint "
                "(omnidata_dpt_normal_v2.ckpt)"
            )
        if self.omnidata_batch_size < 1:
            raise ValueError("fit4d.loss.omnidata_batch_size must be >= 1")


@dataclass
class Fit4DConfig:
    """The 4D optimizer (fit4d/): static-to-dynamic stage 1, denoised-target stage 2 (paper sec. 4)."""

    nerf: Fit4DFieldConfig = field(default_factory=Fit4DFieldConfig)
    render: Fit4DRenderConfig = field(default_factory=Fit4DRenderConfig)
    loss: Fit4DLossConfig = field(default_factory=Fit4DLossConfig)
    orbit: Literal["static", "dynamic"] = "static"
    """Which orbit of a render sample is the multi-view video to fit."""
    input_view: int = 0
    """Index of the input (front) view; orthogonal views are measured from its azimuth."""
    train_views: list[int] = field(default_factory=list)
    """Views used for fitting (empty: all); the rest are held out (benchmarks)."""
    resolution: int = 0
    """Fit at this image side (targets resized by area averaging; 0: the sample's own resolution)."""
    lr: float = 0.01
    """Adam learning rate of the hash tables and the canonical MLPs (paper: 0.01 for every parameter;
    the deformation MLP's weights take deform_lr)."""
    deform_lr: float = 1e-3
    """Adam learning rate of the deformation MLP's weights (decayed as lr; a hash encoding's table of the
    deformation trains at lr). At lr (0.01) the frequency-encoded MLP's ReLU units die within
    the first few hundred dynamic iterations: the deformation stays ~0 and every frame renders the average
    shape of the clip (benchmarks/RESULTS.md, fit4d)."""
    lr_final_frac: float = 0.1
    """Each stage decays the learning rate exponentially to lr * lr_final_frac (1: constant)."""
    stage1_iters: int = 1500
    static_iters: int = 300
    """The first stage-1 iterations fit the canonical NeRF to frame 0 only (deformation frozen)."""
    stage2_iters: int = 500
    view_sampling: Literal["orthogonal", "random"] = "orthogonal"
    """orthogonal: views nearest to input azimuth + jitter + {0, 90, 180, 270} (paper); random: ablation."""
    view_jitter_deg: float = 45.0
    """Orthogonal sampling rotates the four azimuths by a uniform offset in [-jitter, jitter]."""
    views_per_iter: int = 4
    """Random sampling: views per iteration (orthogonal sampling takes 4)."""
    frame_sampling: Literal["progressive", "random"] = "progressive"
    """progressive: frames from a window [0, w) that widens to all frames (paper); random: ablation."""
    frames_per_iter: int = 4
    window_start: int = 2
    """Frames in the window when the dynamic part begins."""
    window_grow_frac: float = 0.5
    """Fraction of the dynamic stage-1 iterations over which the window grows to all frames."""
    patch_size: int = 32
    """Each sampled (view, frame) image contributes one square patch of patch_size^2 rays."""
    max_patch_stride: int = 4
    """A patch's pixel stride is drawn in [1, max_patch_stride] (coarse patches see the whole object)."""
    refiner: Literal["none", "sampler"] = "none"
    """Stage-2 targets. sampler: render, noise to `refine_step` of 50, denoise with the novel-view sampler
    (fit4d/refine.py); none: stage 2 keeps the stage-1 targets (ground-truth inputs)."""
    refine_step: int = 25
    refine_num_steps: int = 50
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    """torch.compile the field on CUDA (fit4d.loop.compile_field). Not with the normal losses (normal,
    normal_smoothness): they need a second derivative, which compiled graphs do not support."""
    seed: int = 0
    progress: bool = True
    export_resolution: int = 128
    """Marching-cubes grid cells per side for the meshes."""
    export_threshold: float = 10.0
    """Density iso-level of the meshes (the middle of the density range instead when outside it)."""
    video_views: int = 60
    """Frames of the orbit videos (the clip plays along the orbit)."""
    video_resolution: int = 0
    """Side of the orbit videos (0: the fitting resolution)."""
    fps: int = 12
    """Frames per second of the animation (GLB) and the videos."""
    export_global_motion: bool = True
    """Put the renderer's removed global motion (meta `global_offsets`) back as a root translation track."""
    predictions: str = "predictions/fit4d"
    """After a fit, render the NeRF at the ground-truth cameras of `evaluation.orbit` (its views and frames,
    the shard's resolution and intrinsics, on white) into `<predictions>/<uid>/vVV.fFF.png`, the layout
    `python -m evaluation.run` reads (relative paths under out_dir; empty: off)."""

    def validate(self) -> None:
        if self.lr <= 0 or self.deform_lr <= 0:
            raise ValueError("fit4d.lr and fit4d.deform_lr must be positive")
        if self.compile and self.loss.differentiates_normals:
            raise ValueError(
                "fit4d.compile cannot train the normal losses (fit4d.loss.normal, normal_smoothness): they "
                "differentiate the field twice, which torch.compile does not support; set them to 0 or "
                "fit4d.compile=false"
            )
        if self.nerf.hash_kernel == "triton" and self.compile:
            raise ValueError(
                "fit4d.compile and fit4d.nerf.hash_kernel=triton are two ways to fuse the field: choose one"
            )
        if self.nerf.hash_kernel == "triton" and self.loss.differentiates_normals:
            raise ValueError(
                "fit4d.nerf.hash_kernel=triton cannot train the normal losses (fit4d.loss.normal, "
                "normal_smoothness): its kernels are differentiable once; set them to 0 or hash_kernel=torch"
            )
        if min(self.stage1_iters, self.static_iters, self.stage2_iters) < 0:
            raise ValueError("fit4d iteration counts must be >= 0")
        if self.static_iters > self.stage1_iters:
            raise ValueError("fit4d.static_iters must not exceed fit4d.stage1_iters")
        if min(self.frames_per_iter, self.views_per_iter, self.window_start, self.max_patch_stride) < 1:
            raise ValueError("fit4d: frames_per_iter, views_per_iter, window_start, max_patch_stride >= 1")
        if self.patch_size < 2 or self.fps < 1 or self.video_views < 1 or self.export_resolution < 8:
            raise ValueError("fit4d: patch_size >= 2, fps >= 1, video_views >= 1, export_resolution >= 8")
        if not 0.0 < self.window_grow_frac <= 1.0:
            raise ValueError("fit4d.window_grow_frac must lie in (0, 1]")
        if not 0 <= self.refine_step <= self.refine_num_steps:
            raise ValueError("fit4d.refine_step must lie in [0, refine_num_steps]")


@dataclass
class PipelineConfig:
    """One profile of `pipelines.yaml`."""

    name: str = "demo"
    out_dir: str = "outputs/demo"
    assets: AssetsConfig = field(default_factory=AssetsConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    curation: CurationConfig = field(default_factory=CurationConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    model: ModelSection = field(default_factory=ModelSection)
    """The diffusion network (schema owned by `model/`)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The EDM trainer and its 3D-to-4D schedule."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """Novel-view video synthesis."""
    fit4d: Fit4DConfig = field(default_factory=Fit4DConfig)
    """The 4D optimizer (fit4d/): a dynamic NeRF fitted to multi-view videos in two stages."""
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    """`python -m evaluation.run` (schema owned by `evaluation/`)."""
