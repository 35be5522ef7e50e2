//! The TFTP wire format: RFC 1350 §5 (packets), RFC 2347 §2-§3 (options in
//! requests, OACK). A parsed [`Repr`] borrows from the datagram; `emit`
//! writes one back. Every multi-byte field is in network byte order.
//!
//! Parsing is strict where a wrong guess would corrupt a transfer (opcodes,
//! block numbers, the request's two strings) and lenient where the intent is
//! plain (an ACK with trailing bytes, an ERROR without its final NUL, an
//! incomplete trailing option, which RFC 2347 lets a server ignore).

/// Opcodes (RFC 1350 §5, RFC 2347 §2 for OACK).
mod opcode {
    pub const RRQ: u16 = 1;
    pub const WRQ: u16 = 2;
    pub const DATA: u16 = 3;
    pub const ACK: u16 = 4;
    pub const ERROR: u16 = 5;
    pub const OACK: u16 = 6;
}

/// Field offsets shared by DATA, ACK and ERROR (RFC 1350 §5, figures 5-2 to 5-4).
mod field {
    use std::ops::Range;
    pub const OPCODE: Range<usize> = 0..2;
    /// The block number of DATA and ACK, the error code of ERROR.
    pub const NUMBER: Range<usize> = 2..4;
    /// Where DATA's payload, ERROR's message and a request's strings start.
    pub const REST: usize = 2;
    pub const PAYLOAD: usize = 4;
}

/// Bytes before a DATA packet's payload.
pub const DATA_HEADER_LEN: usize = field::PAYLOAD;
/// The block size without the blksize option (RFC 1350 §2).
pub const DEFAULT_BLKSIZE: u16 = 512;
/// At most this many options of one request are looked at; a request is at
/// most a few hundred bytes, so real clients send far fewer.
pub const MAX_OPTIONS: usize = 16;

/// TFTP error codes (RFC 1350 appendix; 8 from RFC 2347 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotDefined,
    FileNotFound,
    AccessViolation,
    DiskFull,
    IllegalOperation,
    UnknownTid,
    FileExists,
    NoSuchUser,
    /// The client refuses the options of an OACK (RFC 2347 §2).
    OptionRefused,
    Unknown(u16),
}

impl From<u16> for ErrorCode {
    fn from(v: u16) -> Self {
        match v {
            0 => Self::NotDefined,
            1 => Self::FileNotFound,
            2 => Self::AccessViolation,
            3 => Self::DiskFull,
            4 => Self::IllegalOperation,
            5 => Self::UnknownTid,
            6 => Self::FileExists,
            7 => Self::NoSuchUser,
            8 => Self::OptionRefused,
            n => Self::Unknown(n),
        }
    }
}

impl From<ErrorCode> for u16 {
    fn from(c: ErrorCode) -> u16 {
        match c {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTid => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionRefused => 8,
            ErrorCode::Unknown(n) => n,
        }
    }
}

/// One option of a request or an OACK: name and value as sent (RFC 2347 §2:
/// names are case-insensitive, both are NUL-terminated strings).
pub type TftpOption<'a> = (&'a [u8], &'a [u8]);

/// A read or write request (RFC 1350 §5 figure 5-1, RFC 2347 §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub filename: &'a [u8],
    pub mode: &'a [u8],
    pub options: Vec<TftpOption<'a>>,
}

