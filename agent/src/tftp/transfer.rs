//! One read transfer as a sans-IO state machine: packets and the time go in
//! ([`Transfer::handle_packet`], [`Transfer::handle_timeout`]), packets and
//! the outcome come out ([`Transfer::poll_transmit`], [`Transfer::outcome`]).
//! The file is read through [`Source`]; sockets and clocks stay in the caller.
//!
//! Blocks are numbered absolutely (`u64`, block 1 holds the first bytes); on
//! the wire only the low 16 bits go out, so files of more than 65535 blocks
//! roll over to block 0 as common clients expect. Sending follows RFC 7440's
//! go-back-N window (window 1 is RFC 1350 lock-step):
//!
//! * an ACK that advances moves the window to start after the acknowledged
//!   block (an ACK inside the window means the client missed the next one);
//! * an ACK that does not advance (a duplicate) never sends anything: the
//!   Sorcerer's Apprentice cure of RFC 1123 §4.2.3.1; only the timer
//!   retransmits, at most `retries` times in a row. The one exception is a
//!   client asking again after a timeout of ours passed without progress
//!   (atftp repeats its ACK after 5 s, long after fast retransmissions may
//!   all have been lost): its repeated ACK buys one retransmission, at once,
//!   and keeps the transfer from being given up;
//! * not an amplifier: until the client acknowledges something, one packet
//!   (the OACK, or DATA block 1 without options) goes to its address and is
//!   never repeated; the client repeats its request, or its ACK, when one is
//!   lost. Windows open only after the OACK is acknowledged.

use std::{
    collections::VecDeque,
    io,
    time::{Duration, Instant},
};

use super::{
    netascii::{self, Cursor},
    options::{Granted, Limits, negotiate},
    proto::{DATA_HEADER_LEN, ErrorCode, Repr, put_data_header},
    source::{Source, read_full},
};

/// The transfer mode of the request (RFC 1350 §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Octet,
    Netascii,
}

/// The server's settings for every transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub limits: Limits,
    /// The first retransmission timeout, and the largest one backing off reaches.
    pub timeout: Duration,
    /// Retransmissions in a row without progress; after the last, the
    /// transfer is given up once the client has been silent for
    /// `timeout × (retries + 1)` and 6 s have passed since that last
    /// retransmission.
    pub retries: u32,
}

impl Default for Params {
    fn default() -> Self {
        Self { limits: Limits::default(), timeout: Duration::from_secs(1), retries: 5 }
    }
}

/// How long a client may take to ask again after the last packet it got:
/// 5 s is the common default (atftp, tftp-hpa, U-Boot), plus a margin.
const CLIENT_RETRY: Duration = Duration::from_secs(6);

/// The shortest adaptive retransmission timeout.
const MIN_RTO: Duration = Duration::from_millis(50);

/// The retransmission timeout: RFC 6298's estimator (without its 1 s floor,
/// which is for the Internet, not a boot segment), or fixed at the client's
/// RFC 2349 timeout when it asked for one.
#[derive(Debug, Clone, Copy)]
struct Rto {
    current: Duration,
    max: Duration,
    srtt: Option<Duration>,
    rttvar: Duration,
    fixed: bool,
}

impl Rto {
    fn new(initial: Duration, fixed: bool) -> Self {
        Self { current: initial, max: initial, srtt: None, rttvar: Duration::ZERO, fixed }
    }

    /// RFC 6298 §2.2-§2.3, with alpha 1/8 and beta 1/4.
    fn sample(&mut self, r: Duration) {
        if self.fixed {
            return;
        }
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                self.rttvar = (self.rttvar * 3 + s.abs_diff(r)) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
        let s = self.srtt.unwrap_or(r);
        self.current = (s + self.rttvar * 4).clamp(MIN_RTO, self.max);
    }

