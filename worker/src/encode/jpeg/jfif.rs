//! The JFIF file around an entropy-coded scan: SOI, APP0, DQT, SOF0 (4:2:0),
//! DHT with the frame's tables, DRI, SOS, the scan, EOI.

pub use super::tables::quant_tables;
use super::tables::ZIGZAG;
use super::McuGrid;

fn segment(out: &mut Vec<u8>, marker: u8, body: &[u8]) {
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(body);
}

/// A complete baseline JPEG from an entropy-coded scan and the body of the
/// DHT segment holding the tables it was coded with
/// ([`super::optimal::FrameTables::dht`]).
pub fn write_jpeg(scan: &[u8], grid: McuGrid, quality: u8, dht: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(scan.len() + dht.len() + 300);
    out.extend_from_slice(&[0xFF, 0xD8]);
    segment(&mut out, 0xE0, &[b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0]);
    let mut dqt = Vec::with_capacity(130);
    for (id, table) in quant_tables(quality).iter().enumerate() {
        dqt.push(id as u8);
        dqt.extend(ZIGZAG.iter().map(|&n| table[n] as u8));
    }
    segment(&mut out, 0xDB, &dqt);
    let (h, w) = ((grid.height as u16).to_be_bytes(), (grid.width as u16).to_be_bytes());
    segment(&mut out, 0xC0, &[8, h[0], h[1], w[0], w[1], 3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    segment(&mut out, 0xC4, dht);
    segment(&mut out, 0xDD, &grid.restart_interval().to_be_bytes());
    segment(&mut out, 0xDA, &[3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0]);
    out.extend_from_slice(scan);
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}
