// Stitch pass: one dispatch per tile over its stitch region (from where the seam
// with its left/upper neighbour ends to where the seam with its right/lower
// neighbour ends). Only the tile and its right, lower and lower-right neighbours
// contribute there, each weighted by a raised cosine across the seam; the weights
// sum to one and there is no ramp at the frame border. The CPU reference in
// worker/src/render/stitch.rs evaluates the same weights over every tile.

@group(0) @binding(0) var<uniform> su: StitchUniforms;
@group(0) @binding(1) var<storage, read> tile_self: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> tile_right: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read> tile_below: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read> tile_diag: array<vec2<u32>>;
@group(0) @binding(5) var frame_out: texture_storage_2d<rgba8unorm, write>;

// Weight of the tile after the seam at `seam`, at pixel-centre position `pos`.
fn rise(pos: f32, seam: u32, half: u32) -> f32 {
    if half == 0u {
        return select(0.0, 1.0, pos >= f32(seam));
    }
    let t = clamp((pos - (f32(seam) - f32(half))) / (2.0 * f32(half)), 0.0, 1.0);
    return 0.5 - 0.5 * cos(PI * t);
}

fn local_index(r: vec4<u32>, p: vec2<u32>) -> u32 {
    return (p.y - r.y) * r.z + (p.x - r.x);
}

@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.x >= su.region_size.x || gid.y >= su.region_size.y {
        return;
    }
    let p = su.region_origin + gid.xy;
    let pos = vec2<f32>(p) + vec2<f32>(0.5);
    var wx_next = 0.0;
    if su.has_next.x == 1u {
        wx_next = rise(pos.x, su.seam.x, su.blend_half);
    }
    var wy_next = 0.0;
    if su.has_next.y == 1u {
        wy_next = rise(pos.y, su.seam.y, su.blend_half);
    }
    var color = (1.0 - wx_next) * (1.0 - wy_next) * unpack_rgba16f(tile_self[local_index(su.rects[0], p)]);
    if wx_next > 0.0 {
        color += wx_next * (1.0 - wy_next) * unpack_rgba16f(tile_right[local_index(su.rects[1], p)]);
    }
    if wy_next > 0.0 {
        color += (1.0 - wx_next) * wy_next * unpack_rgba16f(tile_below[local_index(su.rects[2], p)]);
    }
    if wx_next > 0.0 && wy_next > 0.0 {
        color += wx_next * wy_next * unpack_rgba16f(tile_diag[local_index(su.rects[3], p)]);
    }
    textureStore(frame_out, vec2<i32>(p), vec4<f32>(clamp(color.rgb, vec3<f32>(0.0), vec3<f32>(1.0)), 1.0));
}
