//! A minimal MaxMind DB (`.mmdb`) writer for tests: country databases built
//! on the spot, so geo tests need no downloaded GeoLite2 file.
//!
//! Format (MaxMind DB spec, version 2.0): an IPv6 binary search tree with
//! 24-bit records (IPv4 networks live under `::/96`, where readers look for
//! them), a 16-byte zero separator, the data section (one map
//! `{"country": {"iso_code": CC}}` per country, shared by every network of
//! that country), then `\xAB\xCD\xEFMaxMind.com` and the metadata map.
//! The most specific network containing an address gives its country
//! (networks are inserted shortest prefix first); for equal networks the
//! last one written wins.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::path::Path;

const EMPTY: u32 = u32::MAX;
const DATA_FLAG: u32 = 1 << 31;

/// Writes a country database at `path` mapping each CIDR (`"10.0.0.0/8"`,
/// `"2001:db8::/32"`, or a bare address) to an ISO country code.
pub fn write_mmdb(path: impl AsRef<Path>, networks: &[(&str, &str)]) -> io::Result<()> {
    std::fs::write(path, build_mmdb(networks)?)
}

/// The bytes [`write_mmdb`] writes.
pub fn build_mmdb(networks: &[(&str, &str)]) -> io::Result<Vec<u8>> {
    let bad = |s: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("bad network `{s}`"));
    // Data section: one record per distinct country.
    let mut data = Vec::new();
    let mut offsets = BTreeMap::new();
    let mut nets = Vec::new();
    for (cidr, cc) in networks {
        let (addr, len) = match cidr.split_once('/') {
            Some((a, l)) => (
                a.parse::<IpAddr>().map_err(|_| bad(cidr))?,
                l.parse::<u32>().map_err(|_| bad(cidr))?,
            ),
            None => {
                let a = cidr.parse::<IpAddr>().map_err(|_| bad(cidr))?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let (bits, len) = match addr {
            IpAddr::V4(a) if len <= 32 => (u128::from(u32::from(a)), len + 96),
            IpAddr::V6(a) if len <= 128 => (u128::from(a), len),
            _ => return Err(bad(cidr)),
        };
        if cc.is_empty() || cc.len() > 28 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("country code `{cc}`: 1..28 bytes"),
            ));
        }
        let off = *offsets.entry(cc.to_string()).or_insert_with(|| {
            let off = data.len() as u32;
            map_header(&mut data, 1);
            string(&mut data, "country");
            map_header(&mut data, 1);
            string(&mut data, "iso_code");
            string(&mut data, cc);
            off
        });
        nets.push((bits, len, off));
    }
    nets.sort_by_key(|n| n.1);
    // Search tree: node i has records [left, right]; EMPTY or DATA_FLAG|offset or a node.
    let mut nodes: Vec<[u32; 2]> = vec![[EMPTY, EMPTY]];
    for (bits, len, off) in nets {
        let mut node = 0usize;
        for depth in 0..len {
            let bit = ((bits >> (127 - depth)) & 1) as usize;
            if depth + 1 == len {
                nodes[node][bit] = DATA_FLAG | off;
                break;
            }
            let rec = nodes[node][bit];
            if rec == EMPTY || rec & DATA_FLAG != 0 {
                // A new node; an enclosing network's data stays on both sides.
                nodes.push([rec, rec]);
                let n = (nodes.len() - 1) as u32;
                nodes[node][bit] = n;
                node = n as usize;
            } else {
                node = rec as usize;
            }
        }
        if len == 0 {
            nodes[0] = [DATA_FLAG | off, DATA_FLAG | off];
        }
    }
    let node_count = nodes.len() as u32;
    let mut out = Vec::with_capacity(nodes.len() * 6 + 16 + data.len() + 256);
    for n in &nodes {
        for &rec in n {
            let v = if rec == EMPTY {
                node_count
            } else if rec & DATA_FLAG != 0 {
                node_count + 16 + (rec & !DATA_FLAG)
            } else {
                rec
            };
            if v >= 1 << 24 {
                return Err(io::Error::other("too many nodes for 24-bit records"));
            }
            out.extend_from_slice(&v.to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    map_header(&mut out, 9);
    string(&mut out, "node_count");
    uint(&mut out, 6, u64::from(node_count), 4);
    string(&mut out, "record_size");
    uint(&mut out, 5, 24, 2);
    string(&mut out, "ip_version");
    uint(&mut out, 5, 6, 2);
    string(&mut out, "database_type");
    string(&mut out, "mtgate-Test-Country");
    string(&mut out, "languages");
    out.extend_from_slice(&[0x01, 11 - 7]); // array (extended type 11) of 1
    string(&mut out, "en");
    string(&mut out, "binary_format_major_version");
    uint(&mut out, 5, 2, 2);
    string(&mut out, "binary_format_minor_version");
    uint(&mut out, 5, 0, 2);
    string(&mut out, "build_epoch");
    out.extend_from_slice(&[0x08, 9 - 7]); // uint64 (extended type 9), 8 bytes
    out.extend_from_slice(&1_700_000_000u64.to_be_bytes());
    string(&mut out, "description");
    map_header(&mut out, 1);
    string(&mut out, "en");
    string(&mut out, "mtgate test database");
    Ok(out)
}

/// Control byte of a map with `n` (< 29) pairs.
fn map_header(out: &mut Vec<u8>, n: u8) {
    out.push((7 << 5) | n);
}

/// A UTF-8 string (type 2) of fewer than 29 bytes.
fn string(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 29, "test strings are short");
    out.push((2 << 5) | s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// An unsigned integer of type `ty` (5 = uint16, 6 = uint32) in `size` bytes.
fn uint(out: &mut Vec<u8>, ty: u8, v: u64, size: usize) {
    out.push((ty << 5) | size as u8);
    out.extend_from_slice(&v.to_be_bytes()[8 - size..]);
}