    /// RFC 6298 §5.5: double on each timeout, up to the maximum.
    fn back_off(&mut self) {
        if !self.fixed {
            self.current = (self.current * 2).min(self.max);
        }
    }
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The client acknowledged the last block.
    Completed,
    /// The client refused the OACK with error 8 (RFC 2347 §2); EDK2 does this
    /// on purpose after learning the size from `tsize`. Normal.
    OptionsRefused,
    /// The client sent another ERROR.
    Aborted {
        code: ErrorCode,
        message: String,
    },
    Failed(Failure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The client stopped acknowledging.
    TimedOut,
    /// The client never acknowledged anything (a lost first packet, a
    /// client that gave up, or a forged request).
    Unanswered,
    /// The file shrank while it was being sent.
    FileChanged,
    Read(io::ErrorKind),
    /// The client's port is closed (ICMP port unreachable), seen by the caller.
    ClientGone,
}

impl Failure {
    pub fn describe(&self) -> String {
        match self {
            Failure::TimedOut => "the client stopped acknowledging".into(),
            Failure::Unanswered => "the client never acknowledged".into(),
            Failure::FileChanged => "the file shrank during the transfer".into(),
            Failure::Read(k) => format!("reading the file failed: {k}"),
            Failure::ClientGone => "the client's port is closed".into(),
        }
    }
}

/// One packet [`Transfer::poll_transmit`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub len: usize,
    /// File bytes in it (DATA only).
    pub payload: usize,
    /// The packet was sent before.
    pub retransmission: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Options were granted: the OACK goes first and must be acknowledged
    /// with block 0 (RFC 2347 §2). `unsent`: it is due.
    Oack {
        unsent: bool,
    },
    Data,
}

/// Per-block start positions of netascii blocks that may still be (re)sent:
/// `cursors[i]` starts block `base + i`.
#[derive(Debug)]
struct NetasciiBlocks {
    base: u64,
    cursors: VecDeque<Cursor>,
}

#[derive(Debug)]
pub struct Transfer {
    granted: Granted,
    blksize: usize,
    window: u64,
    /// The file's size when it was opened; in octet mode it fixes the last block.
    size: u64,
    netascii: Option<NetasciiBlocks>,
    phase: Phase,
    /// The highest block the client acknowledged (0: none, or the OACK).
    acked: u64,
    /// The next block to send.
    next: u64,
    /// The highest block sent so far.
    highest_sent: u64,
    /// The number of the last block, once known.
    last: Option<u64>,
    /// The client acknowledged something: it asked from its own address.
    proven: bool,
    retries: u32,
    max_retries: u32,
    rto: Rto,
    deadline: Option<Instant>,
    /// When the client last had nothing outstanding to answer.
    quiet_since: Option<Instant>,
    /// A first transmission being timed (Karn's rule: never a retransmitted one).
    probe: Option<(u64, Instant)>,
    pending_error: Option<(ErrorCode, &'static str, Failure)>,
    outcome: Option<Outcome>,
}

impl Transfer {
    /// A transfer of a file of `size` bytes, for a request with `options`.
    pub fn new(options: &[super::proto::TftpOption<'_>], mode: Mode, size: u64, params: &Params) -> Self {
        let mut granted = negotiate(options, params.limits, mode == Mode::Octet);
        // curl refuses an OACK with tsize 0 as invalid; an empty file goes
        // without it (RFC 2347 §2 lets the server leave out any option).
        granted.tsize &= size > 0;
        let blksize = usize::from(granted.blksize());
        let rto = match granted.timeout {
            Some(t) => Rto::new(Duration::from_secs(u64::from(t)), true),
            None => Rto::new(params.timeout, false),
        };
        Transfer {
            granted,
            blksize,
            window: u64::from(granted.windowsize()),
            size,
            netascii: (mode == Mode::Netascii)
                .then(|| NetasciiBlocks { base: 1, cursors: VecDeque::from([Cursor::default()]) }),
            phase: if granted.any() { Phase::Oack { unsent: true } } else { Phase::Data },
            acked: 0,
            next: 1,
            highest_sent: 0,
            last: (mode == Mode::Octet).then(|| size / blksize as u64 + 1),
            proven: false,
            retries: 0,
            max_retries: params.retries,
            rto,
            deadline: None,
            quiet_since: None,
            probe: None,
            pending_error: None,
            outcome: None,
        }
    }

    /// What was negotiated.
    pub fn granted(&self) -> Granted {
        self.granted
    }

    /// The length of a full DATA packet: every one but the last.
    pub fn data_packet_len(&self) -> usize {
        DATA_HEADER_LEN + self.blksize
    }

    /// The buffer size [`Transfer::poll_transmit`] needs.
    pub fn packet_capacity(&self) -> usize {
        DATA_HEADER_LEN + self.blksize.max(512)
    }

    /// Set once the transfer is over; then nothing more is sent.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// When [`Transfer::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.outcome.is_some() { None } else { self.deadline }
    }

