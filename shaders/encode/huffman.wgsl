// Baseline Huffman coding on the GPU, after the JPEG pass (shaders/encode/jpeg.wgsl),
// as GPUJPEG does it, with tables made for each frame: only the tables and the
// finished scan leave the device.
//
// A restart interval (`restart` MCUs; RST markers between, DC prediction
// from zero in each) is coded in pieces of PIECE_MCUS MCUs, one invocation
// each, so the GPU codes many pieces side by side while the scan carries few
// RST markers (each costs its two bytes, the padding before it and the DC
// prediction it resets). A piece after the first of its interval predicts its
// first DCs from the MCU before it, as a coder walking the interval would.
//
// 0. `count_segments`: one invocation per piece walks its blocks as
//    `code_segments` does, counting symbols instead of coding them (a
//    histogram per workgroup, added into `tables[0..SYMBOLS]`).
//    `build_tables`: one workgroup per table makes the optimal code from the
//    counts (worker/src/encode/jpeg/optimal.rs is the reference, step for
//    step), writes every symbol's code to `codes` and the table as DHT stores
//    it (symbol count, counts per length, symbols) to `tables`.
// 1. `code_segments`: one invocation per piece codes its blocks MSB first,
//    unstuffed and unpadded, into its own region of `scan` (free until
//    `compact` fills it); writes its length
//    in bits (or OVERFLOW when it does not fit `cap_words`) and its count of
//    non-zero AC coefficients to `sizes`.
//    `join_segments`: one invocation per restart interval reads its pieces'
//    bits in order, stuffs a zero byte after every 0xFF, pads the last byte
//    with 1-bits, and writes the bytes to the interval's region of
//    `scratch`, their count
//    to `sizes[seg]` (or OVERFLOW) and the interval's non-zero AC
//    coefficients to `sizes[segments + seg]`.
// 2. `place_segments`: one workgroup prefix-sums the intervals' sizes, each
//    after the first preceded by its RST marker (2 bytes), into `offsets`;
//    writes the length of what is read back (DHT body and scan; or OVERFLOW)
//    to `scan[0]`, the frame's non-zero AC coefficients to `scan[1]`, the DHT
//    body's length to `scan[2]` and the compaction's dispatch size; and
//    clears the counts for the next frame.
// 3. `compact`: one invocation per word gathers its four bytes (the DHT body,
//    then markers and interval bytes) into `scan[3..]`.
// The CPU coder in worker/src/encode/jpeg/huffman.rs writes the same bytes,
// walking each restart interval whole.

@group(0) @binding(0) var<uniform> hu: HuffmanUniforms;
@group(0) @binding(1) var<storage, read> coeffs: array<u32>;
// Code | length << 16 per symbol: DC luma [0, 12), DC chroma [12, 24),
// AC luma [24, 280), AC chroma [280, 536); written by `build_tables`.
@group(0) @binding(2) var<storage, read_write> codes: array<u32>;
// The intervals' stuffed bytes, pieces_per() * cap_words words each.
@group(0) @binding(3) var<storage, read_write> scratch: array<u32>;
// Intervals' byte counts, intervals' non-zero AC counts, then pieces' bit
// counts (from 2 * segments) and pieces' non-zero AC counts.
@group(0) @binding(4) var<storage, read_write> sizes: array<u32>;
@group(0) @binding(5) var<storage, read_write> offsets: array<u32>;
// What is read back (header words, the DHT body, the scan); before
// `compact` writes it, the pieces' bits (cap_words words each from word
// HEADER_WORDS).
@group(0) @binding(6) var<storage, read_write> scan: array<u32>;
@group(0) @binding(7) var<storage, read_write> dispatch: array<u32>;
// The frame's symbol counts (indexed as `codes`), then per table
// TABLE_WORDS words: its symbol count, its code counts per length 1..16 and
// its symbols, so that word `q` of a table is byte `q` of its DHT entry.
@group(0) @binding(8) var<storage, read_write> tables: array<atomic<u32>>;

const OVERFLOW: u32 = 0xffffffffu;
const AC_BASE: u32 = 24u;
const COMPACT_GROUP: u32 = 64u;
const SYMBOLS: u32 = 536u;
const TABLE_WORDS: u32 = 273u;
const HEADER_WORDS: u32 = 3u;
// MCUs per piece: the unit one invocation codes. Mirrored by
// `PIECE_MCUS` in worker/src/encode/jpeg/mod.rs.
const PIECE_MCUS: u32 = 8u;

fn pieces_per() -> u32 {
    return (hu.restart + PIECE_MCUS - 1u) / PIECE_MCUS;
}

fn pieces() -> u32 {
    return hu.segments * pieces_per();
}

fn piece_bits_at(p: u32) -> u32 {
    return 2u * hu.segments + p;
}

