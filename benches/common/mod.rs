//! What the service benches share: one HTTP request to a worker over a fresh
//! socket, its JSON body back.

use std::io::{Read, Write};

use anyhow::Context;

pub fn request(addr: &str, method: &str, path: &str, key: &str, body: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let json = raw.split_once("\r\n\r\n").context("no body")?.1;
    Ok(serde_json::from_str(json)?)
}
