//! The state machine driven by hand and by a simulated RFC 7440 client over
//! a lossy link, in virtual time.

use super::*;
use crate::tftp::proto::TftpOption;

fn file(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn ack(block: u16) -> [u8; 4] {
    let b = block.to_be_bytes();
    [0, 4, b[0], b[1]]
}

fn opts<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<TftpOption<'a>> {
    pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect()
}

/// A transfer of `data` with its clock.
struct Harness {
    t: Transfer,
    data: Vec<u8>,
    now: Instant,
}

impl Harness {
    fn new(data: Vec<u8>, options: &[(&str, &str)], mode: Mode, params: Params) -> Self {
        let t = Transfer::new(&opts(options), mode, data.len() as u64, &params);
        Harness { t, data, now: Instant::now() }
    }

    fn plain(data: Vec<u8>) -> Self {
        Self::new(data, &[], Mode::Octet, Params::default())
    }

    /// Every packet due now.
    fn drain(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; self.t.packet_capacity()];
        let mut src: &[u8] = &self.data;
        while let Some(tx) = self.t.poll_transmit(self.now, &mut src, &mut buf) {
            out.push(buf[..tx.len].to_vec());
            assert!(out.len() <= 70_000, "runaway sender");
        }
        out
    }

    fn recv(&mut self, packet: &[u8]) -> Received {
        self.t.handle_packet(self.now, packet)
    }

    /// Jumps to the deadline and lets it fire.
    fn expire(&mut self) {
        self.now = self.t.poll_timeout().expect("a deadline is armed");
        assert!(self.t.handle_timeout(self.now));
    }
}

fn data_block(p: &[u8]) -> (u16, &[u8]) {
    match Repr::parse(p).unwrap() {
        Repr::Data { block, data } => (block, data),
        other => panic!("expected DATA, got {other:?}"),
    }
}

#[test]
fn lock_step_transfer_of_three_blocks() {
    let mut h = Harness::plain(file(1300));
    let p = h.drain();
    assert_eq!(p.len(), 1, "one block before the client acknowledges");
    assert_eq!(data_block(&p[0]), (1, &h.data[..512]));
    assert_eq!(h.recv(&ack(1)), Received::Progress);
    let p = h.drain();
    assert_eq!(data_block(&p[0]), (2, &h.data[512..1024]));
    h.recv(&ack(2));
    let p = h.drain();
    assert_eq!(data_block(&p[0]), (3, &h.data[1024..]));
    assert_eq!(h.recv(&ack(3)), Received::Ended);
    assert_eq!(h.t.outcome(), Some(&Outcome::Completed));
    assert!(h.drain().is_empty());
    assert_eq!(h.t.poll_timeout(), None);
}

#[test]
fn a_multiple_of_the_block_size_ends_with_an_empty_block() {
    let mut h = Harness::plain(file(1024));
    for (i, len) in [(1u16, 512usize), (2, 512), (3, 0)] {
        let p = h.drain();
        assert_eq!(p.len(), 1);
        let (b, d) = data_block(&p[0]);
        assert_eq!((b, d.len()), (i, len));
        h.recv(&ack(i));
    }
    assert_eq!(h.t.outcome(), Some(&Outcome::Completed));

    let mut h = Harness::plain(Vec::new());
    assert_eq!(h.drain(), vec![vec![0, 3, 0, 1]]);
    assert_eq!(h.recv(&ack(1)), Received::Ended);

    // An empty file's tsize is left out of the OACK (curl takes 0 for invalid).
    let mut h = Harness::new(Vec::new(), &[("tsize", "0"), ("blksize", "1468")], Mode::Octet, Params::default());
    assert_eq!(h.drain(), vec![b"\x00\x06blksize\x001468\x00".to_vec()]);
    let mut h = Harness::new(Vec::new(), &[("tsize", "0")], Mode::Octet, Params::default());
    assert_eq!(h.drain(), vec![vec![0, 3, 0, 1]], "nothing granted: no OACK");
}

#[test]
fn a_duplicate_ack_sends_nothing() {
    // The Sorcerer's Apprentice: a delayed ACK 1 arrives twice.
    let mut h = Harness::plain(file(2000));
    h.drain();
    h.recv(&ack(1));
    assert_eq!(h.drain().len(), 1);
    assert_eq!(h.recv(&ack(1)), Received::Duplicate);
    assert!(h.drain().is_empty(), "a duplicate ACK must not trigger a send");
    // An ACK of a block not sent yet, or long gone, is ignored too.
    assert_eq!(h.recv(&ack(7)), Received::Unexpected);
    assert_eq!(h.recv(&ack(0)), Received::Unexpected);
    assert!(h.drain().is_empty());
    h.recv(&ack(2));
    assert_eq!(data_block(&h.drain()[0]).0, 3);
}

