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
