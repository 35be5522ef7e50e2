//! The query path, transport-independent: bytes and the client's address in,
//! bytes out. Local answers and cache hits are computed synchronously
//! ([`Step::Reply`]); anything that needs an upstream comes back as
//! [`Step::Forward`] for the caller to finish on a task.
//!
//! Protocol hygiene (RFC 1035, 6891, 8906): every well-formed query gets an
//! answer (unknown types get NODATA/NXDOMAIN, unknown opcodes NOTIMP, EDNS
//! versions above 0 BADVERS); malformed queries get FORMERR when the header
//! can be read and are dropped otherwise; responses are never answered.
//!
//! Answers are encoded with the question lower-cased (names compress
//! against it whatever case the client used) and the question then put back
//! as asked: everything after the question depends only on the lower-cased
//! question, which is what lets the XDP cache answer every case variant
//! with one entry. Forwarded records are stored with their TTLs as received
//! and lowered by patching the encoded TTL fields, as the XDP cache does.

use std::{
    net::IpAddr,
    sync::{
        Arc, OnceLock, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{DNSClass, Name, RData, Record, RecordType},
};
use ipnet::IpNet;

use super::{
    answers::{AnswerCache, Parsed},
    cache::{Cache, Entry, Key, now_ns},
    forward::{EDNS_PAYLOAD, Forwarder},
    rrl::{Limit, RateLimiter},
    stats::Stats,
    wire,
    xdp::{self, Epoch, XKey, XdpCache},
    xfr,
    zone::{Answer as LocalAnswer, Catalog},
};

/// How the query arrived (UDP answers are size-limited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What [`Resolver::serve`] did with a query.
#[derive(Debug)]
pub enum Served {
    /// The answer is in the caller's buffer.
    Replied,
    /// Send nothing.
    Dropped,
    /// Ask upstream, then finish with [`Resolver::finish`].
    Forward(Box<Pending>),
    /// A zone transfer (TCP): run it on a task, send what it returns.
    Transfer(Box<super::xfr::Job>),
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
    /// The catalog the local part came from (its epochs go with the answer
    /// into the XDP cache).
    catalog: Arc<Catalog>,
    xkey: Option<XKey>,
    /// Its admission to the forwarder (bounded by `dns.forward_max`).
    ticket: super::forward::Ticket,
}

/// An answer's records and flags.
struct Content {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Content {
    fn empty(rcode: ResponseCode) -> Self {
        Content { rcode, authoritative: false, answers: vec![], authorities: vec![], additionals: vec![] }
    }

    fn local(l: LocalAnswer) -> Self {
        Content {
            rcode: l.rcode,
            authoritative: l.authoritative,
            answers: l.answers,
            authorities: l.authorities,
            additionals: l.additionals,
        }
    }
}

/// Where an answer's data came from: what ages and what it depends on.
struct Source<'a> {
    /// The data epochs it depends on (`None`: not for the XDP cache).
    epochs: Option<Vec<Epoch>>,
    /// Records from this index on (answer, authority, additional order)
    /// came from `upstream`; the ones before are local data.
    local: usize,
    upstream: Option<&'a Entry>,
    /// The answer is the one for queries with RD set (a chain followed
    /// upstream): cached for those only.
    rd_only: bool,
}

/// A question that passed the checks, on its way to an answer.
struct Ask {
    request: Message,
    transport: Transport,
    qname: Name,
    qtype: RecordType,
    dnssec_ok: bool,
    catalog: Arc<Catalog>,
    xkey: Option<XKey>,
    now: u64,
}

pub struct Resolver {
    catalog: RwLock<Arc<Catalog>>,
    /// Moves on with every catalog swap (after it): answers kept from an
    /// older catalog are not used ([`AnswerCache`]).
    generation: AtomicU64,
    forwarder: RwLock<Arc<Forwarder>>,
    pub cache: Cache,
    pub stats: Arc<Stats>,
    /// Clients allowed to ask: the segments' networks.
    clients: Vec<IpNet>,
    /// The XDP answer cache, when the dataplane has one.
    xdp: OnceLock<Arc<XdpCache>>,
    /// Response rate limiting of UDP answers (and its settings for the XDP
    /// cache), `[dns.rate_limit]`.
    rrl: RwLock<Arc<RateLimiter>>,
    rrl_config: RwLock<crate::config::RateLimit>,
    /// Zone transfers and TSIG (`[[dns.secondary]]`); none: AXFR/IXFR refused.
    xfr: RwLock<Option<Arc<super::xfr::Xfr>>>,
}

impl Resolver {
    pub fn new(catalog: Catalog, forwarder: Forwarder, cache: Cache, stats: Arc<Stats>, clients: Vec<IpNet>) -> Self {
        Resolver {
            catalog: RwLock::new(Arc::new(catalog)),
            generation: AtomicU64::new(1),
            forwarder: RwLock::new(Arc::new(forwarder)),
            cache,
            stats,
            clients,
            xdp: OnceLock::new(),
            rrl: RwLock::new(Arc::new(RateLimiter::off())),
            rrl_config: RwLock::new(crate::config::RateLimit::default()),
            xfr: RwLock::new(None),
        }
    }

    /// Applies `[dns.rate_limit]` (to the XDP cache too, when there is one).
    pub fn set_rate_limit(&self, c: &crate::config::RateLimit) {
        *self.rrl.write().expect("rrl lock") = Arc::new(RateLimiter::new(c));
        *self.rrl_config.write().expect("rrl lock") = c.clone();
        if let Some(x) = self.xdp() {
            x.set_rate_limit(c);
        }
    }

    /// The rate limiter in force.
    pub fn rate_limiter(&self) -> Arc<RateLimiter> {
        self.rrl.read().expect("rrl lock").clone()
    }

    /// Whether the UDP answer in `out` to `client` goes out (`rrl` being
    /// [`Resolver::rate_limiter`]): over the rate it is dropped (false) or,
    /// every slip-th, truncated in place. Counted.
    pub fn limit(&self, rrl: &RateLimiter, client: IpAddr, out: &mut Vec<u8>) -> bool {
        if !rrl.enabled() {
            return true;
        }
        match rrl.check(client, now_ns()) {
            Limit::Send => true,
            Limit::Slip => {
                wire::truncate(out);
                self.stats.inc(&self.stats.rate_limit_slipped);
                true
            }
            Limit::Drop => {
                self.stats.inc(&self.stats.rate_limited);
                false
            }
        }
    }

    /// Fills the XDP answer cache with this resolver's answers from now on.
    pub fn set_xdp(&self, x: Arc<XdpCache>) {
        x.set_rate_limit(&self.rrl_config.read().expect("rrl lock"));
        let _ = self.xdp.set(x);
    }

    pub fn xdp(&self) -> Option<&Arc<XdpCache>> {
        self.xdp.get()
    }

    /// A resolver for `cfg`'s zones with no upstreams and no sockets (for
    /// tests and fuzzing); clients on the segments are allowed.
    pub fn offline(cfg: &crate::config::Config) -> Result<Self, Vec<super::build::BuildError>> {
        let catalog = super::build::build(cfg, 1)?;
        let stats = Arc::new(Stats::default());
        let limits =
            super::forward::Limits { timeout: std::time::Duration::from_millis(10), forward_max: 16, sockets: 1 };
        let fwd = Forwarder::new(vec![], vec![], limits, stats.clone());
        let clients = cfg.segments.iter().map(|s| IpNet::V4(s.cidr.trunc())).collect();
        Ok(Resolver::new(catalog, fwd, Cache::new(1000, 1 << 22, 3600, 600), stats, clients))
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
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Answers `bytes` from `client` into `out`: from the answers `kept`
    /// for this catalog when it has the question's (no lookup, nothing
    /// allocated), else by [`Resolver::handle`], keeping what it answers
    /// from local data alone. Over UDP with the XDP answer cache on, the
    /// agent sees the program's misses: an answer the program takes is
    /// computed again (which refills it), only those it cannot hold are
    /// copied from the kept ones.
    pub fn serve(
        &self,
        bytes: &[u8],
        client: IpAddr,
        transport: Transport,
        kept: &mut AnswerCache,
        out: &mut Vec<u8>,
    ) -> Served {
        if super::xfr::wants(bytes)
            && self.allowed(client)
            && let Some(x) = self.xfr()
        {
            let put = |out: &mut Vec<u8>, b: Vec<u8>| {
                out.clear();
                out.extend_from_slice(&b);
                Served::Replied
            };
            return match x.serve(self.catalog(), &self.stats, bytes, client, transport == Transport::Udp) {
                xfr::Outcome::Reply(b) => put(out, b),
                xfr::Outcome::Transfer(job) => Served::Transfer(job),
                xfr::Outcome::Ordinary(q) => match self.handle(&q.message, client, transport) {
                    Step::Reply(b) => put(out, q.sign(Some(b))),
                    Step::Drop => Served::Dropped,
                    Step::Forward(_) => put(out, q.sign(None)),
                },
            };
        }
        let udp = transport == Transport::Udp;
        let xdp_on = udp && self.xdp().is_some_and(|x| x.enabled());
        let parsed = Parsed::of(bytes);
        // Before the catalog is read (see `generation`).
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(p) = &parsed
            && self.allowed(client)
            && kept.answer(generation, bytes, p, udp, xdp_on, out).is_some()
        {
            return Served::Replied;
        }
        match self.handle_at(bytes, client, transport) {
            (Step::Reply(b), reusable) => {
                // Not a truncated answer (the whole one may suit others).
                if let (Some(p), Some(filled)) = (&parsed, reusable)
                    && b.get(2).is_some_and(|f| f & 0x02 == 0)
                {
                    kept.keep(generation, p, &b, xdp_on && !filled);
                }
                out.clear();
                out.extend_from_slice(&b);
                Served::Replied
            }
            (Step::Drop, _) => Served::Dropped,
            (Step::Forward(p), _) => Served::Forward(p),
        }
    }

    pub fn xfr(&self) -> Option<Arc<super::xfr::Xfr>> {
        self.xfr.read().expect("xfr lock").clone()
    }

    pub fn set_xfr(&self, x: Option<super::xfr::Xfr>) {
        *self.xfr.write().expect("xfr lock") = x.map(Arc::new);
    }

    pub(super) fn allowed(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.clients.iter().any(|n| n.contains(&ip))
    }

    pub fn handle(&self, bytes: &[u8], client: IpAddr, transport: Transport) -> Step {
        self.handle_at(bytes, client, transport).0
    }

    /// [`Resolver::handle`], and, when the reply came from local data alone
    /// (another query with the same key gets the same answer), whether it
    /// went into the XDP cache.
    fn handle_at(&self, bytes: &[u8], client: IpAddr, transport: Transport) -> (Step, Option<bool>) {
        let mut reusable = None;
        let step = self.handle_inner(bytes, client, transport, &mut reusable);
        (step, reusable)
    }

    fn handle_inner(&self, bytes: &[u8], client: IpAddr, transport: Transport, reusable: &mut Option<bool>) -> Step {
        let s = &self.stats;
        s.inc(match transport {
            Transport::Udp => &s.queries_udp,
            Transport::Tcp => &s.queries_tcp,
        });
        let request = match self.admit(bytes, client, transport) {
            Ok(r) => r,
            Err(step) => return step,
        };
        let q = &request.queries[0];
        let (qname, qtype) = (q.name().clone(), q.query_type());
        // The XDP cache's key, when this answer may go into it.
        let xkey = match (transport, self.xdp()) {
            (Transport::Udp, Some(x)) if x.enabled() => xdp::key_of(bytes),
            _ => None,
        };
        let dnssec_ok = request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let ask = Ask { request, transport, qname, qtype, dnssec_ok, catalog: self.catalog(), xkey, now: now_ns() };
        match ask.catalog.lookup(&ask.qname, ask.qtype) {
            Some(local) => self.answer_local(ask, local, reusable),
            None => self.answer_forwarded(ask),
        }
    }

    /// The checks before a question is looked up: a response or a short
    /// header is dropped; unreadable, unsupported or not allowed questions
    /// are answered with their rcode.
    fn admit(&self, bytes: &[u8], client: IpAddr, transport: Transport) -> Result<Message, Step> {
        let s = &self.stats;
        // A header is 12 bytes; a message with QR set is a response and is
        // never answered (no reflection loops).
        if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
            s.inc(&s.dropped_malformed);
            return Err(Step::Drop);
        }
        let request = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(_) => return Err(Step::Reply(self.header_only(bytes, ResponseCode::FormErr))),
        };
        let refused = |rcode| Err(Step::Reply(self.reply(&request, transport, Content::empty(rcode), None, None)));
        if request.metadata.op_code != OpCode::Query {
            return refused(ResponseCode::NotImp);
        }
        if request.queries.len() != 1 {
            return refused(ResponseCode::FormErr);
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            // RFC 6891 §6.1.3.
            return refused(ResponseCode::BADVERS);
        }
        if !self.allowed(client) {
            return refused(ResponseCode::Refused);
        }
        let q = &request.queries[0];
        if q.query_class() != DNSClass::IN {
            return refused(ResponseCode::Refused);
        }
        match q.query_type() {
            // Zone transfers are not offered here (RFC 5936 §2.2.1: refuse).
            RecordType::AXFR | RecordType::IXFR => refused(ResponseCode::Refused),
            // Meta-types that cannot be asked for.
            RecordType::OPT | RecordType::TSIG => refused(ResponseCode::FormErr),
            _ => Ok(request),
        }
    }

    /// A question the local zones answer, alone or as the start of a CNAME
    /// chain that leaves them (the rest from the cache or upstream).
    fn answer_local(&self, ask: Ask, local: LocalAnswer, reusable: &mut Option<bool>) -> Step {
        let s = &self.stats;
        s.inc(&s.authoritative);
        let Ask { request, transport, qtype, dnssec_ok, catalog, xkey, now, .. } = ask;
        let epochs = epochs_of(&catalog, &ask.qname, &local.answers);
        let Some(target) = local.external.clone() else {
            let src = Source { epochs, local: usize::MAX, upstream: None, rd_only: false };
            let (b, filled) = self.reply_filling(&request, transport, Content::local(local), Some(src), xkey.as_ref());
            *reusable = Some(filled);
            return Step::Reply(b);
        };
        if !request.metadata.recursion_desired {
            // The chain left the local zones and the client did not ask
            // for recursion: the local part is the answer, NOERROR, as an
            // authoritative server gives it (Knot, BIND). Not for the XDP
            // cache, whose entry for the question serves RD=1 queries.
            return Step::Reply(self.reply(&request, transport, Content::local(local), None, None));
        }
        // The chain left the local zones: the rest comes from upstream.
        if let Some(e) = self.cache.get(&Key::new(&target, qtype, dnssec_ok), now) {
            s.inc(&s.cache_hits);
            return Step::Reply(self.chain_reply(&request, transport, local, &e, epochs, xkey.as_ref()));
        }
        s.inc(&s.cache_misses);
        let Some(ticket) = self.forwarder().admit(&target, qtype, dnssec_ok) else {
            // Too much outstanding upstream: the local part, as when the
            // chase fails.
            s.inc(&s.upstream_overflow);
            return Step::Reply(self.reply(&request, transport, Content::local(local), None, None));
        };
        Step::Forward(Box::new(Pending {
            request,
            transport,
            local: Some(local),
            target,
            qtype,
            dnssec_ok,
            catalog,
            xkey,
            ticket,
        }))
    }

    /// A question outside the local zones: from the cache, else upstream.
    fn answer_forwarded(&self, ask: Ask) -> Step {
        let s = &self.stats;
        let Ask { request, transport, qname, qtype, dnssec_ok, catalog, xkey, now } = ask;
        if let Some(e) = self.cache.get(&Key::new(&qname, qtype, dnssec_ok), now) {
            s.inc(&s.cache_hits);
            let src = Source { epochs: Some(vec![(0, catalog.epoch)]), local: 0, upstream: Some(&e), rd_only: false };
            return Step::Reply(self.reply(&request, transport, upstream_content(&e), Some(src), xkey.as_ref()));
        }
        s.inc(&s.cache_misses);
        let Some(ticket) = self.forwarder().admit(&qname, qtype, dnssec_ok) else {
            s.inc(&s.upstream_overflow);
            return Step::Reply(self.reply(&request, transport, Content::empty(ResponseCode::ServFail), None, None));
        };
        Step::Forward(Box::new(Pending {
            request,
            transport,
            local: None,
            target: qname,
            qtype,
            dnssec_ok,
            catalog,
            xkey,
            ticket,
        }))
    }

    /// Completes a [`Step::Forward`].
    pub async fn finish(&self, p: Pending) -> Vec<u8> {
        let answer = p.ticket.answer(&p.target, p.qtype, p.dnssec_ok).await;
        match answer.as_ref() {
            Ok(m) => {
                let entry = Entry::new(
                    m.metadata.response_code,
                    m.answers.clone(),
                    m.authorities.clone(),
                    m.additionals.clone(),
                );
                // Answered as stored (TTLs capped), so that this answer and the
                // cache's later ones agree. Not cacheable: expired at once, so
                // not for the XDP cache either.
                let key = Key::new(&p.target, p.qtype, p.dnssec_ok);
                let now = now_ns();
                let stored = match self.cache.put(key.clone(), entry.clone(), now) {
                    Some(_) => self.cache.get(&key, now).unwrap_or(entry),
                    None => entry,
                };
                match p.local {
                    Some(local) => {
                        let qname = p.request.queries[0].name().clone();
                        let epochs = epochs_of(&p.catalog, &qname, &local.answers);
                        self.chain_reply(&p.request, p.transport, local, &stored, epochs, p.xkey.as_ref())
                    }
                    None => {
                        let src = Source {
                            epochs: Some(vec![(0, p.catalog.epoch)]),
                            local: 0,
                            upstream: Some(&stored),
                            rd_only: false,
                        };
                        self.reply(&p.request, p.transport, upstream_content(&stored), Some(src), p.xkey.as_ref())
                    }
                }
            }
            // Upstream failed. A chain that left the local zones is still
            // answered with its local part (NOERROR, as an authoritative
            // server answers it: the client may follow the target itself);
            // a forwarded name gets SERVFAIL. Neither is cached.
            Err(_) => match p.local {
                Some(local) => self.reply(&p.request, p.transport, Content::local(local), None, None),
                None => self.reply(&p.request, p.transport, Content::empty(ResponseCode::ServFail), None, None),
            },
        }
    }
}

mod reply;
#[cfg(test)]
mod tests;

use reply::{epochs_of, upstream_content};