fn piece_nonzero_at(p: u32) -> u32 {
    return 2u * hu.segments + pieces() + p;
}

// The bit writer of a piece (unstuffed, into `scan`) or an interval
// (stuffed, into `scratch`).
struct Writer {
    acc: u32,
    bits: u32,
    // Bytes written, the word being filled, the region (its first word and
    // its size in words), whether it overflowed, whether 0xFF is stuffed.
    bytes: u32,
    word: u32,
    base: u32,
    cap: u32,
    full: bool,
    stuff: bool,
}

var<private> w: Writer;
var<private> nonzero: u32;

fn emit(byte: u32) {
    let slot = w.bytes % 4u;
    w.word |= byte << (8u * slot);
    if slot == 3u {
        store_word();
        w.word = 0u;
    }
    w.bytes += 1u;
}

// Stores the word being filled at its place in the writer's region.
fn store_word() {
    let at = w.bytes / 4u;
    if at >= w.cap {
        w.full = true;
    } else if w.stuff {
        scratch[w.base + at] = w.word;
    } else {
        scan[w.base + at] = w.word;
    }
}

// Writes the word being filled, if it holds any byte.
fn flush_word() {
    if w.bytes % 4u != 0u {
        store_word();
    }
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
        if w.stuff && byte == 0xffu {
            emit(0u);
        }
    }
    w.acc &= (1u << w.bits) - 1u;
}

fn put_code(entry: u32) {
    put(entry & 0xffffu, entry >> 16u);
}

// Whether this invocation walks its piece to count symbols or to code them.
var<private> counting: bool;
var<workgroup> group_counts: array<atomic<u32>, 536>;

fn symbol(index: u32) {
    if counting {
        atomicAdd(&group_counts[index], 1u);
    } else {
        put_code(codes[index]);
    }
}

fn extra(value: u32, len: u32) {
    if !counting {
        put(value, len);
    }
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
    symbol(table * 12u + cat);
    if cat > 0u {
        extra(extra_bits(diff, cat), cat);
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
            symbol(ac + 0xf0u);
            run -= 16u;
        }
        let c = category(v);
        symbol(ac + ((run << 4u) | c));
        extra(extra_bits(v, c), c);
        run = 0u;
    }
    if run > 0u {
        symbol(ac);
    }
    return dc;
}

// Walks piece `p`'s blocks. DC prediction starts from zero in the first
// piece of an interval, and from the MCU before in the others.
fn walk_piece(p: u32) {
    let per = pieces_per();
    let start = (p / per) * hu.restart;
    let end = min(start + hu.restart, hu.mcu_count);
    let first = start + (p % per) * PIECE_MCUS;
    let last = min(first + PIECE_MCUS, end);
    var pred = array<i32, 3>(0, 0, 0);
    if first > start && first < end {
        let before = (first - 1u) * 6u;
        pred = array<i32, 3>(coefficient(before + 3u, 0u), coefficient(before + 4u, 0u), coefficient(before + 5u, 0u));
    }
    for (var mcu = first; mcu < last; mcu++) {
        for (var b = 0u; b < 6u; b++) {
            let comp = select(0u, b - 3u, b > 3u);
            pred[comp] = code_block(mcu * 6u + b, pred[comp], select(0u, 1u, comp > 0u));
        }
    }
}

@compute @workgroup_size(64, 1, 1)
fn count_segments(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var i = li; i < SYMBOLS; i += 64u) {
        atomicStore(&group_counts[i], 0u);
    }
    workgroupBarrier();
    counting = true;
    if gid.x < pieces() {
        walk_piece(gid.x);
    }
    workgroupBarrier();
    for (var i = li; i < SYMBOLS; i += 64u) {
        let n = atomicLoad(&group_counts[i]);
        if n > 0u {
            atomicAdd(&tables[i], n);
        }
    }
}

// The optimal code of one table (workgroup `t`: DC luma, DC chroma, AC luma,
// AC chroma), as `HuffmanTable::optimal` makes it.
var<workgroup> bt_count: array<u32, 257>;
var<workgroup> bt_leaf: array<u32, 257>;
var<workgroup> bt_leaf_parent: array<u32, 257>;
var<workgroup> bt_node: array<u32, 256>;
var<workgroup> bt_node_parent: array<u32, 256>;
var<workgroup> bt_depth: array<u32, 257>;
var<workgroup> bt_bits: array<u32, 257>;
var<workgroup> bt_values: array<u32, 256>;
var<workgroup> bt_leaves: atomic<u32>;
var<workgroup> bt_used: atomic<u32>;