    /// The caller saw the transfer fail (e.g. the client's port is closed).
    pub fn fail(&mut self, f: Failure) {
        if self.outcome.is_none() {
            self.outcome = Some(Outcome::Failed(f));
        }
    }

    /// The file bytes the packets due next will read (octet mode): from
    /// the next block to the end of the window, or `None` when nothing is
    /// due. The caller reads them ahead, off its async runtime.
    pub fn next_read(&self) -> Option<(u64, usize)> {
        if self.outcome.is_some() || self.netascii.is_some() || self.phase != Phase::Data {
            return None;
        }
        let last = self.last.unwrap_or(u64::MAX).min(self.acked + self.window);
        if self.next > last {
            return None;
        }
        let offset = (self.next - 1) * self.blksize as u64;
        let len = ((last - self.next + 1) * self.blksize as u64).min(self.size.saturating_sub(offset));
        Some((offset, len as usize))
    }

    /// Writes the next packet due into `buf` (at least
    /// [`Transfer::packet_capacity`] bytes). Call until it returns `None`.
    pub fn poll_transmit<S: Source + ?Sized>(&mut self, now: Instant, src: &mut S, buf: &mut [u8]) -> Option<Transmit> {
        if self.outcome.is_some() {
            return None;
        }
        if let Some((code, message, failure)) = self.pending_error.take() {
            self.outcome = Some(Outcome::Failed(failure));
            let len = Repr::Error { code, message: message.as_bytes() }.emit(buf).ok()?;
            return Some(Transmit { len, payload: 0, retransmission: false });
        }
        match self.phase {
            Phase::Oack { unsent: false } => return None,
            Phase::Oack { unsent: true } => {
                let mut scratch = Default::default();
                let options = self.granted.oack(self.size, &mut scratch);
                let len = Repr::Oack { options }.emit(buf).ok()?;
                self.phase = Phase::Oack { unsent: false };
                self.arm(now);
                return Some(Transmit { len, payload: 0, retransmission: false });
            }
            Phase::Data => {}
        }
        let block = self.next;
        if block > self.acked + self.window || self.last.is_some_and(|l| block > l) {
            return None;
        }
        let len = match self.fill(block, src, &mut buf[DATA_HEADER_LEN..DATA_HEADER_LEN + self.blksize]) {
            Ok(n) => n,
            Err(failure) => {
                let message = match failure {
                    Failure::FileChanged => "the file changed during the transfer",
                    _ => "cannot read the file",
                };
                self.pending_error = Some((ErrorCode::NotDefined, message, failure));
                return self.poll_transmit(now, src, buf);
            }
        };
        put_data_header(buf, block as u16);
        if len < self.blksize {
            self.last = Some(block);
        }
        let retransmission = block <= self.highest_sent;
        if retransmission {
            self.probe = None;
        } else {
            self.highest_sent = block;
            self.probe.get_or_insert((block, now));
        }
        self.next += 1;
        self.arm(now);
        Some(Transmit { len: DATA_HEADER_LEN + len, payload: len, retransmission })
    }

    fn arm(&mut self, now: Instant) {
        if self.deadline.is_none() {
            self.deadline = Some(now + self.rto.current);
            self.quiet_since = Some(now);
        }
    }

    /// The payload of `block`.
    fn fill<S: Source + ?Sized>(&mut self, block: u64, src: &mut S, out: &mut [u8]) -> Result<usize, Failure> {
        let Some(na) = self.netascii.as_mut() else {
            let offset = (block - 1) * self.blksize as u64;
            let want = (self.size - offset).min(self.blksize as u64) as usize;
            let got = read_full(src, offset, &mut out[..want]).map_err(|e| Failure::Read(e.kind()))?;
            return if got < want { Err(Failure::FileChanged) } else { Ok(got) };
        };
        let i = (block - na.base) as usize;
        let at = na.cursors[i];
        let (n, next) = netascii::encode_block(src, at, out).map_err(|e| Failure::Read(e.kind()))?;
        if i + 1 == na.cursors.len() {
            na.cursors.push_back(next);
        }
        Ok(n)
    }

