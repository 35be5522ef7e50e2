//! Answers to local questions kept encoded, for the agent's own hot path:
//! a packet cache in the manner of PowerDNS's. The query path
//! ([`super::handler::Resolver::serve`]) computes an answer from the zones
//! once; later queries for the same question (the key of the XDP answer
//! cache: `coresvc_common::dns::parse_query`, the same parser the program
//! runs) are answered by copying: the query's ID, RD and CD, its question as
//! received, then the kept flags, counts and sections. That is the XDP
//! cache's reasoning, with the same proof: everything after the question
//! depends only on the key (`handler`'s tests check it), so the copy equals
//! the answer the zones would give, byte for byte.
//!
//! Only answers from local data that need no upstream are kept, and only
//! for the catalog they were computed from: the resolver's generation moves
//! on with every catalog swap, and a cache that sees a new generation
//! starts empty. Each UDP worker and each TCP connection has a cache of its
//! own (no lock, no shared cache line on the hit path), bounded in entries
//! (full: it starts over), and counts what it answered locally until the
//! caller adds it to the shared counters ([`AnswerCache::flush`]).

use std::collections::HashMap;

use coresvc_common::dns as cdns;
use coresvc_maps_schema::DnsKey;

use super::stats::Stats;

/// A kept answer: what follows the question, and the header bytes that do
/// not come from the query.
struct Kept {
    question: DnsKey,
    /// Header bytes 2 and 3 without RD and CD.
    flags: [u8; 2],
    /// ANCOUNT, NSCOUNT, ARCOUNT.
    counts: [u8; 6],
    sections: Box<[u8]>,
    /// Computed with the XDP cache on, which could not take it: the
    /// agent's to give (else the program's, which the agent refills).
    beyond_xdp: bool,
}

/// The parts of a query the cache answers by: its key, and where its
/// question ends.
pub struct Parsed {
    key: DnsKey,
    hash: u64,
    question_end: usize,
    /// The UDP payload size the client offers (512 without EDNS).
    udp_limit: usize,
}

impl Parsed {
    /// `msg` as the cache (and the XDP program) reads it, or `None` for a
    /// query of another shape (the slow path answers those).
    pub fn of(msg: &[u8]) -> Option<Parsed> {
        let super::xdp::XKey { key, question_len } = super::xdp::key_of(msg)?;
        let question_end = cdns::HDR_LEN + question_len;
        // The OPT (the last record, checked by the parser): owner (the
        // root), type, then the class field holding the payload size.
        let udp_limit = match msg.get(question_end + 3..question_end + 5) {
            Some(p) if key.flags & cdns::KEY_F_EDNS != 0 => {
                usize::from(u16::from_be_bytes([p[0], p[1]])).clamp(512, usize::from(super::forward::EDNS_PAYLOAD))
            }
            _ => 512,
        };
        Some(Parsed { hash: key.hash(), key, question_end, udp_limit })
    }
}

/// What a cache answered since its last flush.
#[derive(Default)]
struct Counts {
    udp: u64,
    tcp: u64,
    noerror: u64,
    nxdomain: u64,
}

pub struct AnswerCache {
    map: HashMap<u64, Kept>,
    max: usize,
    generation: u64,
    counts: Counts,
}

impl AnswerCache {
    /// A cache of at most `max` answers.
    pub fn new(max: usize) -> Self {
        AnswerCache { map: HashMap::new(), max: max.max(1), generation: 0, counts: Counts::default() }
    }

    /// Forgets every answer when the catalog is not the one they came from.
    fn sync(&mut self, generation: u64) {
        if self.generation != generation {
            self.map.clear();
            self.generation = generation;
        }
    }

    /// Writes the answer to `msg` (parsed as `p`) into `out`, when kept for
    /// the catalog of `generation` and (over UDP) within the client's size;
    /// with the XDP cache on (`xdp_on`), only one the program could not
    /// take. Returns the answer's rcode.
    pub fn answer(
        &mut self,
        generation: u64,
        msg: &[u8],
        p: &Parsed,
        udp: bool,
        xdp_on: bool,
        out: &mut Vec<u8>,
    ) -> Option<u8> {
        self.sync(generation);
        let k = self.map.get(&p.hash).filter(|k| k.question == p.key && (!xdp_on || k.beyond_xdp))?;
        let len = p.question_end + k.sections.len();
        if udp && len > p.udp_limit {
            return None;
        }
        out.clear();
        out.reserve(len);
        out.extend_from_slice(&msg[..2]);
        out.push(k.flags[0] | (msg[2] & cdns::FLAG_RD));
        out.push(k.flags[1] | (msg[3] & cdns::FLAG_CD));
        out.extend_from_slice(&[0, 1]);
        out.extend_from_slice(&k.counts);
        out.extend_from_slice(&msg[cdns::HDR_LEN..p.question_end]);
        out.extend_from_slice(&k.sections);
        let rcode = k.flags[1] & 0x0f;
        let c = &mut self.counts;
        if udp {
            c.udp += 1
        } else {
            c.tcp += 1
        }
        if rcode == 3 {
            c.nxdomain += 1
        } else {
            c.noerror += 1
        }
        Some(rcode)
    }

    /// Keeps `reply`, the answer to a query parsed as `p` computed from the
    /// catalog of `generation` (`beyond_xdp`: with the XDP cache on, which
    /// did not take it).
    pub fn keep(&mut self, generation: u64, p: &Parsed, reply: &[u8], beyond_xdp: bool) {
        // NOERROR and NXDOMAIN (the answers of zone data; the counters
        // above know only these).
        if generation != self.generation || reply.len() < p.question_end || !matches!(reply[3] & 0x0f, 0 | 3) {
            return;
        }
        if self.map.len() >= self.max {
            self.map.clear();
        }
        let mut counts = [0; 6];
        counts.copy_from_slice(&reply[6..12]);
        self.map.insert(
            p.hash,
            Kept {
                question: p.key,
                flags: [reply[2] & !cdns::FLAG_RD, reply[3] & !cdns::FLAG_CD],
                counts,
                sections: reply[p.question_end..].into(),
                beyond_xdp,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Adds what was answered from here to the service's counters.
    pub fn flush(&mut self, s: &Stats) {
        let c = std::mem::take(&mut self.counts);
        let n = c.udp + c.tcp;
        if n == 0 {
            return;
        }
        let add = |a: &std::sync::atomic::AtomicU64, v: u64| {
            if v != 0 {
                a.fetch_add(v, std::sync::atomic::Ordering::Relaxed);
            }
        };
        add(&s.queries_udp, c.udp);
        add(&s.queries_tcp, c.tcp);
        add(&s.authoritative, n);
        add(&s.noerror, c.noerror);
        add(&s.nxdomain, c.nxdomain);
        add(&s.answered_kept, n);
    }
}
