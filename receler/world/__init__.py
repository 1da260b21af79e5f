"""A tiny procedural world of coloured shapes moving on plain backgrounds.

Every concept in a caption (colour, shape, direction, background) is measurable from pixels,
so a small text-to-video model can be trained on these videos and concept erasure measured
on a CPU. :mod:`.scenes` generates scenes, captions and videos; :mod:`.classify` labels frames;
:mod:`.model` loads and scores the bundled text-to-video model trained on this world (it imports
torch, so it is not re-exported here).
"""

from receler.world.classify import (
    FrameLabel,
    VideoLabel,
    classify_frame,
    classify_video,
    describe_object,
    frame_color_fractions,
    video_shows_color,
)
from receler.world.scenes import (
    BACKGROUNDS,
    COLORS,
    DIRECTIONS,
    SHAPES,
    VOCABULARY,
    Scene,
    ShapeSpec,
    check_num_frames,
    evaluation_prompts,
    make_dataset,
    render_video,
    sample_scene,
    scene_from_caption,
)

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "DIRECTIONS",
    "SHAPES",
    "VOCABULARY",
    "FrameLabel",
    "Scene",
    "ShapeSpec",
    "VideoLabel",
    "check_num_frames",
    "classify_frame",
    "classify_video",
    "describe_object",
    "evaluation_prompts",
    "frame_color_fractions",
    "make_dataset",
    "render_video",
    "sample_scene",
    "scene_from_caption",
    "video_shows_color",
]
