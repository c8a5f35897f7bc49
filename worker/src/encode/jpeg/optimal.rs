//! Huffman tables made for each frame from its own symbol counts (T.81 Annex
//! K.2's optimal code, lengths limited to 16 as Annex K.3 and libjpeg do),
//! and the standard tables (Annex K.3) for reference.
//!
//! This is the reference of the GPU's `build_tables` pass
//! (shaders/encode/huffman.wgsl), step for step, so both sides make the same
//! tables from the same counts: the leaves (symbols that occur, and a reserved
//! symbol counted once so that no code is all 1-bits) sorted by (count,
//! symbol); the two-queue Huffman merge, a leaf winning ties; the depths;
//! the 16-bit limit; the reserved code taken off the longest length; the
//! symbols listed by (depth, symbol). The tables depend on the frame alone,
//! so a chunked clip's frames are the whole render's, byte for byte.

use super::tables::{HuffmanCodes, HuffmanSpec, AC_CHROMA, AC_LUMA, DC_CHROMA, DC_LUMA};

/// Symbols of each table, in the order the coders index them: DC luma, DC
/// chroma (categories 0–11), AC luma, AC chroma (run << 4 | size).
pub const TABLE_SYMBOLS: [usize; 4] = [12, 12, 256, 256];
/// Where each table's symbols start in a histogram or a code table.
pub const TABLE_BASE: [usize; 4] = [0, 12, 24, 280];
/// Entries of a histogram or a code table: every symbol of the four tables.
pub const SYMBOLS: usize = 536;
/// Each table's class and id in the DHT segment (class 0 DC, 1 AC; id 0 luma, 1 chroma).
pub const CLASS_IDS: [u8; 4] = [0x00, 0x01, 0x10, 0x11];

/// A Huffman table as the DHT segment stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HuffmanTable {
    /// Codes of each length 1..=16.
    pub bits: [u8; 16],
    /// Symbols in code order.
    pub values: Vec<u8>,
}

impl HuffmanTable {
    fn from_spec(spec: &HuffmanSpec) -> Self {
        Self { bits: spec.bits, values: spec.values.to_vec() }
    }

    /// The optimal table for one table's symbol counts (`counts[s]` for symbol s).
    pub fn optimal(counts: &[u32]) -> Self {
        let n = counts.len();
        // Counts of the leaves: symbols that occur (symbol 0 if none does, so
        // every table has a code), and the reserved symbol `n`, counted once.
        let mut count: Vec<u32> = counts.to_vec();
        if count.iter().all(|&c| c == 0) {
            count[0] = 1;
        }
        count.push(1);
        let mut leaves: Vec<usize> = (0..=n).filter(|&s| count[s] > 0).collect();
        leaves.sort_by_key(|&s| (count[s], s));
        let l = leaves.len();

        // Two-queue merge: leaves in order, internal nodes in the order they are
        // made (their weights never decrease); the lighter front goes first, a
        // leaf on a tie.
        let mut weight = vec![0u32; l - 1];
        let mut leaf_parent = vec![0usize; l];
        let mut node_parent = vec![0usize; l - 1];
        let (mut li, mut ni) = (0, 0);
        for k in 0..l - 1 {
            for _ in 0..2 {
                if li < l && (ni == k || count[leaves[li]] <= weight[ni]) {
                    leaf_parent[li] = k;
                    weight[k] += count[leaves[li]];
                    li += 1;
                } else {
                    node_parent[ni] = k;
                    weight[k] += weight[ni];
                    ni += 1;
                }
            }
        }
        // Depths: the root is the last node made; parents come after children.
        let mut node_depth = vec![0u32; l - 1];
        for k in (0..l - 2).rev() {
            node_depth[k] = node_depth[node_parent[k]] + 1;
        }
        let mut depth = vec![0u32; n + 1];
        // Codes per length; no leaf is deeper than l - 1.
        let mut bits = vec![0u32; (l + 1).max(17)];
        for (rank, &s) in leaves.iter().enumerate() {
            depth[s] = node_depth[leaf_parent[rank]] + 1;
            bits[depth[s] as usize] += 1;
        }
        limit_lengths(&mut bits);

        let mut real: Vec<usize> = (0..n).filter(|&s| count[s] > 0).collect();
        real.sort_by_key(|&s| (depth[s], s));
        let mut out = [0u8; 16];
        for (o, &b) in out.iter_mut().zip(&bits[1..=16]) {
            *o = b as u8;
        }
        Self { bits: out, values: real.iter().map(|&s| s as u8).collect() }
    }
}

/// Annex K.3's length limit on code counts by length (`bits[d]`, any depth;
/// at least 17 entries),
/// then one code taken off the longest length: the reserved symbol's.
fn limit_lengths(bits: &mut [u32]) {
    for i in (17..bits.len()).rev() {
        while bits[i] > 0 {
            let mut j = i - 2;
            while bits[j] == 0 {
                j -= 1;
            }
            bits[i] -= 2;
            bits[i - 1] += 1;
            bits[j + 1] += 2;
            bits[j] -= 1;
        }
    }
    let mut i = 16;
    while bits[i] == 0 {
        i -= 1;
    }
    bits[i] -= 1;
}

/// The four tables of a frame: the codes the coders read and the DHT body
/// the file carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameTables {
    pub tables: [HuffmanTable; 4],
}