@compute @workgroup_size(256, 1, 1)
fn build_tables(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    if li == 0u {
        atomicStore(&bt_leaves, 0u);
        atomicStore(&bt_used, 0u);
    }
    workgroupBarrier();
    let t = wid.x;
    let n = select(256u, 12u, t < 2u);
    let base = select(AC_BASE + (t - 2u) * 256u, t * 12u, t < 2u);
    // Counts of the leaves: the symbols, and the reserved symbol `n` once.
    for (var s = li; s <= n; s += 256u) {
        var c = 1u;
        if s < n {
            c = atomicLoad(&tables[base + s]);
        }
        bt_count[s] = c;
        bt_depth[s] = 0u;
        if s < n && c > 0u {
            atomicStore(&bt_used, 1u);
        }
    }
    for (var i = li; i < 257u; i += 256u) {
        bt_bits[i] = 0u;
    }
    workgroupBarrier();
    if li == 0u && atomicLoad(&bt_used) == 0u {
        bt_count[0] = 1u; // a table no symbol uses still gets a code
    }
    workgroupBarrier();
    // Leaves sorted by (count, symbol): each finds its rank.
    for (var s = li; s <= n; s += 256u) {
        let c = bt_count[s];
        if c > 0u {
            var rank = 0u;
            for (var o = 0u; o <= n; o++) {
                let d = bt_count[o];
                if d > 0u && (d < c || (d == c && o < s)) {
                    rank += 1u;
                }
            }
            bt_leaf[rank] = s;
            atomicAdd(&bt_leaves, 1u);
        }
    }
    workgroupBarrier();
    let l = atomicLoad(&bt_leaves);
    if li == 0u {
        // Two-queue merge, a leaf winning ties.
        var next_leaf = 0u;
        var next_node = 0u;
        for (var k = 0u; k + 1u < l; k++) {
            bt_node[k] = 0u;
            for (var pick = 0u; pick < 2u; pick++) {
                if next_leaf < l && (next_node == k || bt_count[bt_leaf[next_leaf]] <= bt_node[next_node]) {
                    bt_leaf_parent[next_leaf] = k;
                    bt_node[k] += bt_count[bt_leaf[next_leaf]];
                    next_leaf += 1u;
                } else {
                    bt_node_parent[next_node] = k;
                    bt_node[k] += bt_node[next_node];
                    next_node += 1u;
                }
            }
        }
        // Node depths (over the weights, no longer needed); the root is last.
        bt_node[l - 2u] = 0u;
        for (var k = l - 2u; k > 0u; k--) {
            bt_node[k - 1u] = bt_node[bt_node_parent[k - 1u]] + 1u;
        }
        for (var r = 0u; r < l; r++) {
            let d = bt_node[bt_leaf_parent[r]] + 1u;
            bt_depth[bt_leaf[r]] = d;
            bt_bits[d] += 1u;
        }
        // Annex K.3: no code longer than 16 bits; then the reserved code goes.
        for (var i = 256u; i > 16u; i--) {
            while bt_bits[i] > 0u {
                var j = i - 2u;
                while bt_bits[j] == 0u {
                    j -= 1u;
                }
                bt_bits[i] -= 2u;
                bt_bits[i - 1u] += 1u;
                bt_bits[j + 1u] += 2u;
                bt_bits[j] -= 1u;
            }
        }
        var longest = 16u;
        while bt_bits[longest] == 0u {
            longest -= 1u;
        }
        bt_bits[longest] -= 1u;
    }
    workgroupBarrier();
    // The symbols in code order: by (depth, symbol).
    for (var s = li; s < n; s += 256u) {
        let c = bt_count[s];
        if c > 0u {
            let d = bt_depth[s];
            var rank = 0u;
            for (var o = 0u; o < n; o++) {
                let e = bt_depth[o];
                if bt_count[o] > 0u && (e < d || (e == d && o < s)) {
                    rank += 1u;
                }
            }
            bt_values[rank] = s;
        }
    }
    workgroupBarrier();
    if li == 0u {
        let out = SYMBOLS + t * TABLE_WORDS;
        atomicStore(&tables[out], l - 1u);
        for (var s = 0u; s < n; s++) {
            codes[base + s] = 0u;
        }
        var code = 0u;
        var k = 0u;
        for (var len = 1u; len <= 16u; len++) {
            atomicStore(&tables[out + len], bt_bits[len]);
            for (var i = 0u; i < bt_bits[len]; i++) {
                let s = bt_values[k];
                codes[base + s] = code | (len << 16u);
                atomicStore(&tables[out + 17u + k], s);
                code += 1u;
                k += 1u;
            }
            code <<= 1u;
        }
    }
}

@compute @workgroup_size(64, 1, 1)
fn code_segments(@builtin(global_invocation_id) gid: vec3<u32>) {
    let p = gid.x;
    if p >= pieces() {
        return;
    }
    w = Writer(0u, 0u, 0u, 0u, HEADER_WORDS + p * hu.cap_words, hu.cap_words, false, false);
    nonzero = 0u;
    counting = false;
    walk_piece(p);
    let bits = w.bytes * 8u + w.bits;
    if w.bits > 0u {
        // The last bits, high in a byte of their own (not padded: the next
        // piece's bits follow them).
        emit((w.acc << (8u - w.bits)) & 0xffu);
    }
    flush_word();
    sizes[piece_bits_at(p)] = select(bits, OVERFLOW, w.full);
    sizes[piece_nonzero_at(p)] = nonzero;
}

