//! Encoding the stitched frame: GPU colour conversion ([`yuv`]) and the muxers
//! that write frames to files ([`mux`]), chosen by the output's extension.

pub mod mux;
pub mod yuv;
