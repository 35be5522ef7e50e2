//! Encoding a reply: the header and question as asked, the content's
//! records, TTLs aged, truncation over UDP, and filling the XDP cache.

use super::*;

impl Resolver {
    /// The local part of a chain followed by the upstream's answer for its target.
    pub(super) fn chain_reply(
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
    pub(super) fn reply(
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
    pub(super) fn reply_filling(
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
    pub(super) fn age_and_fill(&self, bytes: &mut [u8], src: &Source<'_>, xkey: Option<&XKey>) -> bool {
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

    pub(super) fn account(&self, rcode: ResponseCode) {
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
    pub(super) fn header_only(&self, bytes: &[u8], rcode: ResponseCode) -> Vec<u8> {
        self.account(rcode);
        let mut h = vec![0u8; 12];
        h[0] = bytes[0];
        h[1] = bytes[1];
        // QR, the opcode and RD from the query; RA; the rcode.
        h[2] = 0x80 | (bytes[2] & 0x79);
        h[3] = 0x80 | (rcode.low() & 0x0f);
        h
    }

    pub(super) fn header_only_for(&self, req: &Message, rcode: ResponseCode) -> Vec<u8> {
        let mut m = Message::response(req.metadata.id, req.metadata.op_code);
        m.metadata.response_code = rcode;
        m.metadata.recursion_desired = req.metadata.recursion_desired;
        m.to_vec().unwrap_or_default()
    }
}

/// An upstream answer's records as stored (the reply ages them).
pub(super) fn upstream_content(e: &Entry) -> Content {
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
pub(super) fn restore_question(bytes: &mut [u8], req: &Message) {
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
pub(super) fn epochs_of(catalog: &Catalog, qname: &Name, answers: &[Record]) -> Option<Vec<Epoch>> {
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
pub(super) fn local_lifetime(bytes: &[u8], rrs: &[wire::RrAt], cap: u32) -> Option<u64> {
    let min = rrs
        .iter()
        .filter(|r| r.rtype != wire::TYPE_OPT)
        .filter_map(|r| bytes.get(r.ttl_at..r.ttl_at + 4))
        .map(|f| u32::from_be_bytes([f[0], f[1], f[2], f[3]]))
        .min()?
        .min(cap);
    (min > 0).then_some(u64::from(min))
}
