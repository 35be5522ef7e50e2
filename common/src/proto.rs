//! Protocol constants and header layouts (offsets in bytes from the start of
//! each header; multi-byte fields are in network byte order on the wire).

/// Ethernet II (IEEE 802.3), without 802.1Q tags.
pub mod eth {
    pub const HDR_LEN: usize = 14;
    pub const DST: usize = 0;
    pub const SRC: usize = 6;
    pub const ETHERTYPE: usize = 12;
    pub const P_IPV4: u16 = 0x0800;
    pub const P_ARP: u16 = 0x0806;
    pub const P_8021Q: u16 = 0x8100;
    pub const P_8021AD: u16 = 0x88a8;
    pub const P_IPV6: u16 = 0x86dd;
}

/// IPv4 (RFC 791).
pub mod ipv4 {
    pub const MIN_HDR_LEN: usize = 20;
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const TOT_LEN: usize = 2;
    pub const ID: usize = 4;
    pub const FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTO: usize = 9;
    pub const CSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    /// The "more fragments" flag and the fragment offset (host order of the 16-bit field).
    pub const FRAG_MF: u16 = 0x2000;
    pub const FRAG_OFFSET_MASK: u16 = 0x1fff;
}

/// IP protocol numbers (IANA).
pub mod ipproto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// UDP (RFC 768).
pub mod udp {
    pub const HDR_LEN: usize = 8;
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LEN: usize = 4;
    pub const CSUM: usize = 6;
}

/// Well-known ports of the services coresvc runs.
pub mod port {
    pub const DNS: u16 = 53;
    pub const DHCP_SERVER: u16 = 67;
    pub const DHCP_CLIENT: u16 = 68;
    pub const TFTP: u16 = 69;
}

/// TCP (RFC 9293).
pub mod tcp {
    pub const MIN_HDR_LEN: usize = 20;
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const FLAGS: usize = 13;
    pub const CSUM: usize = 16;
}

/// ICMP (RFC 792).
pub mod icmp {
    pub const HDR_LEN: usize = 8;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CSUM: usize = 2;
    /// Echo identifier (echo request/reply only).
    pub const ID: usize = 4;
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACH: u8 = 3;
    pub const REDIRECT: u8 = 5;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAM_PROBLEM: u8 = 12;
    /// Fragmentation needed (code of DEST_UNREACH).
    pub const FRAG_NEEDED: u8 = 4;
}
