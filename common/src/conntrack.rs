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

/// A TCP segment's sequence-space facts, as the window tracking reads them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpSeg {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// The window field as sent (unscaled).
    pub win: u16,
    /// Payload bytes.
    pub len: u16,
}

/// The window scale of a side that sent no window-scale option.
pub const NO_WSCALE: u8 = 0xff;

impl TcpSeg {
    /// The sequence number just past this segment (SYN and FIN count one).
    #[inline(always)]
    pub fn end(&self) -> u32 {
        let mut e = self.seq.wrapping_add(u32::from(self.len));
        if self.flags & TCP_SYN != 0 {
            e = e.wrapping_add(1);
        }
        if self.flags & TCP_FIN != 0 {
            e = e.wrapping_add(1);
        }
        e
    }
}

/// `a` is after `b` in sequence space (RFC 1982 arithmetic).
#[inline(always)]
pub fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// The TCP sequence window of a connection: per side (0 the originator, 1
/// the replier) the highest sequence number sent, the largest window
/// advertised (scaled) and the window scale from its SYN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpWindow {
    pub seq_end: [u32; 2],
    pub max_win: [u32; 2],
    pub wscale: [u8; 2],
}

impl TcpWindow {
    /// The window of a connection opened by `syn` (from the originator)
    /// with window-scale option `wscale` (or [`NO_WSCALE`]).
    #[inline(always)]
    pub fn open(syn: &TcpSeg, wscale: u8) -> Self {
        TcpWindow { seq_end: [syn.end(), 0], max_win: [u32::from(syn.win).max(1), 0], wscale: [wscale, NO_WSCALE] }
    }

    /// Window scaling is in use only when both SYNs offered it (RFC 7323).
    #[inline(always)]
    fn shift(&self, side: usize) -> u32 {
        if self.wscale[0] == NO_WSCALE || self.wscale[1] == NO_WSCALE {
            0
        } else {
            u32::from(self.wscale[side & 1] & 15)
        }
    }

    /// May an RST or FIN from `side` in connection state `state` be
    /// believed? Loosely as Linux's `tcp_in_window`: its sequence number
    /// must lie within the receiver's largest window around what the sender
    /// has sent; before the replier's SYN-ACK, an RST from the replier must
    /// acknowledge the SYN (RFC 793 §3.4), one from the originator must carry
    /// the sequence number after its SYN. Anything else is a blind guess.
    #[inline(always)]
    pub fn acceptable(&self, state: u8, side: usize, seg: &TcpSeg) -> bool {
        let d = side & 1;
        if state == CT_SYN_SENT {
            if d == 1 {
                return seg.flags & TCP_RST != 0 && seg.flags & TCP_ACK != 0 && seg.ack == self.seq_end[0];
            }
            return seg.seq.wrapping_sub(self.seq_end[0].wrapping_sub(1)) <= 1;
        }
        let win = self.max_win[1 - d].max(1);
        let lo = self.seq_end[d].wrapping_sub(win);
        seg.seq.wrapping_sub(lo) <= win.saturating_mul(2)
    }