// Byte `b` of piece `p`'s bits.
fn piece_byte(p: u32, b: u32) -> u32 {
    return (scan[HEADER_WORDS + p * hu.cap_words + b / 4u] >> (8u * (b % 4u))) & 0xffu;
}

@compute @workgroup_size(64, 1, 1)
fn join_segments(@builtin(global_invocation_id) gid: vec3<u32>) {
    let seg = gid.x;
    if seg >= hu.segments {
        return;
    }
    let per = pieces_per();
    let cap = per * hu.cap_words;
    w = Writer(0u, 0u, 0u, 0u, seg * cap, cap, false, true);
    var nz = 0u;
    var lost = false;
    for (var j = 0u; j < per; j++) {
        let p = seg * per + j;
        let bits = sizes[piece_bits_at(p)];
        if bits == OVERFLOW {
            lost = true;
            break;
        }
        nz += sizes[piece_nonzero_at(p)];
        let whole = bits / 8u;
        for (var b = 0u; b < whole; b++) {
            put(piece_byte(p, b), 8u);
        }
        let rest = bits % 8u;
        if rest > 0u {
            put(piece_byte(p, whole) >> (8u - rest), rest);
        }
    }
    if w.bits > 0u {
        let pad = 8u - w.bits;
        put((1u << pad) - 1u, pad);
    }
    flush_word();
    sizes[seg] = select(w.bytes, OVERFLOW, w.full || lost);
    sizes[hu.segments + seg] = nz;
}

const SCAN_THREADS: u32 = 256u;
var<workgroup> partial: array<u32, 256>;
var<workgroup> overflowed: atomic<u32>;
var<workgroup> nonzero_total: atomic<u32>;

// Bytes interval `i` takes in the scan: its RST marker (after the first), its bytes.
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
    // The counts are spent: clear them for the next frame.
    for (var i = li; i < SYMBOLS; i += SCAN_THREADS) {
        atomicStore(&tables[i], 0u);
    }
    if li == SCAN_THREADS - 1u {
        let total = partial[li];
        offsets[n] = total;
        let failed = atomicLoad(&overflowed) != 0u;
        let dht = dht_bytes();
        let payload = dht + total;
        scan[0] = select(payload, OVERFLOW, failed);
        scan[1] = atomicLoad(&nonzero_total);
        scan[2] = dht;
        let groups = select((payload + 4u * COMPACT_GROUP - 1u) / (4u * COMPACT_GROUP), 0u, failed);
        dispatch[0] = min(groups, 65535u);
        dispatch[1] = (groups + 65534u) / 65535u;
        dispatch[2] = 1u;
    }
}

// Bytes of the DHT segment's body: per table, its class and id, 16 counts, its symbols.
fn dht_bytes() -> u32 {
    var bytes = 0u;
    for (var t = 0u; t < 4u; t++) {
        bytes += 17u + atomicLoad(&tables[SYMBOLS + t * TABLE_WORDS]);
    }
    return bytes;
}

// Byte `p` of the DHT segment's body.
fn dht_byte(p: u32) -> u32 {
    var q = p;
    for (var t = 0u; t < 4u; t++) {
        let at = SYMBOLS + t * TABLE_WORDS;
        let len = 17u + atomicLoad(&tables[at]);
        if q < len {
            if q == 0u {
                return ((t >> 1u) << 4u) | (t & 1u); // class (DC 0, AC 1) and id (luma 0, chroma 1)
            }
            return atomicLoad(&tables[at + q]);
        }
        q -= len;
    }
    return 0u;
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
    return (scratch[i * pieces_per() * hu.cap_words + local / 4u] >> (8u * (local % 4u))) & 0xffu;
}

// Byte `p` of what is read back: the DHT body, then the scan.
fn payload_byte(p: u32, dht: u32) -> u32 {
    if p < dht {
        return dht_byte(p);
    }
    return scan_byte(p - dht);
}

@compute @workgroup_size(64, 1, 1)
fn compact(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let word = (wid.x + wid.y * 65535u) * COMPACT_GROUP + li;
    let dht = scan[2];
    let total = dht + offsets[hu.segments];
    if word * 4u >= total {
        return;
    }
    var out = 0u;
    for (var j = 0u; j < 4u; j++) {
        let p = word * 4u + j;
        if p < total {
            out |= payload_byte(p, dht) << (8u * j);
        }
    }
    scan[HEADER_WORDS + word] = out;
}