#[test]
fn oack_first_then_windows_after_it_is_acknowledged() {
    let mut h = Harness::new(
        file(100),
        &[("tsize", "0"), ("blksize", "8"), ("windowsize", "4"), ("foo", "bar")],
        Mode::Octet,
        Params::default(),
    );
    let p = h.drain();
    let expected: &[u8] = b"\x00\x06blksize\x008\x00windowsize\x004\x00tsize\x00100\x00";
    assert_eq!(p, vec![expected.to_vec()]);
    assert!(h.drain().is_empty(), "no data before the OACK is acknowledged");
    assert_eq!(h.recv(&ack(1)), Received::Unexpected);
    assert_eq!(h.recv(&ack(0)), Received::Progress);
    let p = h.drain();
    assert_eq!(p.iter().map(|p| data_block(p).0).collect::<Vec<_>>(), [1, 2, 3, 4]);
    h.recv(&ack(4));
    assert_eq!(h.drain().iter().map(|p| data_block(p).0).collect::<Vec<_>>(), [5, 6, 7, 8]);
    // The client got 5 but not 6: it acknowledges 5; the window restarts at 6.
    h.recv(&ack(5));
    assert_eq!(h.drain().iter().map(|p| data_block(p).0).collect::<Vec<_>>(), [6, 7, 8, 9]);
    // A late duplicate of 5 changes nothing.
    assert_eq!(h.recv(&ack(5)), Received::Duplicate);
    assert!(h.drain().is_empty());
    h.recv(&ack(9));
    let p = h.drain();
    assert_eq!(p.iter().map(|p| data_block(p).0).collect::<Vec<_>>(), [10, 11, 12, 13]);
    assert_eq!(data_block(&p[3]).1.len(), 4, "100 = 12 * 8 + 4");
    h.recv(&ack(13));
    assert_eq!(h.t.outcome(), Some(&Outcome::Completed));
}

#[test]
fn block_numbers_roll_over_after_65535() {
    let blocks = 70_000usize;
    let mut h = Harness::new(file(blocks * 8 + 3), &[("blksize", "8"), ("windowsize", "64")], Mode::Octet, {
        let mut p = Params::default();
        p.limits.max_windowsize = 64;
        p
    });
    h.drain();
    h.recv(&ack(0));
    let mut got = Vec::new();
    let mut expected: u64 = 1;
    while h.t.outcome().is_none() {
        let p = h.drain();
        assert!(!p.is_empty());
        let mut last = 0;
        for pkt in &p {
            let (b, d) = data_block(pkt);
            assert_eq!(b, expected as u16, "wire block of block {expected}");
            got.extend_from_slice(d);
            expected += 1;
            last = b;
        }
        h.recv(&ack(last));
    }
    assert_eq!(expected - 1, blocks as u64 + 1);
    assert_eq!(got, h.data);
    assert_eq!(h.t.outcome(), Some(&Outcome::Completed));
}

/// A window-2 transfer of 5000 bytes whose client acknowledged block 1
/// (blocks 2 and 3 are due).
fn window_of_two_after_ack_1(retries: u32) -> Harness {
    let params = Params { retries, ..Default::default() };
    let mut h = Harness::new(file(5000), &[("windowsize", "2")], Mode::Octet, params);
    h.drain();
    h.recv(&ack(0));
    assert_eq!(h.drain().len(), 2);
    h.recv(&ack(1));
    h
}

#[test]
fn timeouts_retransmit_the_window_a_bounded_number_of_times() {
    let mut h = window_of_two_after_ack_1(3);
    assert_eq!(h.drain().iter().map(|p| data_block(p).0).collect::<Vec<_>>(), [2, 3]);
    let quiet = h.now;
    for _ in 0..3 {
        h.expire();
        assert_eq!(h.drain().iter().map(|p| data_block(p).0).collect::<Vec<_>>(), [2, 3], "go back to 2");
    }
    h.expire();
    assert_eq!(h.t.outcome(), Some(&Outcome::Failed(Failure::TimedOut)));
    assert!(h.drain().is_empty());
    assert_eq!(h.t.poll_timeout(), None);
    assert!(h.now - quiet >= Duration::from_secs(4), "silent for timeout × (retries + 1) before giving up");
}

