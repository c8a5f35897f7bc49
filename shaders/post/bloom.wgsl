// Bloom post-process on one tile, in two dispatches: `bright_blur_x` blurs the
// bright part of each row into `scratch`; `composite_y` blurs that along columns,
// adds it back, tone-maps and encodes sRGB in place. Reads clamp to the tile's
// rect: at frame borders that is the frame's edge, as in an untiled render; at
// interior edges the results within `radius` of the edge are wrong, which is why
// tiles carry a halo of at least `radius` pixels and the stitch never uses them.

@group(0) @binding(0) var<uniform> pu: PostUniforms;
@group(0) @binding(1) var<storage, read_write> hdr: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read_write> scratch: array<vec2<u32>>;

fn gauss(d: i32) -> f32 {
    let sigma = f32(pu.radius) * 0.45;
    let x = f32(d);
    return exp(-x * x / (2.0 * sigma * sigma));
}

fn bright(c: vec3<f32>) -> vec3<f32> {
    let l = luminance(c);
    let k = max(l - pu.threshold, 0.0) / max(l, 1e-4);
    return c * k;
}

@compute @workgroup_size(8, 8, 1)
fn bright_blur_x(@builtin(global_invocation_id) gid: vec3<u32>) {
    let size = pu.tile_size;
    if gid.x >= size.x || gid.y >= size.y {
        return;
    }
    let r = i32(pu.radius);
    var sum = vec3<f32>(0.0);
    var norm = 0.0;
    for (var d = -r; d <= r; d++) {
        let x = u32(clamp(i32(gid.x) + d, 0, i32(size.x) - 1));
        let w = gauss(d);
        sum += w * bright(unpack_rgba16f(hdr[gid.y * size.x + x]).rgb);
        norm += w;
    }
    scratch[gid.y * size.x + gid.x] = pack_rgba16f(vec4<f32>(sum / norm, 1.0));
}

@compute @workgroup_size(8, 8, 1)
fn composite_y(@builtin(global_invocation_id) gid: vec3<u32>) {
    let size = pu.tile_size;
    if gid.x >= size.x || gid.y >= size.y {
        return;
    }
    let r = i32(pu.radius);
    var glow = vec3<f32>(0.0);
    var norm = 0.0;
    for (var d = -r; d <= r; d++) {
        let y = u32(clamp(i32(gid.y) + d, 0, i32(size.y) - 1));
        let w = gauss(d);
        glow += w * unpack_rgba16f(scratch[y * size.x + gid.x]).rgb;
        norm += w;
    }
    let i = gid.y * size.x + gid.x;
    let base = unpack_rgba16f(hdr[i]).rgb;
    let mapped = tonemap_aces((base + pu.strength * glow / norm) * pu.exposure);
    hdr[i] = pack_rgba16f(vec4<f32>(linear_to_srgb(mapped), 1.0));
}
