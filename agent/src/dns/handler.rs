//! The query path, transport-independent: bytes and the client's address in,
//! bytes out. Local answers and cache hits are computed synchronously
//! ([`Step::Reply`]); anything that needs an upstream comes back as
//! [`Step::Forward`] for the caller to finish on a task.
//!
//! Protocol hygiene (RFC 1035, 6891, 8906): every well-formed query gets an
//! answer (unknown types get NODATA/NXDOMAIN, unknown opcodes NOTIMP, EDNS
//! versions above 0 BADVERS); malformed queries get FORMERR when the header
//! can be read and are dropped otherwise; responses are never answered.

use std::{
    net::IpAddr,
    sync::{Arc, RwLock},
    time::Instant,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{DNSClass, Name, Record, RecordType},
};
use ipnet::IpNet;

use super::{
    cache::{Cache, Entry, Key},
    forward::{EDNS_PAYLOAD, Forwarder},
    stats::Stats,
    zone::{Answer as LocalAnswer, Catalog},
};

/// How the query arrived (UDP answers are size-limited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What to do with a query.
#[derive(Debug)]
pub enum Step {
    /// Send these bytes.
    Reply(Vec<u8>),
    /// Send nothing (malformed beyond answering, or not a query).
    Drop,
    /// Ask upstream, then finish with [`Resolver::finish`].
    Forward(Box<Pending>),
}

/// A query waiting for an upstream answer.
#[derive(Debug)]
pub struct Pending {
    request: Message,
    transport: Transport,
    /// The local part of a CNAME chain that left the local zones.
    local: Option<LocalAnswer>,
    target: Name,
    qtype: RecordType,
    dnssec_ok: bool,
}

pub struct Resolver {
    catalog: RwLock<Arc<Catalog>>,
    forwarder: RwLock<Arc<Forwarder>>,
    pub cache: Cache,
    pub stats: Arc<Stats>,
    /// Clients allowed to ask: the segments' networks.
    clients: Vec<IpNet>,
}

impl Resolver {
    pub fn new(catalog: Catalog, forwarder: Forwarder, cache: Cache, stats: Arc<Stats>, clients: Vec<IpNet>) -> Self {
        Resolver {
            catalog: RwLock::new(Arc::new(catalog)),
            forwarder: RwLock::new(Arc::new(forwarder)),
            cache,
            stats,
            clients,
        }
    }

    /// A resolver for `cfg`'s zones with no upstreams and no sockets (for
    /// tests and fuzzing); clients on the segments are allowed.
    pub fn offline(cfg: &crate::config::Config) -> Result<Self, Vec<super::build::BuildError>> {
        let catalog = super::build::build(cfg, 1)?;
        let stats = Arc::new(Stats::default());
        let fwd = Forwarder::new(vec![], vec![], std::time::Duration::from_millis(10), stats.clone());
        let clients = cfg.segments.iter().map(|s| IpNet::V4(s.cidr.trunc())).collect();
        Ok(Resolver::new(catalog, fwd, Cache::new(1000, 3600, 600), stats, clients))
    }

    pub fn forwarder(&self) -> Arc<Forwarder> {
        self.forwarder.read().expect("forwarder lock").clone()
    }

    /// Replaces the upstream configuration; queries in flight finish with the old one.
    pub fn set_forwarder(&self, f: Forwarder) {
        *self.forwarder.write().expect("forwarder lock") = Arc::new(f);
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().expect("catalog lock").clone()
    }

    /// Replaces the zone data; queries after this returns see only the new data.
    pub fn set_catalog(&self, c: Catalog) {
        *self.catalog.write().expect("catalog lock") = Arc::new(c);
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.clients.iter().any(|n| n.contains(&ip))
    }

