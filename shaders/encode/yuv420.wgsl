// Stitched RGB frame to planar YUV 4:2:0 bytes (I420: Y plane, then U, then V),
// BT.601 limited range, chroma averaged over each 2x2 block (centred siting, as
// y4m's C420jpeg says). One invocation writes one little-endian u32 of the
// output, so any even frame size works without row padding.

@group(0) @binding(0) var<uniform> yu: YuvUniforms;
@group(0) @binding(1) var frame_in: texture_2d<f32>;
@group(0) @binding(2) var<storage, read_write> planes: array<u32>;

fn rgb_at(x: u32, y: u32) -> vec3<f32> {
    return textureLoad(frame_in, vec2<i32>(i32(x), i32(y)), 0).rgb;
}

fn luma_byte(c: vec3<f32>) -> u32 {
    return u32(round(16.0 + 219.0 * dot(c, vec3<f32>(0.299, 0.587, 0.114))));
}

fn chroma_byte(c: vec3<f32>, is_v: bool) -> u32 {
    let y = dot(c, vec3<f32>(0.299, 0.587, 0.114));
    let d = select((c.b - y) / 1.772, (c.r - y) / 1.402, is_v);
    return u32(round(clamp(128.0 + 224.0 * d, 16.0, 240.0)));
}

fn plane_byte(b: u32) -> u32 {
    let w = yu.size.x;
    let h = yu.size.y;
    let luma = w * h;
    let cw = w / 2u;
    let chroma = cw * (h / 2u);
    if b < luma {
        return luma_byte(rgb_at(b % w, b / w));
    }
    if b >= luma + 2u * chroma {
        return 0u;
    }
    let is_v = b >= luma + chroma;
    let c = select(b - luma, b - luma - chroma, is_v);
    let x = (c % cw) * 2u;
    let y = (c / cw) * 2u;
    let avg = 0.25 * (rgb_at(x, y) + rgb_at(x + 1u, y) + rgb_at(x, y + 1u) + rgb_at(x + 1u, y + 1u));
    return chroma_byte(avg, is_v);
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let word = gid.x + gid.y * 65535u * 256u;
    if word >= yu.words {
        return;
    }
    let b = word * 4u;
    planes[word] = plane_byte(b) | (plane_byte(b + 1u) << 8u) | (plane_byte(b + 2u) << 16u) | (plane_byte(b + 3u) << 24u);
}
