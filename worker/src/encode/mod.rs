//! Encoding the stitched frame: the GPU JPEG encoder ([`jpeg`]), GPU colour
//! conversion to YUV ([`yuv`]) and the muxers
//! that write frames to files ([`mux`]), chosen by the output's extension.

pub mod jpeg;
pub mod mux;
pub mod yuv;
