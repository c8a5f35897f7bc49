// Baseline Huffman coding on the GPU, after the JPEG pass (shaders/encode/jpeg.wgsl),
// as GPUJPEG does it: only the finished scan leaves the device.
//
// 1. `code_segments`: one invocation per restart segment (`restart` MCUs; DC
//    prediction starts from zero in each) codes its blocks MSB first, stuffs a
//    zero byte after every 0xFF, pads the last byte with 1-bits, and writes
//    the bytes to its own scratch region, their count to `sizes[seg]` (or
//    OVERFLOW when they do not fit its `cap_words`) and its count of non-zero
//    AC coefficients to `sizes[segments + seg]`.
// 2. `place_segments`: one workgroup prefix-sums the sizes, each segment after
//    the first preceded by its RST marker (2 bytes), into `offsets`; writes the
//    scan's length (or OVERFLOW) to `scan[0]`, the frame's non-zero AC
//    coefficients to `scan[1]` and the compaction's dispatch size.
// 3. `compact`: one invocation per word of the scan gathers its four bytes
//    (markers and segment bytes) into `scan[2..]`.
// The CPU coder in worker/src/encode/jpeg/huffman.rs writes the same bytes.

@group(0) @binding(0) var<uniform> hu: HuffmanUniforms;
@group(0) @binding(1) var<storage, read> coeffs: array<u32>;
// Code | length << 16 per symbol: DC luma [0, 12), DC chroma [12, 24),
// AC luma [24, 280), AC chroma [280, 536).
@group(0) @binding(2) var<storage, read> codes: array<u32>;
@group(0) @binding(3) var<storage, read_write> scratch: array<u32>;
@group(0) @binding(4) var<storage, read_write> sizes: array<u32>;
@group(0) @binding(5) var<storage, read_write> offsets: array<u32>;
@group(0) @binding(6) var<storage, read_write> scan: array<u32>;
@group(0) @binding(7) var<storage, read_write> dispatch: array<u32>;

const OVERFLOW: u32 = 0xffffffffu;
const AC_BASE: u32 = 24u;
const COMPACT_GROUP: u32 = 64u;

// The bit writer of one segment.
struct Writer {
    acc: u32,
    bits: u32,
    // Bytes written, the word being filled, and whether the region overflowed.
    bytes: u32,
    word: u32,
    base: u32,
    full: bool,
}

var<private> w: Writer;
var<private> nonzero: u32;

fn emit(byte: u32) {
    let slot = w.bytes % 4u;
    w.word |= byte << (8u * slot);
    if slot == 3u {
        let at = w.bytes / 4u;
        if at < hu.cap_words {
            scratch[w.base + at] = w.word;
        } else {
            w.full = true;
        }
        w.word = 0u;
    }
    w.bytes += 1u;
}

fn put(value: u32, len: u32) {
    if len == 0u {
        return;
    }
    let mask = (1u << len) - 1u;
    w.acc = (w.acc << len) | (value & mask);
    w.bits += len;
    while w.bits >= 8u {
        w.bits -= 8u;
        let byte = (w.acc >> w.bits) & 0xffu;
        emit(byte);
        if byte == 0xffu {
            emit(0u);
        }
    }
    w.acc &= (1u << w.bits) - 1u;
}

fn put_code(entry: u32) {
    put(entry & 0xffffu, entry >> 16u);
}

fn category(v: i32) -> u32 {
    return 32u - countLeadingZeros(u32(abs(v)));
}

fn extra_bits(v: i32, cat: u32) -> u32 {
    return u32(select(v, v - 1, v < 0)) & ((1u << cat) - 1u);
}

// The k-th coefficient (zigzag order) of block `block`: i16 pairs packed in u32.
fn coefficient(block: u32, k: u32) -> i32 {
    let word = coeffs[block * 32u + k / 2u];
    return select(i32(word << 16u) >> 16u, i32(word) >> 16u, (k & 1u) == 1u);
}

// Codes one block; returns its DC for the next block's prediction.
fn code_block(block: u32, prev_dc: i32, table: u32) -> i32 {
    let dc = coefficient(block, 0u);
    let diff = dc - prev_dc;
    let cat = category(diff);
    put_code(codes[table * 12u + cat]);
    if cat > 0u {
        put(extra_bits(diff, cat), cat);
    }
    let ac = AC_BASE + table * 256u;
    var run = 0u;
    for (var k = 1u; k < 64u; k++) {
        let v = coefficient(block, k);
        if v == 0 {
            run += 1u;
            continue;
        }
        nonzero += 1u;
        while run > 15u {
            put_code(codes[ac + 0xf0u]);
            run -= 16u;
        }
        let c = category(v);
        put_code(codes[ac + ((run << 4u) | c)]);
        put(extra_bits(v, c), c);
        run = 0u;
    }
    if run > 0u {
        put_code(codes[ac]);
    }
    return dc;
}

