// JPEG encode pass on the stitched frame: RGB to YCbCr (JFIF, BT.601 full
// range), 4:2:0 subsampling, 8x8 forward DCT, quantisation and zigzag order. One
// workgroup codes eight 8x8 blocks; blocks are laid out MCU by MCU (Y0 Y1 Y2 Y3 Cb
// Cr), 64 coefficients each as i16 pairs packed in u32, ready for the CPU Huffman
// coder in worker/src/encode/jpeg/. Pixels past the frame edge repeat the last
// row and column, so any frame size codes correctly.

@group(0) @binding(0) var<uniform> ju: JpegUniforms;
@group(0) @binding(1) var frame_in: texture_2d<f32>;
@group(0) @binding(2) var<storage, read_write> coeffs: array<u32>;

// COS_TABLE[u * 8 + x] = C(u) / 2 * cos((2x + 1) u pi / 16), C(0) = 1 / sqrt(2).
var<private> COS_TABLE: array<f32, 64> = array<f32, 64>(
    0.353553391, 0.353553391, 0.353553391, 0.353553391, 0.353553391, 0.353553391, 0.353553391, 0.353553391,
    0.490392640, 0.415734806, 0.277785117, 0.097545161, -0.097545161, -0.277785117, -0.415734806, -0.490392640,
    0.461939766, 0.191341716, -0.191341716, -0.461939766, -0.461939766, -0.191341716, 0.191341716, 0.461939766,
    0.415734806, -0.097545161, -0.490392640, -0.277785117, 0.277785117, 0.490392640, 0.097545161, -0.415734806,
    0.353553391, -0.353553391, -0.353553391, 0.353553391, 0.353553391, -0.353553391, -0.353553391, 0.353553391,
    0.277785117, -0.490392640, 0.097545161, 0.415734806, -0.415734806, -0.097545161, 0.490392640, -0.277785117,
    0.191341716, -0.461939766, 0.461939766, -0.191341716, -0.191341716, 0.461939766, -0.461939766, 0.191341716,
    0.097545161, -0.277785117, 0.415734806, -0.490392640, 0.490392640, -0.415734806, 0.277785117, -0.097545161,
);

// ZIGZAG_ORDER[k] = natural index of the k-th coefficient in zigzag order.
var<private> ZIGZAG_ORDER: array<u32, 64> = array<u32, 64>(
    0u, 1u, 8u, 16u, 9u, 2u, 3u, 10u, 17u, 24u, 32u, 25u, 18u, 11u, 4u, 5u,
    12u, 19u, 26u, 33u, 40u, 48u, 41u, 34u, 27u, 20u, 13u, 6u, 7u, 14u, 21u, 28u,
    35u, 42u, 49u, 56u, 57u, 50u, 43u, 36u, 29u, 22u, 15u, 23u, 30u, 37u, 44u, 51u,
    58u, 59u, 52u, 45u, 38u, 31u, 39u, 46u, 53u, 60u, 61u, 54u, 47u, 55u, 62u, 63u,
);

fn rgb255(x: u32, y: u32) -> vec3<f32> {
    let p = vec2<i32>(i32(min(x, ju.size.x - 1u)), i32(min(y, ju.size.y - 1u)));
    return textureLoad(frame_in, p, 0).rgb * 255.0;
}

fn luma(c: vec3<f32>) -> f32 {
    return dot(c, vec3<f32>(0.299, 0.587, 0.114));
}

fn chroma(c: vec3<f32>, is_cr: bool) -> f32 {
    let w = select(vec3<f32>(-0.168736, -0.331264, 0.5), vec3<f32>(0.5, -0.418688, -0.081312), is_cr);
    return dot(c, w) + 128.0;
}

// AC magnitudes round up only from 5/8 of a step (x / q + 3/8, floored; DC
// rounds half away from zero): a small dead zone, as ffmpeg's MJPEG encoder
// has, that spends no bits on coefficients barely past half a step. On the
// bench frames it gives the same PSNR in fewer bytes than plain rounding.
const AC_ROUNDING: f32 = 0.375;

fn quantise(v: f32, q: f32, limit: f32, rounding: f32) -> i32 {
    let r = sign(v) * floor(abs(v) / q + rounding);
    return i32(clamp(r, -limit, limit));
}

const BLOCKS_PER_GROUP: u32 = 8u;

var<workgroup> rows: array<f32, 512>;
var<workgroup> quantised: array<i32, 512>;

fn block_sample(k: u32, mcu_x: u32, mcu_y: u32, x: u32, y: u32) -> f32 {
    if k < 4u {
        return luma(rgb255(mcu_x + (k % 2u) * 8u + x, mcu_y + (k / 2u) * 8u + y));
    }
    let cx = mcu_x + x * 2u;
    let cy = mcu_y + y * 2u;
    let avg = 0.25 * (rgb255(cx, cy) + rgb255(cx + 1u, cy) + rgb255(cx, cy + 1u) + rgb255(cx + 1u, cy + 1u));
    return chroma(avg, k == 5u);
}

// A workgroup codes eight 8x8 blocks with eight invocations each: invocation r
// transforms row r of its block, then column r, then writes 8 of the 64 zigzag
// coefficients. Rows stay in registers; only the transpose goes through
// workgroup memory, behind two barriers per eight blocks.
@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let b_local = li / 8u;
    let r = li % 8u;
    let block = (wid.x + wid.y * 65535u) * BLOCKS_PER_GROUP + b_local;
    // No early return: every invocation must reach the barriers.
    let valid = block < ju.mcu_count * 6u;
    let mcu = block / 6u;
    let k = block % 6u;
    let mcu_x = (mcu % ju.mcus_x) * 16u;
    let mcu_y = (mcu / ju.mcus_x) * 16u;
    let base = b_local * 64u;

    if valid {
        // Row pass over row r, level-shifted by -128.
        var f: array<f32, 8>;
        for (var x = 0u; x < 8u; x++) {
            f[x] = block_sample(k, mcu_x, mcu_y, x, r) - 128.0;
        }
        for (var u = 0u; u < 8u; u++) {
            var acc = 0.0;
            for (var x = 0u; x < 8u; x++) {
                acc += COS_TABLE[u * 8u + x] * f[x];
            }
            rows[base + r * 8u + u] = acc;
        }
    }
    workgroupBarrier();

    if valid {
        // Column pass over column c = r.
        let c = r;
        var t: array<f32, 8>;
        for (var y = 0u; y < 8u; y++) {
            t[y] = rows[base + y * 8u + c];
        }
        let table = select(0u, 16u, k >= 4u);
        for (var v = 0u; v < 8u; v++) {
            var acc = 0.0;
            for (var y = 0u; y < 8u; y++) {
                acc += COS_TABLE[v * 8u + y] * t[y];
            }
            let i = v * 8u + c;
            let step = ju.quant[table + i / 4u][i % 4u];
            // Baseline Huffman codes AC magnitudes up to 1023 and DC up to 2047.
            quantised[base + i] = select(quantise(acc, step, 1023.0, AC_ROUNDING), quantise(acc, step, 2047.0, 0.5), i == 0u);
        }
    }
    workgroupBarrier();

    if valid {
        for (var j = 0u; j < 4u; j++) {
            let z = r * 4u + j;
            let lo = u32(quantised[base + ZIGZAG_ORDER[2u * z]]) & 0xffffu;
            let hi = u32(quantised[base + ZIGZAG_ORDER[2u * z + 1u]]) & 0xffffu;
            coeffs[block * 32u + z] = lo | (hi << 16u);
        }
    }
}
