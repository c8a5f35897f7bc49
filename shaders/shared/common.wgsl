// Shared structs and helpers: mirrored in Rust by #[repr(C)] + bytemuck types in
// worker/src/render/frame.rs and worker/src/encode/yuv.rs, whose size assertions
// keep the two layouts in step.

// Per-tile uniforms of a template pass.
struct FrameUniforms {
    frame_size: vec2<u32>,   // whole frame, pixels
    tile_origin: vec2<u32>,  // top-left of the tile's rect (core + halo), frame pixels
    tile_size: vec2<u32>,    // size of the tile's rect
    frame_index: u32,
    variant: u32,            // 0 general, 1 advanced
    time_s: f32,
    seed: u32,
    _pad0: u32,
    _pad1: u32,
    colors: array<vec4<f32>, 4>,   // linear RGB colour parameters, declaration order
    scalars: array<vec4<f32>, 2>,  // numeric parameters, declaration order
}

// Per-tile uniforms of the bloom post-process.
struct PostUniforms {
    tile_size: vec2<u32>,
    radius: u32,
    _pad0: u32,
    threshold: f32,
    strength: f32,
    exposure: f32,
    _pad1: f32,
}

// Per-tile uniforms of the stitch pass. rects[k] = (x, y, w, h) of the tile
// itself (k = 0), its right (1), lower (2) and lower-right (3) neighbours.
struct StitchUniforms {
    region_origin: vec2<u32>,
    region_size: vec2<u32>,
    seam: vec2<u32>,        // core boundary to the right / below
    has_next: vec2<u32>,    // 1 where a right / lower neighbour exists
    blend_half: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    rects: array<vec4<u32>, 4>,
}

// Uniforms of the RGB to planar YUV 4:2:0 conversion.
struct YuvUniforms {
    size: vec2<u32>,
    words: u32,
    _pad0: u32,
}

// Uniforms of the JPEG encode pass: quantisation steps of the luma (quant[0..16])
// and chroma (quant[16..32]) tables in natural order, four per vec4.
struct JpegUniforms {
    size: vec2<u32>,
    mcus_x: u32,
    mcu_count: u32,
    quant: array<vec4<f32>, 32>,
}

const VARIANT_ADVANCED: u32 = 1u;
const PI: f32 = 3.14159265358979;

// Tile buffers hold RGBA as four f16 packed in two u32: half the bytes of f32,
// and 11 bits of mantissa are plenty ahead of an 8-bit output.
fn pack_rgba16f(c: vec4<f32>) -> vec2<u32> {
    return vec2<u32>(pack2x16float(c.xy), pack2x16float(c.zw));
}

fn unpack_rgba16f(p: vec2<u32>) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(p.x), unpack2x16float(p.y));
}

fn luminance(c: vec3<f32>) -> f32 {
    return dot(c, vec3<f32>(0.2126, 0.7152, 0.0722));
}

// ACES filmic fit (Narkowicz 2015).
fn tonemap_aces(x: vec3<f32>) -> vec3<f32> {
    let a = 2.51;
    let b = 0.03;
    let c = 2.43;
    let d = 0.59;
    let e = 0.14;
    return clamp((x * (a * x + b)) / (x * (c * x + d) + e), vec3<f32>(0.0), vec3<f32>(1.0));
}

fn linear_to_srgb(c: vec3<f32>) -> vec3<f32> {
    let lo = c * 12.92;
    let hi = 1.055 * pow(c, vec3<f32>(1.0 / 2.4)) - 0.055;
    return select(hi, lo, c <= vec3<f32>(0.0031308));
}

// The GPU entropy coder's sizes (shaders/encode/huffman.wgsl).
struct HuffmanUniforms {
    // MCUs of the frame, MCUs per restart interval, intervals.
    mcu_count: u32,
    restart: u32,
    segments: u32,
    // Words each piece's bits may fill (an interval's stuffed bytes: as many
    // per piece of it); past them it overflows.
    cap_words: u32,
}
