//! Building test frames: Ethernet + IPv4 + UDP with correct checksums, and
//! ways to break them.

use std::net::Ipv4Addr;

use coresvc_common::checksum;

#[derive(Debug, Clone)]
pub struct Udp4 {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    pub payload: Vec<u8>,
}

impl Default for Udp4 {
    fn default() -> Self {
        Self {
            src_mac: [0x02, 0, 0, 0, 0, 1],
            dst_mac: [0x02, 0, 0, 0, 0, 2],
            src: Ipv4Addr::new(10, 10, 0, 10),
            dst: Ipv4Addr::new(10, 10, 0, 1),
            sport: 40000,
            dport: 9,
            ttl: 64,
            payload: b"coresvc".to_vec(),
        }
    }
}

impl Udp4 {
    pub fn build(&self) -> Vec<u8> {
        let udp_len = 8 + self.payload.len();
        let tot_len = 20 + udp_len;
        let mut f = Vec::with_capacity(14 + tot_len);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let ip_start = f.len();
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&(tot_len as u16).to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, self.ttl, 17, 0, 0]);
        f.extend_from_slice(&self.src.octets());
        f.extend_from_slice(&self.dst.octets());
        let c = checksum::checksum(&f[ip_start..ip_start + 20]);
        f[ip_start + 10..ip_start + 12].copy_from_slice(&c.to_be_bytes());
        let udp_start = f.len();
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&self.dport.to_be_bytes());
        f.extend_from_slice(&(udp_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.payload);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&self.src.octets());
        pseudo.extend_from_slice(&self.dst.octets());
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
        let sum = checksum::add_bytes(checksum::add_bytes(0, &pseudo), &f[udp_start..]);
        let mut c = !checksum::fold(sum);
        if c == 0 {
            c = 0xffff;
        }
        f[udp_start + 6..udp_start + 8].copy_from_slice(&c.to_be_bytes());
        f
    }
}

/// Offset of the IPv4 header in frames built here.
pub const IP: usize = 14;

/// Flips a bit of the IPv4 header checksum.
pub fn corrupt_ip_checksum(mut f: Vec<u8>) -> Vec<u8> {
    f[IP + 10] ^= 0x01;
    f
}

/// Sets the version/IHL byte and fixes the header checksum, so only the
/// intended field is wrong.
pub fn with_ver_ihl(mut f: Vec<u8>, ver_ihl: u8) -> Vec<u8> {
    f[IP] = ver_ihl;
    refresh_ip_checksum(&mut f);
    f
}

/// Sets the total length field and fixes the header checksum.
pub fn with_tot_len(mut f: Vec<u8>, tot_len: u16) -> Vec<u8> {
    f[IP + 2..IP + 4].copy_from_slice(&tot_len.to_be_bytes());
    refresh_ip_checksum(&mut f);
    f
}

pub fn refresh_ip_checksum(f: &mut [u8]) {
    f[IP + 10] = 0;
    f[IP + 11] = 0;
    let c = checksum::checksum(&f[IP..IP + 20]);
    f[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
}

/// An Ethernet + IPv4 frame around `l4` (protocol `proto`), with a valid
/// header checksum. `frag` is the flags/fragment-offset field.
#[allow(clippy::too_many_arguments)]
pub fn ipv4(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ttl: u8,
    frag: u16,
    l4: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(34 + l4.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0xab, 0xcd]);
    f.extend_from_slice(&frag.to_be_bytes());
    f.extend_from_slice(&[ttl, proto, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    refresh_ip_checksum(&mut f);
    f.extend_from_slice(l4);
    f
}

/// The L4 checksum over the IPv4 pseudo header (RFC 793/768).
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    !checksum::fold(checksum::add_bytes(checksum::add_bytes(0, &pseudo), l4))
}

/// A TCP segment (20-byte header) with a valid checksum.
pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&1000u32.to_be_bytes());
    t.extend_from_slice(&(if flags & 0x10 != 0 { 2000u32 } else { 0 }).to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    let c = l4_checksum(src, dst, 6, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// A UDP datagram with a valid checksum.
pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let c = l4_checksum(src, dst, 17, &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// An ICMP message of `typ`/`code` whose body is `body` (for errors: the
/// offending packet's IP header and first 8 bytes), with a valid checksum.
pub fn icmp(typ: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![typ, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let c = checksum::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// True when the frame's IPv4 header checksum is valid.
pub fn ip_checksum_ok(f: &[u8]) -> bool {
    checksum::verify(&f[IP..IP + 20])
}
