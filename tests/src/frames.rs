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
    let ack = if flags & 0x10 != 0 { 2000 } else { 0 };
    tcp_seg(src, sport, dst, dport, TcpSeg { flags, seq: 1000, ack, win: 0xffff, options: &[] }, payload)
}

/// The sequence-space fields of a TCP segment.
#[derive(Debug, Clone, Copy)]
pub struct TcpSeg<'a> {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub win: u16,
    /// TCP options, padded to 4 bytes by the caller.
    pub options: &'a [u8],
}

/// A TCP segment with the given sequence numbers, window and options, and a
/// valid checksum.
pub fn tcp_seg(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, s: TcpSeg, payload: &[u8]) -> Vec<u8> {
    assert!(s.options.len().is_multiple_of(4) && s.options.len() <= 40);
    let mut t = Vec::with_capacity(20 + s.options.len() + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&s.seq.to_be_bytes());
    t.extend_from_slice(&s.ack.to_be_bytes());
    t.push(((20 + s.options.len()) as u8 / 4) << 4);
    t.push(s.flags);
    t.extend_from_slice(&s.win.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(s.options);
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

/// An IPv4 packet as a test reads it back, every checksum checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    /// TCP/UDP ports; for ICMP echo both are the identifier.
    pub sport: u16,
    pub dport: u16,
    pub icmp_type: u8,
    /// The IPv4 header checksum is right.
    pub ip_ok: bool,
    /// The TCP/UDP checksum (pseudo header included) or ICMP checksum is
    /// right (None when the L4 data is truncated, as in a quoted packet).
    pub l4_ok: Option<bool>,
    /// For ICMP errors: the packet quoted in the message.
    pub inner: Option<Box<Parsed>>,
}

impl Parsed {
    /// Every checksum, the quoted packet's included, is right (a truncated
    /// quoted L4 header, whose checksum cannot be checked, counts as right).
    pub fn all_ok(&self) -> bool {
        self.ip_ok && self.l4_ok != Some(false) && self.inner.as_ref().is_none_or(|i| i.ip_ok && i.l4_ok != Some(false))
    }
}

/// Parses an Ethernet + IPv4 frame (panics on anything else: tests only).
pub fn parse(f: &[u8]) -> Parsed {
    assert_eq!(&f[12..14], &[0x08, 0x00], "IPv4 ethertype");
    parse_ip(&f[IP..], false)
}

fn parse_ip(p: &[u8], quoted: bool) -> Parsed {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let tot = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let proto = p[9];
    let l4 = &p[ihl..p.len().min(tot)];
    let complete = tot <= p.len();
    let port = |o: usize| u16::from_be_bytes([l4[o], l4[o + 1]]);
    let mut out = Parsed {
        src,
        dst,
        proto,
        ttl: p[8],
        sport: 0,
        dport: 0,
        icmp_type: 0,
        ip_ok: checksum::verify(&p[..ihl]),
        l4_ok: None,
        inner: None,
    };
    match proto {
        6 | 17 => {
            out.sport = port(0);
            out.dport = port(2);
            if complete {
                let stored = port(if proto == 6 { 16 } else { 6 });
                out.l4_ok = Some(if proto == 17 && stored == 0 {
                    true
                } else {
                    let mut zeroed = l4.to_vec();
                    let at = if proto == 6 { 16 } else { 6 };
                    zeroed[at..at + 2].copy_from_slice(&[0, 0]);
                    let c = l4_checksum(src, dst, proto, &zeroed);
                    c == stored || (proto == 17 && c == 0 && stored == 0xffff)
                });
            }
        }
        1 => {
            out.icmp_type = l4[0];
            if complete {
                out.l4_ok = Some(checksum::verify(l4));
            }
            match l4[0] {
                0 | 8 => {
                    out.sport = port(4);
                    out.dport = port(4);
                }
                3 | 11 | 12 if !quoted => out.inner = Some(Box::new(parse_ip(&l4[8..], true))),
                _ => {}
            }
        }
        _ => {}
    }
    out
}
