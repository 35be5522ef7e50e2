//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! The eBPF programs verify and patch headers with these functions and the
//! agent builds packets with them, so both produce identical bytes.

/// Adds `data` as a sequence of big-endian 16-bit words to `sum` (an odd
/// trailing byte is padded with zero), without folding.
#[inline(always)]
pub fn add_bytes(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    sum
}

/// Folds a 32-bit running sum to 16 bits (one's complement addition).
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum field value for `data` (with its checksum field zeroed).
#[inline(always)]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(add_bytes(0, data))
}

/// True when `data`, including its checksum field, sums to 0xffff, i.e. the
/// checksum is valid.
#[inline(always)]
pub fn verify(data: &[u8]) -> bool {
    fold(add_bytes(0, data)) == 0xffff
}

/// Sums a fixed 20-byte IPv4 header without options, unrolled so the eBPF
/// verifier sees straight-line code. Returns true when the checksum is valid.
#[inline(always)]
pub fn ipv4_header_valid(hdr: &[u8; 20]) -> bool {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 20 {
        sum += u32::from(u16::from_be_bytes([hdr[i], hdr[i + 1]]));
        i += 2;
    }
    fold(sum) == 0xffff
}

/// The checksum field value for a 20-byte IPv4 header (its checksum field
/// is ignored), straight-line code for the eBPF verifier.
#[inline(always)]
pub fn ipv4_header_checksum(hdr: &[u8; 20]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 20 {
        if i != 10 {
            sum += u32::from(u16::from_be_bytes([hdr[i], hdr[i + 1]]));
        }
        i += 2;
    }
    !fold(sum)
}

/// RFC 1624 eqn. 3: the new checksum after a 16-bit word of the covered data
/// changes from `old` to `new`. `csum` and the words are host-order values of
/// the big-endian fields.
#[inline(always)]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    // HC' = ~(~HC + ~m + m')
    let sum = u32::from(!csum) + u32::from(!old) + u32::from(new);
    !fold(sum)
}

/// The same update for a 32-bit field (an IPv4 address), word by word.
#[inline(always)]
pub fn update32(csum: u16, old: u32, new: u32) -> u16 {
    let c = update16(csum, (old >> 16) as u16, (new >> 16) as u16);
    update16(c, old as u16, new as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example header of RFC 1071 §3 / Wikipedia's IPv4 checksum example:
    /// 4500 0073 0000 4000 4011 [b861] c0a8 0001 c0a8 00c7.
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
        0x00, 0xc7,
    ];

    #[test]
    fn computes_known_ipv4_checksum() {
        let mut h = HDR;
        h[10] = 0;
        h[11] = 0;
        assert_eq!(checksum(&h), 0xb861);
        assert_eq!(ipv4_header_checksum(&HDR), 0xb861);
        assert!(verify(&HDR));
        assert!(ipv4_header_valid(&HDR));
    }

    #[test]
    fn rejects_corrupted_header() {
        let mut h = HDR;
        h[15] ^= 0x01;
        assert!(!verify(&h));
        assert!(!ipv4_header_valid(&h));
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(add_bytes(0, &[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn incremental_update_matches_recompute() {
        // Decrement the TTL (word at offset 8: TTL << 8 | proto).
        let mut h = HDR;
        let old = u16::from_be_bytes([h[8], h[9]]);
        h[8] -= 1;
        let new = u16::from_be_bytes([h[8], h[9]]);
        let csum = update16(u16::from_be_bytes([h[10], h[11]]), old, new);
        h[10..12].copy_from_slice(&csum.to_be_bytes());
        assert!(verify(&h));

        // Rewrite the source address.
        let old = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
        let new = u32::from_be_bytes([203, 0, 113, 7]);
        h[12..16].copy_from_slice(&new.to_be_bytes());
        let csum = update32(u16::from_be_bytes([h[10], h[11]]), old, new);
        h[10..12].copy_from_slice(&csum.to_be_bytes());
        assert!(verify(&h));
        let mut z = h;
        z[10] = 0;
        z[11] = 0;
        assert_eq!(checksum(&z), csum);
    }
}