    /// A datagram from the client's transfer ID.
    pub fn handle_packet(&mut self, now: Instant, packet: &[u8]) -> Received {
        if self.outcome.is_some() {
            return Received::Ignored;
        }
        match Repr::parse(packet) {
            Ok(Repr::Ack { block }) => self.on_ack(now, block),
            Ok(Repr::Error { code, message }) => {
                self.outcome = Some(if code == ErrorCode::OptionRefused && matches!(self.phase, Phase::Oack { .. }) {
                    Outcome::OptionsRefused
                } else {
                    let m = String::from_utf8_lossy(&message[..message.len().min(128)]).into_owned();
                    Outcome::Aborted { code, message: m }
                });
                Received::Ended
            }
            Ok(_) => Received::Unexpected,
            Err(_) => Received::Malformed,
        }
    }

    fn on_ack(&mut self, now: Instant, wire: u16) -> Received {
        let block = match self.phase {
            Phase::Oack { .. } if wire == 0 => {
                self.phase = Phase::Data;
                0
            }
            Phase::Oack { .. } => return Received::Unexpected,
            Phase::Data => {
                // The one block in (acked, highest_sent] with these low 16 bits;
                // the range is at most a window (< 65536) long.
                let d = u64::from(wire.wrapping_sub(self.acked as u16));
                if d == 0 {
                    if self.retries > 0 {
                        // Recovery: the client is alive and still missing the window.
                        self.retries = self.retries.min(self.max_retries.saturating_sub(1));
                        self.quiet_since = Some(now);
                        self.deadline = Some(now);
                    }
                    return Received::Duplicate;
                }
                if d > self.highest_sent - self.acked {
                    return Received::Unexpected;
                }
                self.acked + d
            }
        };
        self.acked = block;
        self.proven = true;
        self.retries = 0;
        self.deadline = None;
        if let Some((b, at)) = self.probe
            && block >= b
        {
            self.rto.sample(now - at);
            self.probe = None;
        }
        // RFC 7440 §4: the next window starts after the acknowledged block,
        // which goes back when the client missed one.
        self.next = block + 1;
        if let Some(na) = self.netascii.as_mut() {
            while na.base < self.next && na.cursors.len() > 1 {
                na.cursors.pop_front();
                na.base += 1;
            }
        }
        if self.last == Some(block) {
            self.outcome = Some(Outcome::Completed);
            return Received::Ended;
        }
        Received::Progress
    }

    /// Retransmits or gives up when the deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        if self.outcome.is_some() || self.deadline.is_none_or(|d| now < d) {
            return false;
        }
        if self.retries >= self.max_retries {
            self.outcome = Some(Outcome::Failed(if self.proven { Failure::TimedOut } else { Failure::Unanswered }));
            return true;
        }
        self.retries += 1;
        self.probe = None;
        self.rto.back_off();
        // Fast retransmissions, but a client is only given up after a
        // silence of `timeout × (retries + 1)`, and a client that has
        // acknowledged something never sooner than its own retry interval
        // after this last retransmission: atftp and U-Boot restart their
        // 5 s timer on every packet they get, even a duplicate they ignore,
        // so they ask again only that long after the server's last one.
        // (Nothing is retransmitted to an unproven address.)
        self.deadline = Some(if self.retries == self.max_retries {
            let quiet = self.quiet_since.unwrap_or(now);
            let grace = if self.proven { self.rto.max.max(CLIENT_RETRY) } else { self.rto.max };
            (now + grace).max(quiet + self.rto.max * (self.max_retries + 1))
        } else {
            now + self.rto.current
        });
        // Nothing is repeated to an address that has not acknowledged: the
        // client repeats its request (a lost OACK or first block) or its ACK
        // (a lost ACK) instead. atftp even aborts on a repeated OACK.
        if self.proven {
            self.next = self.acked + 1;
        }
        true
    }
}

/// What a datagram did, for the caller's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Progress,
    /// An ACK of a block already acknowledged: nothing is sent.
    Duplicate,
    /// An ACK outside the window, or a packet a reader never sends.
    Unexpected,
    Malformed,
    /// The transfer is over (see [`Transfer::outcome`]).
    Ended,
    /// The transfer was already over.
    Ignored,
}

#[cfg(test)]
mod tests;