/// A parsed TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repr<'a> {
    Rrq(Request<'a>),
    Wrq(Request<'a>),
    Data { block: u16, data: &'a [u8] },
    Ack { block: u16 },
    Error { code: ErrorCode, message: &'a [u8] },
    Oack { options: Vec<TftpOption<'a>> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("packet of {len} bytes is too short for its opcode")]
    Truncated { len: usize },
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("the request's {0} is not NUL-terminated")]
    Unterminated(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {needed}-byte packet does not fit a {available}-byte buffer")]
pub struct EmitError {
    pub needed: usize,
    pub available: usize,
}

fn be16(b: &[u8], r: std::ops::Range<usize>) -> u16 {
    u16::from_be_bytes([b[r.start], b[r.start + 1]])
}

/// Splits off one NUL-terminated string: (string, rest after the NUL).
fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = b.iter().position(|&c| c == 0)?;
    Some((&b[..nul], &b[nul + 1..]))
}

/// name/value pairs until the end; an incomplete trailing pair is ignored
/// (RFC 2347 §2 lets a server ignore what it does not understand).
fn options(mut b: &[u8]) -> Vec<TftpOption<'_>> {
    let mut v = Vec::new();
    while v.len() < MAX_OPTIONS {
        let Some((name, rest)) = cstr(b) else { break };
        let Some((value, rest)) = cstr(rest) else { break };
        v.push((name, value));
        b = rest;
    }
    v
}

fn request(b: &[u8]) -> Result<Request<'_>, ParseError> {
    let (filename, rest) = cstr(b).ok_or(ParseError::Unterminated("filename"))?;
    let (mode, rest) = cstr(rest).ok_or(ParseError::Unterminated("mode"))?;
    Ok(Request { filename, mode, options: options(rest) })
}

fn options_len(options: &[TftpOption<'_>]) -> usize {
    options.iter().map(|(n, v)| n.len() + v.len() + 2).sum()
}

fn put_options(buf: &mut [u8], options: &[TftpOption<'_>]) -> usize {
    let mut at = 0;
    for (n, v) in options {
        for s in [n, v] {
            buf[at..at + s.len()].copy_from_slice(s);
            buf[at + s.len()] = 0;
            at += s.len() + 1;
        }
    }
    at
}

impl<'a> Repr<'a> {
    /// Parses one datagram.
    pub fn parse(b: &'a [u8]) -> Result<Self, ParseError> {
        if b.len() < 2 {
            return Err(ParseError::Truncated { len: b.len() });
        }
        let rest = &b[field::REST..];
        match be16(b, field::OPCODE) {
            opcode::RRQ => Ok(Repr::Rrq(request(rest)?)),
            opcode::WRQ => Ok(Repr::Wrq(request(rest)?)),
            op @ (opcode::DATA | opcode::ACK | opcode::ERROR) => {
                if b.len() < field::PAYLOAD {
                    return Err(ParseError::Truncated { len: b.len() });
                }
                let n = be16(b, field::NUMBER);
                let tail = &b[field::PAYLOAD..];
                Ok(match op {
                    opcode::DATA => Repr::Data { block: n, data: tail },
                    // RFC 1350 §5: an ACK is exactly 4 bytes; extra bytes carry nothing.
                    opcode::ACK => Repr::Ack { block: n },
                    _ => Repr::Error { code: n.into(), message: cstr(tail).map_or(tail, |(m, _)| m) },
                })
            }
            opcode::OACK => Ok(Repr::Oack { options: options(rest) }),
            op => Err(ParseError::UnknownOpcode(op)),
        }
    }

    /// The length of the emitted packet.
    pub fn buffer_len(&self) -> usize {
        2 + match self {
            Repr::Rrq(r) | Repr::Wrq(r) => r.filename.len() + r.mode.len() + 2 + options_len(&r.options),
            Repr::Data { data, .. } => 2 + data.len(),
            Repr::Ack { .. } => 2,
            Repr::Error { message, .. } => 2 + message.len() + 1,
            Repr::Oack { options } => options_len(options),
        }
    }

    /// Writes the packet at the start of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        let len = self.buffer_len();
        if buf.len() < len {
            return Err(EmitError { needed: len, available: buf.len() });
        }
        let (op, rest) = buf.split_at_mut(field::REST);
        let code = match self {
            Repr::Rrq(_) => opcode::RRQ,
            Repr::Wrq(_) => opcode::WRQ,
            Repr::Data { .. } => opcode::DATA,
            Repr::Ack { .. } => opcode::ACK,
            Repr::Error { .. } => opcode::ERROR,
            Repr::Oack { .. } => opcode::OACK,
        };
        op.copy_from_slice(&code.to_be_bytes());
        match self {
            Repr::Rrq(r) | Repr::Wrq(r) => {
                let pairs = [(r.filename, r.mode)];
                let at = put_options(rest, &pairs);
                put_options(&mut rest[at..], &r.options);
            }
            Repr::Data { block, data } => {
                rest[..2].copy_from_slice(&block.to_be_bytes());
                rest[2..2 + data.len()].copy_from_slice(data);
            }
            Repr::Ack { block } => rest[..2].copy_from_slice(&block.to_be_bytes()),
            Repr::Error { code, message } => {
                rest[..2].copy_from_slice(&u16::from(*code).to_be_bytes());
                rest[2..2 + message.len()].copy_from_slice(message);
                rest[2 + message.len()] = 0;
            }
            Repr::Oack { options } => {
                put_options(rest, options);
            }
        }
        Ok(len)
    }
}

/// Writes a DATA header for `block` (RFC 1350 §5 figure 5-2); the caller puts
/// the payload at `buf[DATA_HEADER_LEN..]`. The hot path of a transfer.
pub fn put_data_header(buf: &mut [u8], block: u16) {
    buf[field::OPCODE].copy_from_slice(&opcode::DATA.to_be_bytes());
    buf[field::NUMBER].copy_from_slice(&block.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    // RRQ "pxelinux.0" octet, tsize 0, blksize 1468, windowsize 16: what atftp sends.
    static RRQ_BYTES: [u8; 54] = [
        0x00, 0x01, b'p', b'x', b'e', b'l', b'i', b'n', b'u', b'x', b'.', b'0', 0x00, b'o', b'c', b't', b'e', b't',
        0x00, b't', b's', b'i', b'z', b'e', 0x00, b'0', 0x00, b'b', b'l', b'k', b's', b'i', b'z', b'e', 0x00, b'1',
        b'4', b'6', b'8', 0x00, b'w', b'i', b'n', b'd', b'o', b'w', b's', b'i', b'z', b'e', 0x00, b'1', b'6', 0x00,
    ];

    fn rrq_repr() -> Repr<'static> {
        Repr::Rrq(Request {
            filename: b"pxelinux.0",
            mode: b"octet",
            options: vec![(b"tsize", b"0"), (b"blksize", b"1468"), (b"windowsize", b"16")],
        })
    }

    static DATA_BYTES: [u8; 7] = [0x00, 0x03, 0xff, 0xfe, 0xde, 0xad, 0x00];
    static ACK_BYTES: [u8; 4] = [0x00, 0x04, 0x01, 0x02];
    static ERROR_BYTES: [u8; 14] = [0x00, 0x05, 0x00, 0x08, b'n', b'o', b' ', b't', b'h', b'a', b'n', b'k', b's', 0x00];
    static OACK_BYTES: [u8; 21] = [
        0x00, 0x06, b't', b's', b'i', b'z', b'e', 0x00, b'4', b'2', 0x00, b'b', b'l', b'k', b's', b'i', b'z', b'e',
        0x00, b'8', 0x00,
    ];

    /// Emits into a buffer of 0xa5 bytes and checks every byte and the length.
    fn assert_emits(repr: &Repr<'_>, expected: &[u8]) {
        let mut buf = vec![0xa5; expected.len() + 8];
        let n = repr.emit(&mut buf).unwrap();
        assert_eq!(n, expected.len());
        assert_eq!(repr.buffer_len(), expected.len());
        assert_eq!(&buf[..n], expected);
        assert!(buf[n..].iter().all(|&b| b == 0xa5), "wrote past the packet");
    }

    #[test]
    fn test_deconstruct_rrq() {
        assert_eq!(Repr::parse(&RRQ_BYTES).unwrap(), rrq_repr());
    }

    #[test]
    fn test_construct_rrq() {
        assert_emits(&rrq_repr(), &RRQ_BYTES);
    }

    #[test]
    fn test_deconstruct_wrq_without_options() {
        let b = [0x00, 0x02, b'f', 0x00, b'o', b'c', b't', b'e', b't', 0x00];
        assert_eq!(Repr::parse(&b).unwrap(), Repr::Wrq(Request { filename: b"f", mode: b"octet", options: vec![] }));
    }

    #[test]
    fn test_construct_wrq_without_options() {
        let b = [0x00, 0x02, b'f', 0x00, b'o', b'c', b't', b'e', b't', 0x00];
        assert_emits(&Repr::Wrq(Request { filename: b"f", mode: b"octet", options: vec![] }), &b);
    }

    #[test]
    fn test_deconstruct_data() {
        assert_eq!(Repr::parse(&DATA_BYTES).unwrap(), Repr::Data { block: 0xfffe, data: &[0xde, 0xad, 0x00] });
    }

    #[test]
    fn test_construct_data() {
        assert_emits(&Repr::Data { block: 0xfffe, data: &[0xde, 0xad, 0x00] }, &DATA_BYTES);
        let mut buf = [0xa5; 7];
        put_data_header(&mut buf, 0xfffe);
        assert_eq!(&buf[..4], &DATA_BYTES[..4]);
    }

    #[test]
    fn test_deconstruct_ack() {
        assert_eq!(Repr::parse(&ACK_BYTES).unwrap(), Repr::Ack { block: 0x0102 });
    }

    #[test]
    fn test_construct_ack() {
        assert_emits(&Repr::Ack { block: 0x0102 }, &ACK_BYTES);
    }

    #[test]
    fn test_deconstruct_error() {
        let e = Repr::Error { code: ErrorCode::OptionRefused, message: b"no thanks" };
        assert_eq!(Repr::parse(&ERROR_BYTES).unwrap(), e);
    }

    #[test]
    fn test_construct_error() {
        assert_emits(&Repr::Error { code: ErrorCode::OptionRefused, message: b"no thanks" }, &ERROR_BYTES);
    }

    #[test]
    fn test_deconstruct_oack() {
        let o = Repr::Oack { options: vec![(b"tsize", b"42"), (b"blksize", b"8")] };
        assert_eq!(Repr::parse(&OACK_BYTES).unwrap(), o);
    }

    #[test]
    fn test_construct_oack() {
        assert_emits(&Repr::Oack { options: vec![(b"tsize", b"42"), (b"blksize", b"8")] }, &OACK_BYTES);
    }

    #[test]
    fn error_codes_round_trip() {
        for n in 0..=9u16 {
            assert_eq!(u16::from(ErrorCode::from(n)), n);
        }
        assert_eq!(ErrorCode::from(9), ErrorCode::Unknown(9));
    }

    #[test]
    fn lenient_where_the_intent_is_plain() {
        // An ACK padded with bytes, an ERROR without its NUL, an option without a value.
        assert_eq!(Repr::parse(&[0, 4, 0, 7, 0, 0]).unwrap(), Repr::Ack { block: 7 });
        assert_eq!(
            Repr::parse(&[0, 5, 0, 8, b'x']).unwrap(),
            Repr::Error { code: ErrorCode::OptionRefused, message: b"x" }
        );
        let b = [0, 1, b'f', 0, b'o', b'c', b't', b'e', b't', 0, b't', b's', b'i', b'z', b'e', 0];
        let Repr::Rrq(r) = Repr::parse(&b).unwrap() else { panic!() };
        assert!(r.options.is_empty());
    }

    #[test]
    fn strict_where_a_guess_would_be_wrong() {
        assert_eq!(Repr::parse(&[]), Err(ParseError::Truncated { len: 0 }));
        assert_eq!(Repr::parse(&[0]), Err(ParseError::Truncated { len: 1 }));
        assert_eq!(Repr::parse(&[0, 4, 1]), Err(ParseError::Truncated { len: 3 }));
        assert_eq!(Repr::parse(&[0, 3]), Err(ParseError::Truncated { len: 2 }));
        assert_eq!(Repr::parse(&[0, 7, 0, 0]), Err(ParseError::UnknownOpcode(7)));
        assert_eq!(Repr::parse(&[1, 1, 0, 0]), Err(ParseError::UnknownOpcode(0x0101)));
        assert_eq!(Repr::parse(&[0, 1, b'f']), Err(ParseError::Unterminated("filename")));
        assert_eq!(Repr::parse(&[0, 1, b'f', 0, b'o']), Err(ParseError::Unterminated("mode")));
    }

    #[test]
    fn options_are_capped() {
        let mut b = vec![0, 1, b'f', 0, b'o', b'c', b't', b'e', b't', 0];
        for _ in 0..100 {
            b.extend_from_slice(b"x\x001\x00");
        }
        let Repr::Rrq(r) = Repr::parse(&b).unwrap() else { panic!() };
        assert_eq!(r.options.len(), MAX_OPTIONS);
    }

    #[test]
    fn emit_refuses_a_short_buffer() {
        let mut buf = [0u8; 3];
        assert_eq!(Repr::Ack { block: 1 }.emit(&mut buf), Err(EmitError { needed: 4, available: 3 }));
    }

    /// The parser's fuzz target, run deterministically: random datagrams and
    /// mutations of valid ones never panic, and whatever parses re-emits to
    /// something that parses to the same value.
    #[test]
    fn parse_never_panics_on_random_or_mutated_input() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let valid: [&[u8]; 5] = [&RRQ_BYTES, &DATA_BYTES, &ACK_BYTES, &ERROR_BYTES, &OACK_BYTES];
        for i in 0..200_000 {
            let mut b: Vec<u8> = if i % 2 == 0 {
                (0..rand() % 64).map(|_| rand() as u8).collect()
            } else {
                valid[(rand() % 5) as usize].to_vec()
            };
            for _ in 0..rand() % 4 {
                if b.is_empty() {
                    break;
                }
                let at = (rand() as usize) % b.len();
                match rand() % 3 {
                    0 => b[at] = rand() as u8,
                    1 => b.truncate(at),
                    _ => b.insert(at, [0u8, 1, 6][(rand() % 3) as usize]),
                }
            }
            if let Ok(r) = Repr::parse(&b) {
                let mut out = vec![0u8; r.buffer_len()];
                let n = r.emit(&mut out).unwrap();
                assert_eq!(Repr::parse(&out[..n]).unwrap(), r, "{b:?}");
            }
        }
    }
}
