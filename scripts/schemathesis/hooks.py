"""schemathesis hooks for tessera's API contract run.

JSON Schema cannot compare one field with another, so two rules of a job spec
are stated in words in the OpenAPI document (the `TilePlan` and `FrameRange`
descriptions) rather than as constraints:

  * the tile plan fits the frame: along each axis the frame size is at least
    count x max(16, 2 x overlap_px), and with more than one tile,
    overlap_px >= 8;
  * a frame_range lies within the clip: first + count <= round(duration_s x fps).

A generated *positive* spec that breaks one of these is not one the document
promises to accept, so it is dropped here. These rules are written from the
document's words, independently of the Rust validation: if the server refused
a spec these rules allow, `positive_data_acceptance` fails.
"""

import schemathesis

NAMED = {"720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160), "2160p": (3840, 2160)}
TILE_ALIGN = 16
POST_RADIUS = 8
SPEC_OPERATIONS = {"submit_job", "quote"}


def _whole(v):
    """A JSON number as an integer (`4.0` is 4, as JSON Schema reads it), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def _size(resolution):
    if resolution is None:
        return NAMED["1080p"]
    if isinstance(resolution, str):
        return NAMED.get(resolution.lower())
    if isinstance(resolution, dict):
        return _whole(resolution.get("width")), _whole(resolution.get("height"))
    return None


def _tiles_fit(spec):
    size = _size(spec.get("resolution"))
    tiles = spec.get("tiles") or {}
    if size is None or not isinstance(tiles, dict):
        return True
    cols, rows = _whole(tiles.get("cols", 1)), _whole(tiles.get("rows", 1))
    overlap = _whole(tiles.get("overlap_px", 32))
    if any(v is None for v in (*size, cols, rows, overlap)):
        return True
    if cols * rows == 1:
        return True
    if overlap < POST_RADIUS:
        return False
    need = max(TILE_ALIGN, 2 * overlap)
    return size[0] >= cols * need and size[1] >= rows * need


def _range_fits(spec):
    frame_range = spec.get("frame_range")
    if not isinstance(frame_range, dict):
        return True
    fps, duration = spec.get("fps", 30), spec.get("duration_s", 4.0)
    first, count = _whole(frame_range.get("first", 0)), _whole(frame_range.get("count"))
    if first is None or count is None or not all(isinstance(v, (int, float)) for v in (fps, duration)):
        return True
    # Rust's f64::round rounds halves away from zero; Python's round() to even.
    product = duration * fps
    frames = int(product + 0.5) if product >= 0 else -int(-product + 0.5)
    return first + count <= frames


@schemathesis.hook
def filter_case(context, case):
    operation_id = case.operation.definition.raw.get("operationId")
    if operation_id not in SPEC_OPERATIONS or not isinstance(case.body, dict):
        return True
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return True
    return _tiles_fit(case.body) and _range_fits(case.body)