    pub fn handle(&self, bytes: &[u8], client: IpAddr, transport: Transport) -> Step {
        let s = &self.stats;
        s.inc(match transport {
            Transport::Udp => &s.queries_udp,
            Transport::Tcp => &s.queries_tcp,
        });
        // A header is 12 bytes; a message with QR set is a response and is
        // never answered (no reflection loops).
        if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
            s.inc(&s.dropped_malformed);
            return Step::Drop;
        }
        let request = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(_) => return Step::Reply(self.header_only(bytes, ResponseCode::FormErr)),
        };
        let opcode = request.metadata.op_code;
        if opcode != OpCode::Query {
            return Step::Reply(self.reply(&request, transport, ResponseCode::NotImp, false, vec![], vec![], vec![]));
        }
        if request.queries.len() != 1 {
            return Step::Reply(self.reply(&request, transport, ResponseCode::FormErr, false, vec![], vec![], vec![]));
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            // RFC 6891 §6.1.3.
            return Step::Reply(self.reply(&request, transport, ResponseCode::BADVERS, false, vec![], vec![], vec![]));
        }
        if !self.allowed(client) {
            return Step::Reply(self.reply(&request, transport, ResponseCode::Refused, false, vec![], vec![], vec![]));
        }
        let q = &request.queries[0];
        let (qname, qtype) = (q.name().clone(), q.query_type());
        if q.query_class() != DNSClass::IN {
            return Step::Reply(self.reply(&request, transport, ResponseCode::Refused, false, vec![], vec![], vec![]));
        }
        match qtype {
            // Zone transfers are not offered (RFC 5936 §2.2.1: refuse).
            RecordType::AXFR | RecordType::IXFR => {
                return Step::Reply(self.reply(
                    &request,
                    transport,
                    ResponseCode::Refused,
                    false,
                    vec![],
                    vec![],
                    vec![],
                ));
            }
            // Meta-types that cannot be asked for.
            RecordType::OPT | RecordType::TSIG => {
                return Step::Reply(self.reply(
                    &request,
                    transport,
                    ResponseCode::FormErr,
                    false,
                    vec![],
                    vec![],
                    vec![],
                ));
            }
            _ => {}
        }
        let dnssec_ok = request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let catalog = self.catalog();
        if let Some(local) = catalog.lookup(&qname, qtype) {
            s.inc(&s.authoritative);
            let Some(target) = local.external.clone() else {
                return Step::Reply(self.reply(
                    &request,
                    transport,
                    local.rcode,
                    local.authoritative,
                    local.answers,
                    local.authorities,
                    local.additionals,
                ));
            };
            // The chain left the local zones: the rest comes from upstream.
            if let Some(e) = self.cache.get(&Key::new(&target, qtype, dnssec_ok), Instant::now()) {
                s.inc(&s.cache_hits);
                return Step::Reply(self.chain_reply(&request, transport, local, &e));
            }
            s.inc(&s.cache_misses);
            return Step::Forward(Box::new(Pending {
                request,
                transport,
                local: Some(local),
                target,
                qtype,
                dnssec_ok,
            }));
        }
        if let Some(e) = self.cache.get(&Key::new(&qname, qtype, dnssec_ok), Instant::now()) {
            s.inc(&s.cache_hits);
            return Step::Reply(self.reply(
                &request,
                transport,
                e.rcode,
                false,
                e.answers,
                e.authorities,
                e.additionals,
            ));
        }
        s.inc(&s.cache_misses);
        Step::Forward(Box::new(Pending { request, transport, local: None, target: qname, qtype, dnssec_ok }))
    }

    /// Completes a [`Step::Forward`].
    pub async fn finish(&self, p: Pending) -> Vec<u8> {
        let answer = self.forwarder().resolve(&p.target, p.qtype, p.dnssec_ok).await;
        match answer.as_ref() {
            Ok(m) => {
                let entry = Entry::new(
                    m.metadata.response_code,
                    m.answers.clone(),
                    m.authorities.clone(),
                    m.additionals.clone(),
                );
                self.cache.put(Key::new(&p.target, p.qtype, p.dnssec_ok), entry.clone(), Instant::now());
                match p.local {
                    Some(local) => self.chain_reply(&p.request, p.transport, local, &entry),
                    None => self.reply(
                        &p.request,
                        p.transport,
                        entry.rcode,
                        false,
                        entry.answers,
                        entry.authorities,
                        entry.additionals,
                    ),
                }
            }
            Err(_) => {
                let (answers, aa) = p.local.map(|l| (l.answers, l.authoritative)).unwrap_or_default();
                self.reply(&p.request, p.transport, ResponseCode::ServFail, aa, answers, vec![], vec![])
            }
        }
    }

    /// The local part of a chain followed by the upstream's answer for its target.
    fn chain_reply(&self, req: &Message, t: Transport, local: LocalAnswer, up: &Entry) -> Vec<u8> {
        let mut answers = local.answers;
        answers.extend(up.answers.iter().cloned());
        self.reply(req, t, up.rcode, local.authoritative, answers, up.authorities.clone(), up.additionals.clone())
    }

    /// Builds a response to `req`: the question echoed as received, RD and CD
    /// copied, RA set (coresvc recurses for clients), EDNS answered with our
    /// payload size, truncated to the client's UDP limit.
    #[allow(clippy::too_many_arguments)]
    fn reply(
        &self,
        req: &Message,
        transport: Transport,
        rcode: ResponseCode,
        authoritative: bool,
        answers: Vec<Record>,
        authorities: Vec<Record>,
        additionals: Vec<Record>,
    ) -> Vec<u8> {
        let mut m = Message::response(req.metadata.id, req.metadata.op_code);
        m.metadata.message_type = MessageType::Response;
        m.metadata.authoritative = authoritative;
        m.metadata.recursion_desired = req.metadata.recursion_desired;
        m.metadata.recursion_available = true;
        m.metadata.checking_disabled = req.metadata.checking_disabled;
        m.metadata.response_code = rcode;
        m.queries = req.queries.clone();
        m.answers = answers;
        m.authorities = authorities;
        m.additionals = additionals;
        let limit = match (&req.edns, transport) {
            (_, Transport::Tcp) => usize::from(u16::MAX),
            (Some(e), Transport::Udp) => usize::from(e.max_payload().clamp(512, EDNS_PAYLOAD)),
            (None, Transport::Udp) => 512,
        };
        if let Some(e) = &req.edns {
            let mut ours = Edns::new();
            ours.set_max_payload(EDNS_PAYLOAD);
            ours.set_dnssec_ok(e.flags().dnssec_ok);
            m.set_edns(ours);
        }
        self.account(rcode);
        let bytes = match m.to_vec() {
            Ok(b) => b,
            Err(_) => {
                self.stats.inc(&self.stats.servfail);
                return self.header_only_for(req, ResponseCode::ServFail);
            }
        };
        if bytes.len() <= limit {
            return bytes;
        }
        // Too big for UDP: header, question and OPT with TC set (RFC 2181 §9);
        // the client retries over TCP.
        self.stats.inc(&self.stats.truncated);
        m.truncate().to_vec().unwrap_or_else(|_| self.header_only_for(req, ResponseCode::ServFail))
    }

    fn account(&self, rcode: ResponseCode) {
        let s = &self.stats;
        s.inc(match rcode {
            ResponseCode::NoError => &s.noerror,
            ResponseCode::NXDomain => &s.nxdomain,
            ResponseCode::Refused => &s.refused,
            ResponseCode::FormErr => &s.formerr,
            ResponseCode::NotImp => &s.notimp,
            _ => &s.servfail,
        });
    }

    /// A bare header answering `bytes` (whose question could not be parsed).
    fn header_only(&self, bytes: &[u8], rcode: ResponseCode) -> Vec<u8> {
        self.account(rcode);
        let mut h = vec![0u8; 12];
        h[0] = bytes[0];
        h[1] = bytes[1];
        // QR, the opcode and RD from the query; RA; the rcode.
        h[2] = 0x80 | (bytes[2] & 0x79);
        h[3] = 0x80 | (rcode.low() & 0x0f);
        h
    }

    fn header_only_for(&self, req: &Message, rcode: ResponseCode) -> Vec<u8> {
        let mut m = Message::response(req.metadata.id, req.metadata.op_code);
        m.metadata.response_code = rcode;
        m.metadata.recursion_desired = req.metadata.recursion_desired;
        m.to_vec().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::Query,
        rr::{RData, rdata::TXT},
    };
    use rand::{Rng as _, SeedableRng as _};

    use super::*;

    fn resolver_with(extra: &str) -> Resolver {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/coresvc.toml");
        let text = std::fs::read_to_string(&p).unwrap() + extra;
        let cfg = crate::config::Config::parse_str_in(&text, "test.toml", p.parent().unwrap())
            .unwrap_or_else(|e| panic!("{e}"));
        Resolver::offline(&cfg).unwrap()
    }

    fn resolver() -> Resolver {
        resolver_with("")
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 20, 0, 50));

    fn query(name: &str, t: RecordType, edns: Option<u16>) -> Message {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        // from_ascii keeps the case (from_str would lower-case it).
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if let Some(p) = edns {
            let mut e = Edns::new();
            e.set_max_payload(p);
            m.set_edns(e);
        }
        m
    }

    fn ask(r: &Resolver, m: &Message, t: Transport) -> Message {
        match r.handle(&m.to_vec().unwrap(), CLIENT, t) {
            Step::Reply(b) => Message::from_vec(&b).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn answers_echo_id_question_case_and_flags() {
        let r = resolver();
        let m = query("ArtiFacts.DVNTM.deevnet.net.", RecordType::A, None);
        let a = ask(&r, &m, Transport::Udp);
        assert_eq!(a.metadata.id, 0x1234);
        assert_eq!(a.metadata.message_type, MessageType::Response);
        assert!(a.metadata.authoritative && a.metadata.recursion_desired && a.metadata.recursion_available);
        assert_eq!(a.queries[0].name().to_string(), "ArtiFacts.DVNTM.deevnet.net.", "question case as received");
        assert_eq!(a.answers.len(), 3, "the whole chain in one answer");
        assert!(a.edns.is_none(), "no OPT without one in the query");
    }

    #[test]
    fn edns_is_answered_with_our_payload_size() {
        let a = ask(&resolver(), &query("ns.mgmt.deevnet.net.", RecordType::A, Some(4096)), Transport::Udp);
        assert_eq!(a.edns.as_ref().unwrap().max_payload(), 1232);
        let mut q = query("ns.mgmt.deevnet.net.", RecordType::A, Some(1232));
        q.edns.as_mut().unwrap().set_version(1);
        let a = ask(&resolver(), &q, Transport::Udp);
        // 16 is BADVERS in an OPT answer (hickory decodes it as BADSIG, same number).
        assert_eq!(u16::from(a.metadata.response_code), 16);
    }

    #[test]
    fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
        let big: String = (0..40)
            .map(|i| {
                format!("[[zone.record]]\nname = \"big\"\ntype = \"TXT\"\ndata = '\"{i:02}{}\"'\n", "x".repeat(60))
            })
            .collect();
        let r = resolver_with(&big);
        let q = query("big.dvntm.deevnet.net.", RecordType::TXT, None);
        let a = ask(&r, &q, Transport::Udp);
        assert!(a.metadata.truncation && a.answers.is_empty() && a.queries.len() == 1);
        let a = ask(&r, &query("big.dvntm.deevnet.net.", RecordType::TXT, Some(1232)), Transport::Udp);
        assert!(a.metadata.truncation, "more than 1232 bytes");
        assert!(a.edns.is_some(), "OPT kept when truncated");
        let a = ask(&r, &q, Transport::Tcp);
        assert!(!a.metadata.truncation);
        assert_eq!(a.answers.len(), 40);
        assert!(a.answers.iter().all(|r| matches!(r.data, RData::TXT(TXT { .. }))));
    }

    #[test]
    fn clients_outside_the_segments_are_refused() {
        let r = resolver();
        let b = query("ns.mgmt.deevnet.net.", RecordType::A, None).to_vec().unwrap();
        let Step::Reply(b) = r.handle(&b, "192.0.2.1".parse().unwrap(), Transport::Udp) else { panic!() };
        assert_eq!(Message::from_vec(&b).unwrap().metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn protocol_errors() {
        let r = resolver();
        // Responses are never answered.
        let mut m = query("ns.mgmt.deevnet.net.", RecordType::A, None);
        m.metadata.message_type = MessageType::Response;
        assert!(matches!(r.handle(&m.to_vec().unwrap(), CLIENT, Transport::Udp), Step::Drop));
        // Too short for a header.
        assert!(matches!(r.handle(&[1, 2, 3], CLIENT, Transport::Udp), Step::Drop));
        // A header and garbage: FORMERR with the ID.
        let Step::Reply(b) = r.handle(&[0xab, 0xcd, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff], CLIENT, Transport::Udp)
        else {
            panic!()
        };
        assert_eq!(&b[..2], &[0xab, 0xcd]);
        assert_eq!(b[3] & 0x0f, 1, "FORMERR");
        assert_eq!(b[2] & 0x81, 0x81, "QR and RD");
        // Other opcodes: NOTIMP.
        let mut m = query("ns.mgmt.deevnet.net.", RecordType::A, None);
        m.metadata.op_code = OpCode::Status;
        assert_eq!(ask(&r, &m, Transport::Udp).metadata.response_code, ResponseCode::NotImp);
        // Two questions: FORMERR.
        let mut m = query("ns.mgmt.deevnet.net.", RecordType::A, None);
        m.add_query(Query::query(Name::from_ascii("x.").unwrap(), RecordType::A));
        assert_eq!(ask(&r, &m, Transport::Udp).metadata.response_code, ResponseCode::FormErr);
        // Zone transfers: REFUSED.
        let m = query("mgmt.deevnet.net.", RecordType::AXFR, None);
        assert_eq!(ask(&r, &m, Transport::Tcp).metadata.response_code, ResponseCode::Refused);
        // Unknown types get NODATA, not silence (RFC 8906).
        let m = query("ns.mgmt.deevnet.net.", RecordType::Unknown(65280), None);
        let a = ask(&r, &m, Transport::Udp);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert!(a.answers.is_empty() && a.authorities.len() == 1);
    }

    #[test]
    fn names_outside_the_zones_go_upstream() {
        let r = resolver();
        let b = query("www.example.org.", RecordType::A, None).to_vec().unwrap();
        assert!(matches!(r.handle(&b, CLIENT, Transport::Udp), Step::Forward(_)));
    }

    /// Random and mutated queries through the real query path: nothing
    /// panics, and every reply parses or is a bare header.
    #[test]
    fn fuzz_smoke() {
        let r = resolver();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let seeds: Vec<Vec<u8>> = [
            query("artifacts.dvntm.deevnet.net.", RecordType::A, Some(1232)),
            query("10.0.10.10.in-addr.arpa.", RecordType::PTR, None),
            query("_http._tcp.dvntm.deevnet.net.", RecordType::SRV, None),
        ]
        .iter()
        .map(|m| m.to_vec().unwrap())
        .collect();
        for i in 0..20_000 {
            let mut b = if i % 4 == 0 {
                let len = rng.random_range(0..80);
                (0..len).map(|_| rng.random()).collect()
            } else {
                seeds[i % seeds.len()].clone()
            };
            for _ in 0..rng.random_range(1..6) {
                if b.is_empty() {
                    break;
                }
                let at = rng.random_range(0..b.len());
                match rng.random_range(0..3) {
                    0 => b[at] = rng.random(),
                    1 => b.truncate(at),
                    _ => b.insert(at, rng.random()),
                }
            }
            if let Step::Reply(out) = r.handle(&b, CLIENT, Transport::Udp) {
                assert!(out.len() >= 12);
                assert!(out.len() <= 1232);
            }
        }
    }
}