#[test]
fn a_repeated_ack_after_the_retries_buys_one_retransmission() {
    // The fast retransmissions were all lost; atftp asks again after 5 s.
    let mut h = window_of_two_after_ack_1(2);
    h.drain();
    h.expire();
    h.drain();
    h.expire();
    h.drain();
    // Retries spent: waiting for the long deadline. The client asks again.
    h.now += Duration::from_secs(1);
    assert_eq!(h.recv(&ack(1)), Received::Duplicate);
    h.expire();
    assert_eq!(h.drain().iter().map(|p| data_block(p).0).collect::<Vec<_>>(), [2, 3], "retransmitted at once");
    assert!(h.t.outcome().is_none(), "not given up while the client asks");
    // Each repeated ACK buys one retransmission, no more.
    assert!(h.drain().is_empty());
    assert_eq!(h.recv(&ack(1)), Received::Duplicate);
    h.expire();
    assert_eq!(h.drain().len(), 2);
    h.recv(&ack(3));
    assert_eq!(h.drain().iter().map(|p| data_block(p).0).collect::<Vec<_>>(), [4, 5]);
}

#[test]
fn a_client_timing_out_after_our_last_retransmission_is_still_served() {
    // atftp restarts its 5 s timer on every packet it gets, also on the
    // duplicates it ignores: after its ACK was lost twice, it asks again
    // only 5 s after the server's last retransmission (seen in the lab).
    let mut h = window_of_two_after_ack_1(5);
    h.drain();
    let mut last = h.now;
    for _ in 0..5 {
        h.expire();
        assert_eq!(h.drain().len(), 2);
        last = h.now;
    }
    assert!(h.t.poll_timeout().unwrap() >= last + Duration::from_secs(6), "a client's retry interval after the last");
    h.now = last + Duration::from_secs(5) + Duration::from_millis(500);
    assert!(!h.t.handle_timeout(h.now));
    assert_eq!(h.recv(&ack(3)), Received::Progress, "the client's late ACK is taken");
    assert_eq!(h.drain().iter().map(|p| data_block(p).0).collect::<Vec<_>>(), [4, 5]);
}

#[test]
fn next_read_names_the_windows_bytes_in_octet_mode_only() {
    let mut h = window_of_two_after_ack_1(5);
    assert_eq!(h.t.next_read(), Some((512, 1024)), "blocks 2 and 3");
    h.drain();
    assert_eq!(h.t.next_read(), None, "the window is out");
    h.recv(&ack(3));
    assert_eq!(h.t.next_read(), Some((3 * 512, 1024)), "blocks 4 and 5");
    let mut h = Harness::new(file(1100), &[("windowsize", "2")], Mode::Octet, Params::default());
    h.drain();
    assert_eq!(h.t.next_read(), None, "the OACK first");
    h.recv(&ack(0));
    h.drain();
    h.recv(&ack(2));
    assert_eq!(h.t.next_read(), Some((1024, 76)), "the last block, short");
    let n = Harness::new(file(5000), &[], Mode::Netascii, Params::default());
    assert_eq!(n.t.next_read(), None, "netascii reads block by block");
}

#[test]
fn progress_resets_the_retry_count() {
    let params = Params { retries: 2, ..Default::default() };
    let mut h = Harness::new(file(512 * 10), &[("blksize", "512")], Mode::Octet, params);
    h.drain();
    h.recv(&ack(0));
    for b in 1..=10u16 {
        assert_eq!(data_block(&h.drain()[0]).0, b);
        h.expire();
        h.expire();
        assert_eq!(data_block(&h.drain()[0]).0, b, "retransmitted");
        h.recv(&ack(b));
    }
    assert!(h.t.outcome().is_none());
}

#[test]
fn the_first_block_to_an_unproven_address_is_never_repeated() {
    let mut h = Harness::plain(file(5000));
    assert_eq!(h.drain().len(), 1);
    for _ in 0..5 {
        h.expire();
        assert!(h.drain().is_empty(), "no second block before the client acknowledges");
    }
    h.expire();
    assert_eq!(h.t.outcome(), Some(&Outcome::Failed(Failure::Unanswered)));
}

