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

    fn allowed(&self, ip: IpAddr) -> bool {
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
        let refuse = |rcode| Step::Reply(self.reply(&request, transport, Content::empty(rcode), None, None));
        let opcode = request.metadata.op_code;
        if opcode != OpCode::Query {
            return refuse(ResponseCode::NotImp);
        }
        if request.queries.len() != 1 {
            return refuse(ResponseCode::FormErr);
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            // RFC 6891 §6.1.3.
            return refuse(ResponseCode::BADVERS);
        }
        if !self.allowed(client) {
            return refuse(ResponseCode::Refused);
        }
        let q = &request.queries[0];
        let (qname, qtype) = (q.name().clone(), q.query_type());
        if q.query_class() != DNSClass::IN {
            return refuse(ResponseCode::Refused);
        }
        match qtype {
            // Zone transfers are not offered (RFC 5936 §2.2.1: refuse).
            RecordType::AXFR | RecordType::IXFR => return refuse(ResponseCode::Refused),
            // Meta-types that cannot be asked for.
            RecordType::OPT | RecordType::TSIG => return refuse(ResponseCode::FormErr),
            _ => {}
        }
        // The XDP cache's key, when this answer may go into it.
        let xkey = match (transport, self.xdp()) {
            (Transport::Udp, Some(x)) if x.enabled() => xdp::key_of(bytes),
            _ => None,
        };
        let dnssec_ok = request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let catalog = self.catalog();
        let now = now_ns();
        if let Some(local) = catalog.lookup(&qname, qtype) {
            s.inc(&s.authoritative);
            let epochs = epochs_of(&catalog, &qname, &local.answers);
            let Some(target) = local.external.clone() else {
                let src = Source { epochs, local: usize::MAX, upstream: None, rd_only: false };
                let (b, filled) =
                    self.reply_filling(&request, transport, Content::local(local), Some(src), xkey.as_ref());
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
            return Step::Forward(Box::new(Pending {
                request,
                transport,
                local: Some(local),
                target,
                qtype,
                dnssec_ok,
                catalog,
                xkey,
                ticket,
            }));
        }
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

    /// The local part of a chain followed by the upstream's answer for its target.
    fn chain_reply(
        &self,
        req: &Message,
        t: Transport,
        local: LocalAnswer,
        up: &Entry,
        epochs: Option<Vec<Epoch>>,
        xkey: Option<&XKey>,
    ) -> Vec<u8> {
        let local_records = local.answers.len();
        let mut answers = local.answers;
        answers.extend(up.answers.iter().cloned());
        let c = Content {
            rcode: up.rcode,
            authoritative: local.authoritative,
            answers,
            authorities: up.authorities.clone(),
            additionals: up.additionals.clone(),
        };
        // The answer depends on RD (without it only the local part is
        // given): the XDP cache serves it to RD=1 queries only.
        self.reply(req, t, c, Some(Source { epochs, local: local_records, upstream: Some(up), rd_only: true }), xkey)
    }

    /// Builds a response to `req`: the question echoed as received, RD and CD
    /// copied, RA set (coresvc recurses for clients), EDNS answered with our
    /// payload size, truncated to the client's UDP limit. With a `src`, the
    /// records from upstream are aged and the answer goes into the XDP
    /// cache under `xkey`.
    fn reply(
        &self,
        req: &Message,
        transport: Transport,
        c: Content,
        src: Option<Source<'_>>,
        xkey: Option<&XKey>,
    ) -> Vec<u8> {
        self.reply_filling(req, transport, c, src, xkey).0
    }

    /// [`Resolver::reply`], and whether the answer went into the XDP cache.
    fn reply_filling(
        &self,
        req: &Message,
        transport: Transport,
        c: Content,
        src: Option<Source<'_>>,
        xkey: Option<&XKey>,
    ) -> (Vec<u8>, bool) {
        let rcode = c.rcode;
        let mut m = Message::response(req.metadata.id, req.metadata.op_code);
        m.metadata.message_type = MessageType::Response;
        m.metadata.authoritative = c.authoritative;
        m.metadata.recursion_desired = req.metadata.recursion_desired;
        m.metadata.recursion_available = true;
        m.metadata.checking_disabled = req.metadata.checking_disabled;
        m.metadata.response_code = rcode;
        m.queries = req.queries.clone();
        if let [q] = m.queries.as_mut_slice() {
            q.set_name(q.name().to_lowercase());
        }
        m.answers = c.answers;
        m.authorities = c.authorities;
        m.additionals = c.additionals;
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
        let mut bytes = match m.to_vec() {
            Ok(b) => b,
            Err(_) => {
                self.stats.inc(&self.stats.servfail);
                return (self.header_only_for(req, ResponseCode::ServFail), false);
            }
        };
        if bytes.len() <= limit {
            restore_question(&mut bytes, req);
            let filled = src.is_some_and(|src| self.age_and_fill(&mut bytes, &src, xkey));
            return (bytes, filled);
        }
        // Too big for UDP: header, question and OPT with TC set (RFC 2181 §9);
        // the client retries over TCP.
        self.stats.inc(&self.stats.truncated);
        let mut t = m.truncate().to_vec().unwrap_or_else(|_| self.header_only_for(req, ResponseCode::ServFail));
        restore_question(&mut t, req);
        (t, false)
    }

    /// Lowers the TTLs of the records from upstream by their age in the
    /// cache, and stores the answer (with them as stored) in the XDP cache
    /// (returns whether it did).
    fn age_and_fill(&self, bytes: &mut [u8], src: &Source<'_>, xkey: Option<&XKey>) -> bool {
        let fill = xkey.zip(self.xdp()).filter(|(_, x)| x.enabled());
        if src.upstream.is_none() && fill.is_none() {
            return false;
        }
        let Some(rrs) = wire::records(bytes) else { return false };
        let mut filled = false;
        let aging: Vec<usize> = match src.upstream {
            Some(_) => rrs
                .iter()
                .enumerate()
                .filter(|(i, r)| *i >= src.local && r.rtype != wire::TYPE_OPT)
                .map(|(_, r)| r.ttl_at)
                .collect(),
            None => Vec::new(),
        };
        let now = now_ns();
        if let (Some((k, x)), Some(epochs)) = (fill, &src.epochs) {
            let lifetime = match src.upstream {
                Some(e) => Some((e.stored_ns, e.expires_ns)),
                // Local data: as long as its smallest TTL (and the cap),
                // unless it changes first (epochs).
                None => local_lifetime(bytes, &rrs, self.cache.max_ttl()).map(|secs| (now, now + secs * 1_000_000_000)),
            };
            if let Some((stored, expires)) = lifetime.filter(|(_, exp)| *exp > now)
                && let Some(entry) = xdp::entry(bytes, k.question_len, &aging, stored, expires, epochs, src.rd_only)
            {
                x.insert(&k.key, &entry);
                filled = true;
            }
        }
        if let Some(e) = src.upstream {
            wire::age(bytes, &aging, e.age_secs(now));
        }
        filled
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

    /// The answer to a UDP datagram longer than the service reads (cut):
    /// FORMERR from its header, nothing without one.
    pub fn cut_query(&self, bytes: &[u8]) -> Vec<u8> {
        self.stats.inc(&self.stats.queries_udp);
        if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
            self.stats.inc(&self.stats.dropped_malformed);
            return Vec::new();
        }
        self.header_only(bytes, ResponseCode::FormErr)
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

/// An upstream answer's records as stored (the reply ages them).
fn upstream_content(e: &Entry) -> Content {
    Content {
        rcode: e.rcode,
        authoritative: false,
        answers: e.answers.clone(),
        authorities: e.authorities.clone(),
        additionals: e.additionals.clone(),
    }
}

/// Puts the question's name back as the client sent it (the message was
/// encoded with it lower-cased; same length, not compressed: it is the
/// first name).
fn restore_question(bytes: &mut [u8], req: &Message) {
    if let [q] = req.queries.as_slice()
        && let Ok(name) = hickory_proto::serialize::binary::BinEncodable::to_bytes(q.name())
        && let Some(dst) = bytes.get_mut(12..12 + name.len())
    {
        dst.copy_from_slice(&name);
    }
}

/// The epochs a local answer depends on: the catalog's, and those of the
/// zones of the question and of every CNAME target in `answers`. `None`
/// when there are more than the XDP cache keeps.
fn epochs_of(catalog: &Catalog, qname: &Name, answers: &[Record]) -> Option<Vec<Epoch>> {
    let mut v = vec![(0, catalog.epoch)];
    let targets = answers.iter().filter_map(|r| match &r.data {
        RData::CNAME(t) => Some(&t.0),
        _ => None,
    });
    for name in std::iter::once(qname).chain(targets) {
        if let Some(i) = catalog.zone_index(name) {
            let e = (xdp::zone_slot(i)?, catalog.zone_epochs.get(i).copied()?);
            if !v.contains(&e) {
                v.push(e);
            }
        }
    }
    (v.len() <= coresvc_maps_schema::DNS_MAX_ZONES).then_some(v)
}

/// Seconds local data may stay in the XDP cache: its smallest TTL, at most
/// `cap`; `None` for a TTL of 0 (not to be cached).
fn local_lifetime(bytes: &[u8], rrs: &[wire::RrAt], cap: u32) -> Option<u64> {
    let min = rrs
        .iter()
        .filter(|r| r.rtype != wire::TYPE_OPT)
        .filter_map(|r| bytes.get(r.ttl_at..r.ttl_at + 4))
        .map(|f| u32::from_be_bytes([f[0], f[1], f[2], f[3]]))
        .min()?
        .min(cap);
    (min > 0).then_some(u64::from(min))
}

#[cfg(test)]
mod tests {
    use hickory_proto::{op::Query, rr::rdata::TXT};
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

    /// `n` TXT records of 62 bytes at `big` (in the last zone).
    fn big_txt(n: usize) -> String {
        (0..n)
            .map(|i| {
                format!("[[zone.record]]\nname = \"big\"\ntype = \"TXT\"\ndata = '\"{i:02}{}\"'\n", "x".repeat(60))
            })
            .collect()
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
        let r = resolver_with(&big_txt(40));
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

    /// What the XDP cache relies on: an answer's bytes after the question
    /// depend on the question's name only up to case.
    #[test]
    fn answers_after_the_question_do_not_depend_on_its_case() {
        let r = resolver();
        for (lower, mixed, t) in [
            ("artifacts.dvntm.deevnet.net.", "ArtiFacts.DvNtM.deevnet.NET.", RecordType::A),
            ("mgmt.deevnet.net.", "MGMT.deevnet.net.", RecordType::TXT),
            ("nope.mgmt.deevnet.net.", "NoPe.mgmt.deevnet.net.", RecordType::A),
            ("_http._tcp.dvntm.deevnet.net.", "_HTTP._tcp.DVNTM.deevnet.net.", RecordType::SRV),
            ("10.0.10.10.in-addr.arpa.", "10.0.10.10.IN-ADDR.arpa.", RecordType::PTR),
        ] {
            for edns in [None, Some(1232)] {
                let bytes = |name: &str| match r.handle(&query(name, t, edns).to_vec().unwrap(), CLIENT, Transport::Udp)
                {
                    Step::Reply(b) => b,
                    other => panic!("{other:?}"),
                };
                let (a, b) = (bytes(lower), bytes(mixed));
                let qlen = Name::from_ascii(lower).unwrap().len() + 1 + 4;
                assert_eq!(a.len(), b.len(), "{mixed}");
                assert_eq!(a[..12], b[..12], "{mixed}: header");
                assert_eq!(a[12 + qlen..], b[12 + qlen..], "{mixed}: everything after the question");
                let back = Message::from_vec(&b).unwrap();
                assert_eq!(back.queries[0].name().to_string(), mixed, "the question as asked");
            }
        }
    }

    /// The XDP cache's key parser (common code, also run by the program)
    /// accepts only queries hickory reads the same way: one question whose
    /// lower-cased name, type and class are the key's, with EDNS and DO as
    /// the key says.
    #[test]
    fn the_cache_key_parser_agrees_with_hickory() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xcace);
        let seeds: Vec<Vec<u8>> = [
            query("ArtiFacts.dvntm.deevnet.net.", RecordType::A, Some(1232)),
            query("www.Example.org.", RecordType::AAAA, None),
            query("x.", RecordType::MX, Some(512)),
        ]
        .iter()
        .map(|m| m.to_vec().unwrap())
        .collect();
        let mut accepted = 0;
        for i in 0..30_000 {
            let mut b = seeds[i % seeds.len()].clone();
            for _ in 0..rng.random_range(0..4) {
                let at = rng.random_range(0..b.len());
                match rng.random_range(0..4) {
                    0 => b[at] = rng.random(),
                    1 => b[at] ^= 0x20,
                    2 => b.truncate(at.max(1)),
                    _ => b.insert(at, rng.random()),
                }
            }
            let Some(k) = super::xdp::key_of(&b) else { continue };
            accepted += 1;
            let m = Message::from_vec(&b).unwrap_or_else(|e| panic!("accepted {b:02x?}, hickory: {e}"));
            assert_eq!(m.metadata.message_type, MessageType::Query);
            assert_eq!(m.metadata.op_code, OpCode::Query);
            assert_eq!(m.queries.len(), 1);
            let q = &m.queries[0];
            let wire = hickory_proto::serialize::binary::BinEncodable::to_bytes(&q.name().to_lowercase()).unwrap();
            assert_eq!(&k.key.name[..usize::from(k.key.name_len)], wire.as_slice(), "{b:02x?}");
            assert_eq!((k.key.qtype, k.key.qclass), (u16::from(q.query_type()), u16::from(q.query_class())));
            assert_eq!(m.edns.is_some(), k.key.flags & coresvc_common::dns::KEY_F_EDNS != 0);
            assert_eq!(
                m.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
                k.key.flags & coresvc_common::dns::KEY_F_DO != 0
            );
            assert_eq!(m.edns.as_ref().map_or(0, |e| e.version()), 0);
        }
        assert!(accepted > 5_000, "the mutations left enough valid queries ({accepted})");
    }

    /// The kept answers (the agent's own hot path) equal what the zones
    /// give for the same query byte for byte, whatever the case, ID, RD, CD
    /// and EDNS of the query; are not used past the client's UDP size; and
    /// are forgotten when the catalog changes.
    #[test]
    fn kept_answers_equal_the_lookup_and_follow_the_catalog() {
        let r = resolver_with(&big_txt(12));
        let mut kept = AnswerCache::new(64);
        let mut out = Vec::new();
        let corpus = [
            ("artifacts.dvntm.deevnet.net.", RecordType::A),
            ("provisioner-01.mgmt.deevnet.net.", RecordType::AAAA),
            ("nope.mgmt.deevnet.net.", RecordType::A),
            ("mgmt.deevnet.net.", RecordType::TXT),
            ("10.0.10.10.in-addr.arpa.", RecordType::PTR),
            ("big.dvntm.deevnet.net.", RecordType::TXT),
        ];
        let mixed = |n: &str, k: usize| -> String {
            n.chars()
                .enumerate()
                .map(|(i, c)| if (i + k).is_multiple_of(3) { c.to_ascii_uppercase() } else { c })
                .collect()
        };
        let mut reused = 0;
        for (k, (name, t)) in corpus.iter().enumerate() {
            for edns in [None, Some(1232), Some(4096)] {
                for v in 0..4u16 {
                    let mut m = query(&mixed(name, k + usize::from(v)), *t, edns);
                    m.metadata.id = 0x1000 + v;
                    m.metadata.recursion_desired = v % 2 == 0;
                    m.metadata.checking_disabled = v >= 2;
                    let b = m.to_vec().unwrap();
                    for transport in [Transport::Udp, Transport::Tcp] {
                        let before = r.stats.snapshot().answered_kept;
                        assert!(matches!(r.serve(&b, CLIENT, transport, &mut kept, &mut out), Served::Replied));
                        let Step::Reply(reference) = r.handle(&b, CLIENT, transport) else { panic!() };
                        kept.flush(&r.stats);
                        assert_eq!(out, reference, "{name} {t} {edns:?} {v} {transport:?}");
                        reused += r.stats.snapshot().answered_kept - before;
                    }
                }
            }
        }
        assert!(reused > 100, "answers were reused ({reused})");
        // Over UDP without EDNS the big answer is truncated, never the kept whole one.
        let b = query("big.dvntm.deevnet.net.", RecordType::TXT, None).to_vec().unwrap();
        r.serve(&b, CLIENT, Transport::Udp, &mut kept, &mut out);
        assert!(Message::from_vec(&out).unwrap().metadata.truncation);
        // A new catalog: the kept answers are not used.
        let b = query("provisioner-01.mgmt.deevnet.net.", RecordType::A, None).to_vec().unwrap();
        r.serve(&b, CLIENT, Transport::Udp, &mut kept, &mut out);
        assert!(!kept.is_empty());
        let mut c = (*r.catalog()).clone();
        let origin = Name::from_ascii("mgmt.deevnet.net.").unwrap();
        let z = c.zone_mut(&origin).unwrap();
        let owner = Name::from_ascii("provisioner-01.mgmt.deevnet.net.").unwrap();
        z.remove(&owner, RecordType::A, None);
        z.insert(Record::from_rdata(owner, 60, RData::A(hickory_proto::rr::rdata::A::new(10, 10, 0, 99)))).unwrap();
        z.finish().unwrap();
        r.set_catalog(c);
        r.serve(&b, CLIENT, Transport::Udp, &mut kept, &mut out);
        assert_eq!(Message::from_vec(&out).unwrap().answers[0].data.to_string(), "10.10.0.99");
        // Clients outside the segments are refused, kept answers or not.
        r.serve(&b, "192.0.2.9".parse().unwrap(), Transport::Tcp, &mut kept, &mut out);
        assert_eq!(Message::from_vec(&out).unwrap().metadata.response_code, ResponseCode::Refused);
    }

    /// Forwarded records age by the whole seconds they spent in the cache.
    #[test]
    fn cached_upstream_answers_age() {
        let r = resolver();
        let name = Name::from_ascii("www.example.org.").unwrap();
        let rec = Record::from_rdata(name.clone(), 300, RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 80)));
        let entry = Entry::new(ResponseCode::NoError, vec![rec], vec![], vec![]);
        let stored = now_ns() - 30 * 1_000_000_000 - 1;
        r.cache.put(Key::new(&name, RecordType::A, false), entry, stored);
        for edns in [None, Some(1232)] {
            let a = ask(&r, &query("WWW.example.org.", RecordType::A, edns), Transport::Udp);
            assert_eq!(a.answers[0].ttl, 270, "300 - 30");
            assert!(!a.metadata.authoritative);
        }
    }

    /// Random and mutated queries through the real query path: nothing
    /// panics, and every reply parses or is a bare header.
    #[test]
    fn fuzz_smoke() {
        let r = resolver();
        let (mut kept, mut got) = (AnswerCache::new(256), Vec::new());
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
                // Asked twice through the kept answers: what the lookup gives.
                for _ in 0..2 {
                    if let Served::Replied = r.serve(&b, CLIENT, Transport::Udp, &mut kept, &mut got) {
                        assert_eq!(got, out, "{b:02x?}");
                    }
                }
            }
        }
        kept.flush(&r.stats);
        assert!(r.stats.snapshot().answered_kept > 100, "mutated queries were answered from the kept answers");
    }
}
