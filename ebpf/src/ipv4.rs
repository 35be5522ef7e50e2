//! IPv4 header checks: drop what the kernel's `ip_rcv` would drop anyway,
//! with a numbered reason; pass everything else.

use aya_ebpf::programs::XdpContext;
use coresvc_common::{checksum, proto};
use coresvc_maps_schema::reason;

use crate::packet::{frame_len, ptr_at};

#[inline(always)]
pub fn check(ctx: &XdpContext) -> Result<(), u32> {
    let Some(ethertype) = ptr_at::<[u8; 2], XdpContext>(ctx, proto::eth::ETHERTYPE) else {
        // Shorter than an Ethernet header: the stack decides.
        return Ok(());
    };
    // SAFETY: ptr_at checked the bounds.
    if u16::from_be_bytes(unsafe { *ethertype }) != proto::eth::P_IPV4 {
        return Ok(());
    }
    let Some(hdr) = ptr_at::<[u8; 20], XdpContext>(ctx, proto::eth::HDR_LEN) else {
        return Err(reason::IPV4_TRUNCATED);
    };
    // SAFETY: ptr_at checked the bounds.
    let hdr: &[u8; 20] = unsafe { &*hdr };
    let version = hdr[proto::ipv4::VER_IHL] >> 4;
    let ihl = usize::from(hdr[proto::ipv4::VER_IHL] & 0x0f) * 4;
    if version != 4 || ihl < proto::ipv4::MIN_HDR_LEN {
        return Err(reason::IPV4_BAD_HEADER);
    }
    let tot_len = usize::from(u16::from_be_bytes([hdr[proto::ipv4::TOT_LEN], hdr[proto::ipv4::TOT_LEN + 1]]));
    if tot_len < ihl {
        return Err(reason::IPV4_BAD_HEADER);
    }
    if frame_len(ctx) < proto::eth::HDR_LEN + ihl {
        return Err(reason::IPV4_TRUNCATED);
    }
    // Options: the stack verifies those headers; only the common case is
    // checked here, with straight-line code.
    if ihl == proto::ipv4::MIN_HDR_LEN && !checksum::ipv4_header_valid(hdr) {
        return Err(reason::IPV4_BAD_CHECKSUM);
    }
    Ok(())
}