    /// Accounts a segment from `side` that the connection accepted.
    #[inline(always)]
    pub fn update(&mut self, state: u8, side: usize, seg: &TcpSeg, syn_wscale: u8) {
        let d = side & 1;
        let end = seg.end();
        let first = d == 1 && state == CT_SYN_SENT;
        if seg.flags & TCP_SYN != 0 {
            // A SYN's window is never scaled (RFC 7323 §2.2).
            self.wscale[d] = syn_wscale;
            if first {
                self.seq_end[1] = end;
                self.max_win[1] = u32::from(seg.win).max(1);
                return;
            }
        }
        if first {
            // Nothing from the replier is known before its SYN-ACK.
            return;
        }
        if seq_after(end, self.seq_end[d]) {
            self.seq_end[d] = end;
        }
        let win = if seg.flags & TCP_SYN != 0 { u32::from(seg.win) } else { u32::from(seg.win) << self.shift(d) };
        if win > self.max_win[d] {
            self.max_win[d] = win;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(flags: u8, seq: u32, ack: u32, win: u16, len: u16) -> TcpSeg {
        TcpSeg { flags, seq, ack, win, len }
    }

    #[test]
    fn an_rst_is_believed_only_within_the_receivers_window() {
        // Client ISN 1000, window 64240, scale 7; server ISN 5000, window 65160, scale 7.
        let mut w = TcpWindow::open(&seg(TCP_SYN, 1000, 0, 64240, 0), 7);
        assert_eq!(w.seq_end[0], 1001);
        w.update(CT_SYN_SENT, 1, &seg(TCP_SYN | TCP_ACK, 5000, 1001, 65160, 0), 7);
        assert_eq!((w.seq_end[1], w.max_win[1]), (5001, 65160));
        // The handshake's ACK: windows are scaled from here (502 << 7).
        w.update(CT_SYN_RECV, 0, &seg(TCP_ACK, 1001, 5001, 502, 0), NO_WSCALE);
        assert_eq!(w.max_win[0], 64256);
        // The server sends 100,000 bytes; the client's window grows to 3 MB.
        w.update(CT_ESTABLISHED, 1, &seg(TCP_ACK, 5001, 1001, 509, 1448), NO_WSCALE);
        w.update(CT_ESTABLISHED, 1, &seg(TCP_ACK, 105001 - 1448, 1001, 509, 1448), NO_WSCALE);
        w.update(CT_ESTABLISHED, 0, &seg(TCP_ACK, 1001, 105001, 24000, 0), NO_WSCALE);
        assert_eq!(w.seq_end[1], 105001);
        assert_eq!(w.max_win[0], 24000 << 7);
        // An RST from the server: its sequence number must be near 105001,
        // within the client's window (3,072,000).
        let rst = |seq| seg(TCP_RST, seq, 0, 0, 0);
        assert!(w.acceptable(CT_ESTABLISHED, 1, &rst(105001)));
        assert!(w.acceptable(CT_ESTABLISHED, 1, &rst(105001 + 3_000_000)));
        assert!(w.acceptable(CT_ESTABLISHED, 1, &rst(5001)), "an old sequence number, within a window");
        assert!(!w.acceptable(CT_ESTABLISHED, 1, &rst(105001 + 3_100_000)));
        assert!(!w.acceptable(CT_ESTABLISHED, 1, &rst(2_000_000_000)), "a blind guess");
        assert!(!w.acceptable(CT_ESTABLISHED, 1, &rst(105001u32.wrapping_sub(3_100_000))));
        // From the client: within the server's window (65160, never scaled up).
        assert!(w.acceptable(CT_ESTABLISHED, 0, &rst(1001)));
        assert!(!w.acceptable(CT_ESTABLISHED, 0, &rst(1001 + 70000)));
    }

    #[test]
    fn before_the_synack_an_rst_must_answer_the_syn() {
        let w = TcpWindow::open(&seg(TCP_SYN, 0xffff_fff0, 0, 64240, 0), NO_WSCALE);
        assert_eq!(w.seq_end[0], 0xffff_fff1);
        // A closed port answers with RST/ACK acknowledging the SYN.
        assert!(w.acceptable(CT_SYN_SENT, 1, &seg(TCP_RST | TCP_ACK, 0, 0xffff_fff1, 0, 0)));
        assert!(!w.acceptable(CT_SYN_SENT, 1, &seg(TCP_RST | TCP_ACK, 0, 0xffff_fff2, 0, 0)));
        assert!(!w.acceptable(CT_SYN_SENT, 1, &seg(TCP_RST, 0, 0, 0, 0)), "no ACK: nothing proves it saw the SYN");
        // The client gives up: RST with the sequence number after the SYN.
        assert!(w.acceptable(CT_SYN_SENT, 0, &seg(TCP_RST, 0xffff_fff1, 0, 0, 0)));
        assert!(!w.acceptable(CT_SYN_SENT, 0, &seg(TCP_RST, 12345, 0, 0, 0)));
    }

    #[test]
    fn without_both_scale_options_windows_are_not_scaled() {
        let mut w = TcpWindow::open(&seg(TCP_SYN, 1, 0, 1000, 0), 7);
        w.update(CT_SYN_SENT, 1, &seg(TCP_SYN | TCP_ACK, 1, 2, 1000, 0), NO_WSCALE);
        w.update(CT_ESTABLISHED, 0, &seg(TCP_ACK, 2, 2, 2000, 0), NO_WSCALE);
        assert_eq!(w.max_win[0], 2000);
        assert!(seq_after(1, 0xffff_ffff) && !seq_after(0xffff_ffff, 1));
        assert_eq!(seg(TCP_FIN | TCP_ACK, 10, 0, 0, 5).end(), 16);
    }

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
