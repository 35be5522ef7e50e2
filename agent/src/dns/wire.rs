//! Reading the agent's own encoded answers (RFC 1035 §4.1): where each
//! record's TTL field is. Forwarded records age by patching these fields
//! after encoding, which is exactly what the XDP cache does to the same
//! bytes, so the two agree byte for byte.

/// A resource record's TTL field and type, by offset in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RrAt {
    pub ttl_at: usize,
    pub rtype: u16,
}

/// The OPT pseudo-record (RFC 6891): its "TTL" holds EDNS flags.
pub const TYPE_OPT: u16 = 41;

/// Offset after the name at `pos`: plain labels up to the root, or up to a
/// compression pointer.
fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let l = *msg.get(pos)?;
        match l & 0xc0 {
            0 if l == 0 => return Some(pos + 1),
            0 => pos += 1 + usize::from(l),
            0xc0 => return (pos + 2 <= msg.len()).then_some(pos + 2),
            _ => return None,
        }
    }
}

/// Where the question of a message with one question ends.
pub fn question_end(msg: &[u8]) -> Option<usize> {
    (be16(msg, 4)? == 1).then(|| skip_name(msg, 12)).flatten().map(|p| p + 4).filter(|&e| e <= msg.len())
}

/// Turns an answer into its truncated form (RFC 2181 §9; a rate limiter's
/// slip): header and question, TC set, no records.
pub fn truncate(msg: &mut Vec<u8>) {
    if msg.len() < 12 {
        return;
    }
    let end = question_end(msg).unwrap_or(12);
    if end == 12 {
        msg[4..6].fill(0);
    }
    msg.truncate(end);
    msg[2] |= 0x02;
    msg[6..12].fill(0);
}

fn be16(msg: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]))
}

/// Every record of `msg` (answer, authority, additional, in order), or
/// `None` when it does not parse to its end.
pub fn records(msg: &[u8]) -> Option<Vec<RrAt>> {
    let qd = usize::from(be16(msg, 4)?);
    let rrs = usize::from(be16(msg, 6)?) + usize::from(be16(msg, 8)?) + usize::from(be16(msg, 10)?);
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(msg, pos)? + 4;
    }
    let mut out = Vec::with_capacity(rrs);
    for _ in 0..rrs {
        pos = skip_name(msg, pos)?;
        let rtype = be16(msg, pos)?;
        let rdlen = usize::from(be16(msg, pos + 8)?);
        out.push(RrAt { ttl_at: pos + 4, rtype });
        pos += 10 + rdlen;
    }
    (pos == msg.len()).then_some(out)
}

/// Lowers the TTL at each offset by `secs` (not below 0).
pub fn age(msg: &mut [u8], ttl_at: &[usize], secs: u32) {
    if secs == 0 {
        return;
    }
    for &at in ttl_at {
        if let Some(f) = msg.get_mut(at..at + 4) {
            let ttl = u32::from_be_bytes([f[0], f[1], f[2], f[3]]).saturating_sub(secs);
            f.copy_from_slice(&ttl.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::{
        op::{Edns, Message, MessageType, OpCode, Query},
        rr::{Name, RData, Record, RecordType, rdata::A},
    };

    use super::*;

    #[test]
    fn finds_every_ttl_and_ages_them() {
        let name = Name::from_str("www.example.org.").unwrap();
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(name.clone(), RecordType::A));
        for (i, ttl) in [300u32, 5].into_iter().enumerate() {
            m.add_answer(Record::from_rdata(name.clone(), ttl, RData::A(A::new(192, 0, 2, i as u8))));
        }
        m.set_edns(Edns::new());
        let mut b = m.to_vec().unwrap();
        let rrs = records(&b).unwrap();
        assert_eq!(rrs.iter().map(|r| r.rtype).collect::<Vec<_>>(), [1, 1, TYPE_OPT]);
        let aging: Vec<usize> = rrs.iter().filter(|r| r.rtype != TYPE_OPT).map(|r| r.ttl_at).collect();
        age(&mut b, &aging, 10);
        let back = Message::from_vec(&b).unwrap();
        assert_eq!(back.answers.iter().map(|r| r.ttl).collect::<Vec<_>>(), [290, 0]);
        assert!(back.edns.is_some(), "the OPT is untouched");
        assert!(records(&b[..b.len() - 1]).is_none(), "a short message");
    }
}