#[test]
fn the_oack_is_not_repeated_but_a_late_ack_still_opens_the_transfer() {
    let mut h = Harness::new(file(10), &[("tsize", "0")], Mode::Octet, Params { retries: 2, ..Default::default() });
    assert_eq!(h.drain(), vec![b"\x00\x06tsize\x0010\x00".to_vec()]);
    h.expire();
    assert!(h.drain().is_empty(), "no second OACK to an address that has not acknowledged");
    // The client's ACK 0 was lost; it repeats it.
    h.recv(&ack(0));
    assert_eq!(data_block(&h.drain()[0]), (1, &h.data[..]));

    let mut h = Harness::new(file(10), &[("tsize", "0")], Mode::Octet, Params { retries: 2, ..Default::default() });
    h.drain();
    for _ in 0..3 {
        h.expire();
        assert!(h.drain().is_empty());
    }
    assert_eq!(h.t.outcome(), Some(&Outcome::Failed(Failure::Unanswered)));
}

#[test]
fn edk2_refusing_the_oack_ends_the_transfer_quietly() {
    let mut h = Harness::new(file(10_000), &[("tsize", "0"), ("blksize", "1468")], Mode::Octet, Params::default());
    assert_eq!(h.drain().len(), 1);
    assert_eq!(h.recv(b"\x00\x05\x00\x08aborted by firmware\x00"), Received::Ended);
    assert_eq!(h.t.outcome(), Some(&Outcome::OptionsRefused));
    assert!(h.drain().is_empty());
    assert_eq!(h.t.poll_timeout(), None, "no retransmission is pending");
}

#[test]
fn a_client_error_during_data_aborts() {
    let mut h = Harness::plain(file(10_000));
    h.drain();
    h.recv(&ack(1));
    assert_eq!(h.recv(b"\x00\x05\x00\x03disk full\x00"), Received::Ended);
    assert_eq!(h.t.outcome(), Some(&Outcome::Aborted { code: ErrorCode::DiskFull, message: "disk full".into() }));
    // Error 8 after data started is an abort like any other.
    let mut h = Harness::plain(file(10_000));
    h.drain();
    h.recv(b"\x00\x05\x00\x08x\x00");
    assert!(matches!(h.t.outcome(), Some(Outcome::Aborted { code: ErrorCode::OptionRefused, .. })));
}

#[test]
fn garbage_and_unexpected_packets_change_nothing() {
    let mut h = Harness::plain(file(2000));
    h.drain();
    assert_eq!(h.recv(&[0]), Received::Malformed);
    assert_eq!(h.recv(&[0, 9, 0, 0]), Received::Malformed);
    assert_eq!(h.recv(b"\x00\x03\x00\x01data"), Received::Unexpected);
    assert_eq!(h.recv(b"\x00\x01f\x00octet\x00"), Received::Unexpected);
    assert!(h.drain().is_empty());
    assert!(h.t.outcome().is_none());
}

#[test]
fn a_file_that_shrinks_ends_with_an_error_packet() {
    let mut h = Harness::plain(file(2000));
    h.drain();
    h.data.truncate(700);
    h.recv(&ack(1));
    let p = h.drain();
    assert_eq!(p, vec![b"\x00\x05\x00\x00the file changed during the transfer\x00".to_vec()]);
    assert_eq!(h.t.outcome(), Some(&Outcome::Failed(Failure::FileChanged)));
}

#[test]
fn netascii_is_converted_and_tsize_not_granted() {
    let text = b"line one\nline two\r\nend\n".repeat(40);
    let mut h = Harness::new(text.clone(), &[("tsize", "0"), ("blksize", "64")], Mode::Netascii, Params::default());
    let p = h.drain();
    assert_eq!(p, vec![b"\x00\x06blksize\x0064\x00".to_vec()], "no tsize in netascii");
    h.recv(&ack(0));
    let mut wire = Vec::new();
    while h.t.outcome().is_none() {
        let p = h.drain();
        let (b, d) = data_block(&p[0]);
        wire.extend_from_slice(d);
        h.recv(&ack(b));
    }
    assert_eq!(wire, netascii::encode(&text));
}

