//! Connection tracking logic shared by the XDP/TC programs and the agent: the
//! normalised key (one entry per connection, both directions), the TCP state
//! machine and the timeouts by state.

/// Connection states. TCP uses all; UDP and ICMP use `NEW` (one direction
/// seen) and `ESTABLISHED` (both seen).
pub const CT_NEW: u8 = 0;
pub const CT_SYN_SENT: u8 = 1;
pub const CT_SYN_RECV: u8 = 2;
pub const CT_ESTABLISHED: u8 = 3;
pub const CT_FIN_WAIT: u8 = 4;
pub const CT_CLOSING: u8 = 5;
pub const CT_CLOSED: u8 = 6;

pub const CT_STATE_NAMES: [&str; 7] = ["new", "syn-sent", "syn-recv", "established", "fin-wait", "closing", "closed"];

/// Entry flags.
/// The connection's originator is the key's `a` side.
pub const CT_F_ORIG_IS_A: u8 = 1 << 0;
/// A FIN was seen from the originator / from the replier.
pub const CT_F_FIN_ORIG: u8 = 1 << 1;
pub const CT_F_FIN_REPLY: u8 = 1 << 2;
/// Opened by the gateway itself (tracked on egress).
pub const CT_F_LOCAL: u8 = 1 << 3;

/// TCP flags (the low byte of the flags field).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const SEC: u64 = 1_000_000_000;

/// How long an entry lives without packets, by protocol and state (the
/// Linux defaults, shortened where a gateway should recover quickly).
#[inline(always)]
pub fn timeout_ns(proto: u8, state: u8) -> u64 {
    match proto {
        crate::proto::ipproto::TCP => match state {
            CT_SYN_SENT | CT_SYN_RECV => 60 * SEC,
            CT_ESTABLISHED => 3600 * 24 * SEC,
            CT_FIN_WAIT | CT_CLOSING => 120 * SEC,
            _ => 10 * SEC,
        },
        crate::proto::ipproto::UDP => {
            if state == CT_ESTABLISHED {
                180 * SEC
            } else {
                30 * SEC
            }
        }
        _ => 30 * SEC,
    }
}

/// True when a packet of a connection in `state` may be forwarded from XDP:
/// TCP once the handshake is done and before teardown starts (control
/// packets go through the stack); UDP as soon as the rules admitted it (the
/// stack would forward it all the same; the state only sets the timeout).
#[inline(always)]
pub fn fast_path_state(proto: u8, state: u8) -> bool {
    match proto {
        crate::proto::ipproto::TCP => state == CT_ESTABLISHED,
        crate::proto::ipproto::UDP => true,
        _ => false,
    }
}

/// The normalised key: the (address, port) pair that sorts lower is `a`, so
/// both directions of a connection find the same entry. Returns the key
/// fields and whether the packet's source is the `a` side.
#[inline(always)]
pub fn normalise(saddr: [u8; 4], sport: u16, daddr: [u8; 4], dport: u16) -> ([u8; 4], u16, [u8; 4], u16, bool) {
    let s = (u32::from_be_bytes(saddr), sport);
    let d = (u32::from_be_bytes(daddr), dport);
    if s <= d { (saddr, sport, daddr, dport, true) } else { (daddr, dport, saddr, sport, false) }
}

/// The next TCP state after a packet with `flags` from the originator
/// (`from_orig`) or the replier. `None`: the packet does not fit the
/// connection (a SYN on an established one is left to the stack).
#[inline(always)]
pub fn tcp_next(state: u8, fin_flags: u8, flags: u8, from_orig: bool) -> (u8, u8) {
    let mut fins = fin_flags;
    if flags & TCP_RST != 0 {
        return (CT_CLOSED, fins);
    }
    if flags & TCP_FIN != 0 {
        fins |= if from_orig { CT_F_FIN_ORIG } else { CT_F_FIN_REPLY };
    }
    let both_fin = fins & (CT_F_FIN_ORIG | CT_F_FIN_REPLY) == CT_F_FIN_ORIG | CT_F_FIN_REPLY;
    let next = match state {
        CT_SYN_SENT => {
            if !from_orig && flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
                CT_SYN_RECV
            } else {
                CT_SYN_SENT
            }
        }
        CT_SYN_RECV => {
            if from_orig && flags & TCP_ACK != 0 && flags & TCP_SYN == 0 {
                CT_ESTABLISHED
            } else {
                CT_SYN_RECV
            }
        }
        CT_ESTABLISHED | CT_FIN_WAIT | CT_CLOSING => {
            if both_fin {
                CT_CLOSING
            } else if fins != 0 {
                CT_FIN_WAIT
            } else {
                CT_ESTABLISHED
            }
        }
        other => other,
    };
    (next, fins)
}

/// Only a SYN (without ACK) opens a TCP connection. Any other TCP packet of
/// no tracked connection is invalid and dropped (there is no mid-stream
/// pick-up: the table survives agent restarts, and picking up would let a
/// connection revoked by new rules come back from its other side).
#[inline(always)]
pub fn tcp_opens(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_normalise_to_one_key() {
        let a = normalise([10, 20, 0, 50], 40000, [10, 10, 0, 10], 80);
        let b = normalise([10, 10, 0, 10], 80, [10, 20, 0, 50], 40000);
        assert_eq!((a.0, a.1, a.2, a.3), (b.0, b.1, b.2, b.3));
        assert_ne!(a.4, b.4);
        // Same address, different ports.
        let a = normalise([10, 0, 0, 1], 5, [10, 0, 0, 1], 6);
        let b = normalise([10, 0, 0, 1], 6, [10, 0, 0, 1], 5);
        assert_eq!((a.0, a.1, a.2, a.3), (b.0, b.1, b.2, b.3));
    }

    #[test]
    fn tcp_handshake_data_and_teardown() {
        assert!(tcp_opens(TCP_SYN));
        let s = CT_SYN_SENT;
        let (s, f) = tcp_next(s, 0, TCP_SYN | TCP_ACK, false);
        assert_eq!(s, CT_SYN_RECV);
        let (s, f) = tcp_next(s, f, TCP_ACK, true);
        assert_eq!(s, CT_ESTABLISHED);
        assert!(fast_path_state(6, s));
        let (s, f) = tcp_next(s, f, TCP_ACK | TCP_FIN, true);
        assert_eq!(s, CT_FIN_WAIT);
        assert!(!fast_path_state(6, s), "teardown goes through the stack");
        let (s, f) = tcp_next(s, f, TCP_ACK | TCP_FIN, false);
        assert_eq!(s, CT_CLOSING);
        let (s, _) = tcp_next(s, f, TCP_RST, true);
        assert_eq!(s, CT_CLOSED);
        assert!(timeout_ns(6, CT_CLOSED) < timeout_ns(6, CT_ESTABLISHED));
    }

    #[test]
    fn a_synack_from_the_originator_does_not_advance() {
        let (s, _) = tcp_next(CT_SYN_SENT, 0, TCP_SYN | TCP_ACK, true);
        assert_eq!(s, CT_SYN_SENT);
        assert!(!tcp_opens(TCP_ACK), "no mid-stream pick-up");
        assert!(!tcp_opens(TCP_SYN | TCP_ACK));
        assert!(!tcp_opens(TCP_SYN | TCP_FIN));
    }
}