@compute @workgroup_size(64, 1, 1)
fn code_segments(@builtin(global_invocation_id) gid: vec3<u32>) {
    let seg = gid.x;
    if seg >= hu.segments {
        return;
    }
    w = Writer(0u, 0u, 0u, 0u, seg * hu.cap_words, false);
    nonzero = 0u;
    var pred = array<i32, 3>(0, 0, 0);
    let first = seg * hu.restart;
    let last = min(first + hu.restart, hu.mcu_count);
    for (var mcu = first; mcu < last; mcu++) {
        for (var b = 0u; b < 6u; b++) {
            let comp = select(0u, b - 3u, b > 3u);
            pred[comp] = code_block(mcu * 6u + b, pred[comp], select(0u, 1u, comp > 0u));
        }
    }
    if w.bits > 0u {
        let pad = 8u - w.bits;
        put((1u << pad) - 1u, pad);
    }
    if w.bytes % 4u != 0u {
        let at = w.bytes / 4u;
        if at < hu.cap_words {
            scratch[w.base + at] = w.word;
        } else {
            w.full = true;
        }
    }
    sizes[seg] = select(w.bytes, OVERFLOW, w.full);
    sizes[hu.segments + seg] = nonzero;
}

const SCAN_THREADS: u32 = 256u;
var<workgroup> partial: array<u32, 256>;
var<workgroup> overflowed: atomic<u32>;
var<workgroup> nonzero_total: atomic<u32>;

// Bytes segment `i` takes in the scan: its RST marker (after the first), its bytes.
fn span(i: u32) -> u32 {
    return sizes[i] + select(0u, 2u, i > 0u);
}

@compute @workgroup_size(256, 1, 1)
fn place_segments(@builtin(local_invocation_index) li: u32) {
    let n = hu.segments;
    let per = (n + SCAN_THREADS - 1u) / SCAN_THREADS;
    let first = min(li * per, n);
    let last = min(first + per, n);
    var sum = 0u;
    var nz = 0u;
    for (var i = first; i < last; i++) {
        nz += sizes[n + i];
        if sizes[i] == OVERFLOW {
            atomicStore(&overflowed, 1u);
        } else {
            sum += span(i);
        }
    }
    atomicAdd(&nonzero_total, nz);
    partial[li] = sum;
    workgroupBarrier();
    // Inclusive Hillis-Steele scan of the partial sums.
    for (var d = 1u; d < SCAN_THREADS; d *= 2u) {
        var add = 0u;
        if li >= d {
            add = partial[li - d];
        }
        workgroupBarrier();
        partial[li] += add;
        workgroupBarrier();
    }
    var at = partial[li] - sum;
    for (var i = first; i < last; i++) {
        offsets[i] = at;
        if sizes[i] != OVERFLOW {
            at += span(i);
        }
    }
    if li == SCAN_THREADS - 1u {
        let total = partial[li];
        offsets[n] = total;
        let failed = atomicLoad(&overflowed) != 0u;
        scan[0] = select(total, OVERFLOW, failed);
        scan[1] = atomicLoad(&nonzero_total);
        let groups = select((total + 4u * COMPACT_GROUP - 1u) / (4u * COMPACT_GROUP), 0u, failed);
        dispatch[0] = min(groups, 65535u);
        dispatch[1] = (groups + 65534u) / 65535u;
        dispatch[2] = 1u;
    }
}

// The segment holding scan byte `p`: the last `i` with offsets[i] <= p.
fn segment_of(p: u32) -> u32 {
    var lo = 0u;
    var hi = hu.segments - 1u;
    while lo < hi {
        let mid = (lo + hi + 1u) / 2u;
        if offsets[mid] <= p {
            lo = mid;
        } else {
            hi = mid - 1u;
        }
    }
    return lo;
}

fn scan_byte(p: u32) -> u32 {
    let i = segment_of(p);
    var local = p - offsets[i];
    if i > 0u {
        if local < 2u {
            return select(0xffu, 0xd0u + (i - 1u) % 8u, local == 1u);
        }
        local -= 2u;
    }
    return (scratch[i * hu.cap_words + local / 4u] >> (8u * (local % 4u))) & 0xffu;
}

@compute @workgroup_size(64, 1, 1)
fn compact(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let word = (wid.x + wid.y * 65535u) * COMPACT_GROUP + li;
    let total = offsets[hu.segments];
    if word * 4u >= total {
        return;
    }
    var out = 0u;
    for (var j = 0u; j < 4u; j++) {
        let p = word * 4u + j;
        if p < total {
            out |= scan_byte(p) << (8u * j);
        }
    }
    scan[2u + word] = out;
}