#[test]
fn the_rto_adapts_to_a_fast_client_and_a_requested_timeout_is_kept() {
    let mut h = Harness::new(file(512 * 40), &[("blksize", "512")], Mode::Octet, Params::default());
    h.drain();
    h.recv(&ack(0));
    for b in 1..=20u16 {
        h.drain();
        h.now += Duration::from_micros(200);
        h.recv(&ack(b));
    }
    h.drain();
    let wait = h.t.poll_timeout().unwrap() - h.now;
    assert_eq!(wait, MIN_RTO, "a 200 µs round trip gives the floor");

    let mut h = Harness::new(file(5000), &[("timeout", "3")], Mode::Octet, Params::default());
    h.drain();
    assert_eq!(h.t.poll_timeout().unwrap() - h.now, Duration::from_secs(3), "RFC 2349");
    h.recv(&ack(0));
    h.drain();
    h.now += Duration::from_micros(200);
    h.recv(&ack(1));
    h.drain();
    assert_eq!(h.t.poll_timeout().unwrap() - h.now, Duration::from_secs(3));
}

/// A tiny deterministic generator for the loss simulation.
struct XorShift(u64);

impl XorShift {
    fn chance(&mut self, percent: u64) -> bool {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % 100 < percent
    }
}

/// An RFC 7440 receiver: ACKs the last block of each window, the last
/// in-order block when it sees a gap (once per gap), and repeats its last
/// ACK when nothing arrives.
struct Client {
    window: u64,
    blksize: usize,
    expected: u64,
    since_ack: u64,
    gap_acked: bool,
    got: Vec<u8>,
    done: bool,
}

impl Client {
    fn on_packet(&mut self, p: &[u8], acks: &mut Vec<Vec<u8>>) {
        match Repr::parse(p).unwrap() {
            Repr::Oack { .. } => acks.push(ack(0).to_vec()),
            Repr::Data { block, data } => {
                if block == self.expected as u16 {
                    self.got.extend_from_slice(data);
                    self.expected += 1;
                    self.since_ack += 1;
                    self.gap_acked = false;
                    if self.since_ack == self.window || data.len() < self.blksize {
                        self.since_ack = 0;
                        self.done |= data.len() < self.blksize;
                        acks.push(ack(block).to_vec());
                    }
                } else if !self.gap_acked {
                    self.gap_acked = true;
                    self.since_ack = 0;
                    acks.push(ack((self.expected - 1) as u16).to_vec());
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn lossy_run(window: u16, loss: u64, seed: u64) -> (Vec<u8>, Vec<u8>, usize) {
    let data = file(512 * 300 + 77);
    let params = Params { retries: 30, limits: Limits { max_blksize: 512, max_windowsize: 64 }, ..Default::default() };
    let w = window.to_string();
    let mut h = Harness::new(data, &[("blksize", "512"), ("windowsize", &w)], Mode::Octet, params);
    let mut rng = XorShift(seed);
    let mut c = Client {
        window: u64::from(window),
        blksize: 512,
        expected: 1,
        since_ack: 0,
        gap_acked: false,
        got: Vec::new(),
        done: false,
    };
    let mut sent = 0;
    let mut last_ack = ack(0).to_vec();
    while h.t.outcome().is_none() {
        let out = h.drain();
        sent += out.len();
        let mut acks = Vec::new();
        for p in out {
            if !rng.chance(loss) {
                c.on_packet(&p, &mut acks);
            }
        }
        if acks.is_empty() {
            // Nothing reached the client: time passes, the client repeats itself
            // (a duplicate the server must ignore) and the server's timer fires.
            let r = if rng.chance(loss) { Received::Ignored } else { h.recv(&last_ack) };
            if r != Received::Progress && h.t.outcome().is_none() {
                h.expire();
            }
            continue;
        }
        for a in acks {
            last_ack = a.clone();
            if !rng.chance(loss) {
                h.recv(&a);
            }
        }
        h.now += Duration::from_micros(300);
    }
    assert!(c.done || h.t.outcome() != Some(&Outcome::Completed));
    (c.got, h.data, sent)
}

#[test]
fn lossy_links_complete_with_identical_bytes_and_bounded_sends() {
    for (window, seed) in [(1u16, 1u64), (1, 2), (8, 3), (16, 4), (16, 5)] {
        let (got, data, sent) = lossy_run(window, 10, seed);
        assert_eq!(got.len(), data.len(), "window {window} seed {seed}");
        assert!(got == data, "window {window} seed {seed}: bytes differ");
        let blocks = data.len() / 512 + 2;
        // Go-back-N resends at most a window per loss event; far from a doubling cascade.
        assert!(sent < blocks * (2 + usize::from(window) / 4), "window {window}: {sent} packets for {blocks} blocks");
    }
}
