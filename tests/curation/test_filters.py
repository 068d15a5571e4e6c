"""Filter decisions: each reason on its own, the order of checks, and the recorded values."""

import math

import pytest

from curation.filters import REASONS, clip_frames, decide, license_decision
from curation.sources import AssetRecord
from profiles.schema import AssetsConfig, FilterConfig

LIC = AssetsConfig().licenses
CFG = FilterConfig(min_motion=0.01, max_scale_ratio=1.5, min_clip_frames=4, max_vertices=1000, max_faces=2000)
GOOD_METRICS = {"motion": 0.05, "scale_ratio": 1.1, "max_offset": 0.3, "object_size": 2.0}


def analysis(**kw):
    base = {
        "num_vertices": 500,
        "num_faces": 900,
        "has_animation": True,
        "frames": {"action": "Walk", "action_frame_range": [1, 48], "fps": 24, "source_frames": [1, 10, 20]},
        "status": "ok",
    }
    base.update(kw)
    return base


def rec(license="cc-by-4.0"):
    return AssetRecord(uid="a1", source="local", license=license)


def test_accept_records_all_values():
    d = decide(rec(), analysis(), GOOD_METRICS, CFG, "4d", LIC)
    assert d.status == "accept" and d.reason is None and d.accepted
    assert d.values == {
        "license": "cc-by-4.0",
        "num_vertices": 500,
        "num_faces": 900,
        "clip_frames": 48,
        "motion": 0.05,
        "scale_ratio": 1.1,
    }
    assert d.extra["max_offset"] == 0.3 and d.extra["license_normalized"] == "by"


@pytest.mark.parametrize(
    "kwargs,reason,measured",
    [
        ({"record": rec("by-nc")}, "license", ("license", "by-nc")),
        ({"analysis": analysis(num_vertices=1001)}, "too_many_vertices", ("num_vertices", 1001)),
        ({"analysis": analysis(num_faces=2001)}, "too_many_faces", ("num_faces", 2001)),
        (
            {"analysis": analysis(has_animation=False, frames={}), "metrics": None},
            "no_animation",
            ("clip_frames", 0),
        ),
        ({"analysis": analysis(frames={"action_frame_range": [5, 7]})}, "clip_too_short", ("clip_frames", 3)),
        ({"metrics": {**GOOD_METRICS, "scale_ratio": 3.0}}, "inconsistent_scale", ("scale_ratio", 3.0)),
        (
            {"metrics": {**GOOD_METRICS, "scale_ratio": math.inf}},
            "inconsistent_scale",
            ("scale_ratio", math.inf),
        ),
        ({"metrics": {**GOOD_METRICS, "motion": 0.004}}, "small_motion", ("motion", 0.004)),
    ],
)
def test_each_reason(kwargs, reason, measured):
    args = {"record": rec(), "analysis": analysis(), "metrics": GOOD_METRICS}
    args.update(kwargs)
    d = decide(args["record"], args["analysis"], args["metrics"], CFG, "4d", LIC)
    assert d.status == "filtered" and d.reason == reason and reason in REASONS
    key, value = measured
    assert d.values[key] == value
    assert d.detail  # a human-readable reason with the number


def test_boundaries_and_order():
    at_limit = {**GOOD_METRICS, "motion": 0.01, "scale_ratio": 1.5}
    assert decide(rec(), analysis(num_vertices=1000), at_limit, CFG, "4d", LIC).accepted
    # several problems: the first in the documented order wins, all values are still recorded
    d = decide(rec("ed"), analysis(num_vertices=5000), {**GOOD_METRICS, "motion": 0.0}, CFG, "4d", LIC)
    assert d.reason == "license" and d.values["num_vertices"] == 5000 and d.values["motion"] == 0.0
    assert (
        decide(rec(), analysis(), {**GOOD_METRICS, "motion": math.nan}, CFG, "4d", LIC).reason
        == "small_motion"
    )


def test_static_mode_ignores_animation_filters():
    d = decide(rec(), analysis(has_animation=False, frames={}), None, CFG, "static", LIC)
    assert d.accepted
    d = decide(rec(), analysis(), {**GOOD_METRICS, "motion": 0.0, "scale_ratio": 9.0}, CFG, "static", LIC)
    assert d.accepted
    assert decide(rec(), analysis(num_faces=10**6), None, CFG, "static", LIC).reason == "too_many_faces"


def test_license_can_be_disabled_and_prechecked():
    cfg = FilterConfig(require_license=False)
    assert license_decision(rec("unknown"), cfg, LIC).accepted
    assert license_decision(rec("unknown"), FilterConfig(), LIC).reason == "license"


def test_clip_frames_and_bad_input():
    assert clip_frames({"frames": {"action_frame_range": [0.0, 23.0]}}) == 24
    assert clip_frames({"frames": {"source_frames": [1, 1, 2, 3]}}) == 3
    assert clip_frames({}) == 0
    with pytest.raises(ValueError, match="mode"):
        decide(rec(), analysis(), GOOD_METRICS, CFG, "video", LIC)
    with pytest.raises(ValueError, match="no motion metrics"):
        decide(rec(), analysis(), None, CFG, "4d", LIC)