impl FrameTables {
    /// The standard tables (T.81 Annex K.3).
    pub fn standard() -> Self {
        Self { tables: [DC_LUMA, DC_CHROMA, AC_LUMA, AC_CHROMA].map(|s| HuffmanTable::from_spec(&s)) }
    }

    /// Optimal tables from a frame's symbol counts ([`SYMBOLS`] of them).
    pub fn optimal(histogram: &[u32]) -> Self {
        assert_eq!(histogram.len(), SYMBOLS, "a histogram holds every symbol of the four tables");
        Self { tables: std::array::from_fn(|t| HuffmanTable::optimal(&histogram[TABLE_BASE[t]..][..TABLE_SYMBOLS[t]])) }
    }

    /// Code | length << 16 per symbol, indexed as a histogram (0 for a symbol
    /// the tables leave out): what both coders read.
    pub fn code_table(&self) -> Vec<u32> {
        let mut out = vec![0u32; SYMBOLS];
        for (t, table) in self.tables.iter().enumerate() {
            let c = HuffmanCodes::new(&table.bits, &table.values);
            for s in 0..TABLE_SYMBOLS[t] {
                out[TABLE_BASE[t] + s] = u32::from(c.code[s]) | (u32::from(c.len[s]) << 16);
            }
        }
        out
    }

    /// The DHT segment's body: each table's class and id, counts and symbols.
    pub fn dht(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 * 17 + self.tables.iter().map(|t| t.values.len()).sum::<usize>());
        for (t, table) in self.tables.iter().enumerate() {
            out.push(CLASS_IDS[t]);
            out.extend_from_slice(&table.bits);
            out.extend_from_slice(&table.values);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(table: &HuffmanTable, n: usize) -> Vec<u8> {
        let c = HuffmanCodes::new(&table.bits, &table.values);
        (0..n).map(|s| c.len[s]).collect()
    }

    /// Σ 2^-len over the codes: below 1 (the all-ones code stays free).
    fn kraft(table: &HuffmanTable) -> f64 {
        table.bits.iter().enumerate().map(|(i, &b)| f64::from(b) / f64::from(1u32 << (i + 1))).sum()
    }

    #[test]
    fn frequent_symbols_get_short_codes_and_absent_ones_none() {
        let mut counts = vec![0u32; 12];
        counts[0] = 1000;
        counts[3] = 10;
        counts[5] = 10;
        counts[9] = 1;
        let t = HuffmanTable::optimal(&counts);
        let len = lengths(&t, 12);
        assert_eq!(len[0], 1);
        assert!(len[3] <= len[9] && len[5] <= len[9]);
        assert_eq!(t.values.len(), 4, "only symbols that occur get a code");
        assert!(len.iter().enumerate().all(|(s, &l)| (l == 0) == (counts[s] == 0)));
        assert!(kraft(&t) < 1.0);
    }

    #[test]
    fn lengths_are_limited_to_16_bits_and_the_code_stays_complete_but_one() {
        // Fibonacci counts make a maximally deep tree (over 30 levels).
        let mut counts = vec![0u32; 256];
        let (mut a, mut b) = (1u32, 1u32);
        for c in counts.iter_mut().take(40) {
            *c = a;
            (a, b) = (b, a.saturating_add(b).min(1 << 28));
        }
        let t = HuffmanTable::optimal(&counts);
        assert_eq!(t.values.len(), 40);
        assert!(t.bits.iter().map(|&b| u32::from(b)).sum::<u32>() == 40);
        let k = kraft(&t);
        assert!((1.0 - 1.0 / 65536.0 - 1e-12..1.0).contains(&k), "Kraft sum {k}");
    }

    #[test]
    fn one_symbol_and_no_symbol_still_make_a_decodable_table() {
        let one = HuffmanTable::optimal(&[0, 0, 7, 0]);
        assert_eq!(one.values, vec![2]);
        assert_eq!(one.bits[0], 1);
        let none = HuffmanTable::optimal(&[0; 12]);
        assert_eq!(none.values, vec![0]);
    }

    #[test]
    fn optimal_codes_cost_no_more_bits_than_the_standard_ones() {
        let mut counts = vec![0u32; 256];
        for (s, c) in counts.iter_mut().enumerate() {
            *c = ((s * 7919) % 97) as u32 * u32::from(s % 3 != 0);
        }
        counts[0] = 5000;
        let cost = |t: &HuffmanTable| -> u64 {
            let len = lengths(t, 256);
            counts.iter().zip(&len).map(|(&c, &l)| u64::from(c) * u64::from(l)).sum()
        };
        let standard = HuffmanTable::from_spec(&AC_LUMA);
        assert!(cost(&HuffmanTable::optimal(&counts)) < cost(&standard));
    }

    #[test]
    fn the_standard_tables_round_trip_through_the_code_table() {
        let t = FrameTables::standard().code_table();
        assert_eq!(t.len(), SYMBOLS);
        // DC luma category 0: 00 (2 bits); AC luma EOB: 1010 (4 bits); AC chroma ZRL: 1111111010 (10 bits).
        assert_eq!(t[0], 2 << 16);
        assert_eq!(t[24], 0b1010 | (4 << 16));
        assert_eq!(t[280 + 0xf0], 0b11_1111_1010 | (10 << 16));
        assert_eq!(FrameTables::standard().dht().len(), 4 * 17 + 12 + 12 + 162 + 162);
    }
}
