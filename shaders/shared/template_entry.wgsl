// Entry point of every template pass: one invocation per pixel of the tile's
// rect, writing linear HDR colour into the tile's own buffer. `advanced` jobs
// take four rotated-grid samples per pixel.

@group(0) @binding(0) var<uniform> u: FrameUniforms;
@group(0) @binding(1) var<storage, read_write> tile_hdr: array<vec2<u32>>;

@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.x >= u.tile_size.x || gid.y >= u.tile_size.y {
        return;
    }
    let px = vec2<f32>(u.tile_origin + gid.xy);
    var color = vec3<f32>(0.0);
    if is_advanced() {
        color += scene_color(px + vec2<f32>(0.375, 0.125));
        color += scene_color(px + vec2<f32>(0.875, 0.375));
        color += scene_color(px + vec2<f32>(0.125, 0.625));
        color += scene_color(px + vec2<f32>(0.625, 0.875));
        color *= 0.25;
    } else {
        color = scene_color(px + vec2<f32>(0.5));
    }
    // Clamp keeps a stray NaN or infinity from one sample out of the bloom.
    let finite = select(vec3<f32>(0.0), color, color == color);
    let safe = clamp(finite, vec3<f32>(0.0), vec3<f32>(64.0));
    tile_hdr[gid.y * u.tile_size.x + gid.x] = pack_rgba16f(vec4<f32>(safe, 1.0));
}
