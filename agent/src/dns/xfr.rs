//! coresvc as a primary for standard secondaries: AXFR (RFC 5936) and IXFR
//! (RFC 1995) over TCP, TSIG (RFC 8945) on them, transfers only to the
//! configured `[[dns.secondary]]` addresses (and keys).
//!
//! [`Xfr::serve`] takes every query that asks for a transfer or carries a
//! TSIG record before the ordinary query path. A transfer is answered from
//! one snapshot of the zone (the catalog in force when it was asked) on a
//! task of its own ([`Job`]), so the query path never waits for it;
//! `dns.transfer_max` transfers run at once, at most [`PER_CLIENT`] per
//! secondary; more wait for a slot (a secondary asks for many zones at
//! once), bounded by the TCP connection caps, and are refused after
//! [`QUEUE_WAIT`]. Everything refused is counted.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{Name, RData, Record, RecordType},
};
use tokio::sync::Semaphore;

use super::{
    journal::{self, Diff, Journal, serial_gt},
    stats::Stats,
    tsig::{self, Chain, Key, Keys, Tsig, Verdict},
    wire,
    zone::{Catalog, Zone},
};
use crate::config::{Config, TsigKey};

/// Transfers one secondary address may have running at once.
pub const PER_CLIENT: usize = 2;
/// A transfer message's size at most (room left for the TSIG record).
const MESSAGE_MAX: usize = 60_000;
/// Records tried in one message first.
const CHUNK: usize = 400;
/// A transfer waits this long at most for a slot, then is refused.
const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A key's secret, from the configuration or its file.
pub fn key_secret(cfg: &Config, k: &TsigKey) -> Result<Vec<u8>, tsig::SecretError> {
    let text = match (&k.secret, &k.secret_file) {
        (Some(s), None) => s.clone(),
        (None, Some(f)) => {
            let path = cfg.resolve_path(f);
            std::fs::read_to_string(&path).map_err(|error| tsig::SecretError::Unreadable { path, error })?
        }
        (Some(_), Some(_)) => return Err(tsig::SecretError::Both),
        (None, None) => return Err(tsig::SecretError::Neither),
    };
    tsig::decode_secret(&text)
}

/// A configured secondary.
#[derive(Debug, Clone)]
pub struct Secondary {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub key: Option<Arc<Key>>,
    /// Empty: every local zone.
    pub zones: Vec<Name>,
    pub notify: bool,
}

impl Secondary {
    pub fn serves(&self, zone: &Name) -> bool {
        self.zones.is_empty() || self.zones.contains(zone)
    }
}

pub struct Xfr {
    pub secondaries: Vec<Secondary>,
    keys: Keys,
    /// Transfers running at once: in all, and per secondary address (only
    /// configured addresses get this far, so the map is bounded).
    slots: Arc<Semaphore>,
    per_client: HashMap<IpAddr, Arc<Semaphore>>,
    journal: Arc<Mutex<Journal>>,
}

/// Is this a message for [`Xfr::serve`]: a transfer, or signed?
pub fn wants(m: &[u8]) -> bool {
    if m.len() < 12 || m[2] & 0x80 != 0 {
        return false;
    }
    if let Some(end) = wire::question_end(m) {
        let t = u16::from_be_bytes([m[end - 4], m[end - 3]]);
        if t == u16::from(RecordType::AXFR) || t == u16::from(RecordType::IXFR) {
            return true;
        }
    }
    m[10..12] != [0, 0] && tsig::find(m).is_some()
}

/// What [`Xfr::serve`] made of a message.
#[derive(Debug)]
pub enum Outcome {
    /// Send these bytes.
    Reply(Vec<u8>),
    /// A zone transfer (TCP): run it on a task, send what it returns.
    Transfer(Box<Job>),
    /// A signed ordinary query: the query path answers it, [`Ordinary::sign`]
    /// signs the answer.
    Ordinary(Box<Ordinary>),
}

/// A signed ordinary query, its signature checked and stripped.
pub struct Ordinary {
    /// The message without its TSIG record, for the query path.
    pub message: Vec<u8>,
    request: Message,
    signer: Option<Signer>,
}

impl std::fmt::Debug for Ordinary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ordinary").field("request", &self.request).finish_non_exhaustive()
    }
}

impl Ordinary {
    /// The query path's answer signed; a question it would have forwarded
    /// is refused (nothing signed goes upstream).
    pub fn sign(&self, answer: Option<Vec<u8>>) -> Vec<u8> {
        let mut b = answer.unwrap_or_else(|| error_message(&self.request, ResponseCode::Refused));
        if let Some(sg) = &self.signer {
            sg.sign_one(&mut b);
        }
        b
    }
}

/// The signing state of a response: the key and the request's MAC.
#[derive(Clone)]
struct Signer {
    key: Arc<Key>,
    request_mac: Vec<u8>,
}

impl Signer {
    fn sign_one(&self, b: &mut Vec<u8>) {
        tsig::sign(b, &self.key, Chain::Response(&self.request_mac), tsig::now(), 0, &[]);
    }
}

/// What a transfer sends.
enum Content {
    /// The whole zone (AXFR, or IXFR from a serial the journal lacks).
    Full,
    /// IXFR: the client is up to date, the SOA alone.
    SoaOnly,
    /// IXFR: these differences in order.
    Diffs(Vec<Arc<Diff>>),
}

/// One transfer, ready to run on a task.
pub struct Job {
    request: Message,
    zone: Arc<Zone>,
    content: Content,
    signer: Option<Signer>,
    stats: Arc<Stats>,
    slots: Arc<Semaphore>,
    mine: Arc<Semaphore>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({})", self.zone.origin)
    }
}

impl Xfr {
    pub fn new(cfg: &Config, journal: Arc<Mutex<Journal>>) -> anyhow::Result<Xfr> {
        let mut keys = Keys::default();
        for k in &cfg.dns.tsig_keys {
            let name = super::build::name(&k.name.to_ascii_lowercase()).map_err(|e| anyhow::anyhow!("{e}"))?;
            let secret = key_secret(cfg, k).map_err(|e| anyhow::anyhow!("tsig key {}: {e}", k.name))?;
            keys.insert(Key::new(&name, &secret));
        }
        let mut secondaries = Vec::new();
        for s in &cfg.dns.secondaries {
            let key = match &s.key {
                Some(k) => {
                    let n = super::build::name(&k.to_ascii_lowercase()).map_err(|e| anyhow::anyhow!("{e}"))?;
                    Some(keys.get(&n).ok_or_else(|| anyhow::anyhow!("no tsig key {k}"))?)
                }
                None => None,
            };
            let zones = s.zones.iter().filter_map(|z| super::build::name(&z.to_ascii_lowercase()).ok()).collect();
            secondaries.push(Secondary { addr: s.address, port: s.port, key, zones, notify: s.notify });
        }
        Ok(Xfr {
            secondaries,
            keys,
            slots: Arc::new(Semaphore::new(cfg.dns.transfer_max.max(1) as usize)),
            per_client: cfg
                .dns
                .secondaries
                .iter()
                .map(|s| (IpAddr::V4(s.address), Arc::new(Semaphore::new(PER_CLIENT))))
                .collect(),
            journal,
        })
    }

    /// Answers a message [`wants`] chose, from a client the query path
    /// allows: a transfer, a TSIG error, or (a secondary's signed SOA
    /// check) an ordinary query for the query path to answer, then signed.
    pub fn serve(&self, catalog: Arc<Catalog>, stats: &Arc<Stats>, bytes: &[u8], client: IpAddr, udp: bool) -> Outcome {
        let s = stats;
        let t = match tsig::find(bytes) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(())) => return Outcome::Reply(header_only(bytes, ResponseCode::FormErr)),
        };
        let msg = t.as_ref().map(|t| tsig::stripped(bytes, t));
        let msg = msg.as_deref().unwrap_or(bytes);
        let Ok(request) = Message::from_vec(msg) else {
            return Outcome::Reply(header_only(bytes, ResponseCode::FormErr));
        };
        let mut signer = None;
        if let Some(t) = &t {
            let now = tsig::now();
            match tsig::verify(&self.keys, bytes, t, now) {
                Verdict::Good(key) => signer = Some(Signer { key, request_mac: t.mac.clone() }),
                Verdict::BadKey => return tsig_error(s, &s.tsig_badkey, &request, t, tsig::BADKEY),
                Verdict::BadSig => return tsig_error(s, &s.tsig_badsig, &request, t, tsig::BADSIG),
                Verdict::BadTime(key) => {
                    s.inc(&s.tsig_badtime);
                    let mut b = error_message(&request, ResponseCode::NotAuth);
                    // §5.2.3: signed, the server's time in Other Data.
                    let time = now.to_be_bytes()[2..].to_vec();
                    tsig::sign(&mut b, &key, Chain::Response(&t.mac), now, tsig::BADTIME, &time);
                    return Outcome::Reply(b);
                }
            }
        }
        let qtype = request.queries.first().map(|q| q.query_type());
        if request.queries.len() == 1
            && request.metadata.op_code == OpCode::Query
            && matches!(qtype, Some(RecordType::AXFR | RecordType::IXFR))
        {
            return self.transfer(catalog, stats, request, client, udp, signer);
        }
        // A signed ordinary query (a secondary's SOA check): answered as
        // any other, signed. Nothing signed goes upstream.
        Outcome::Ordinary(Box::new(Ordinary { message: msg.to_vec(), request, signer }))
    }

    fn transfer(
        &self,
        catalog: Arc<Catalog>,
        stats: &Arc<Stats>,
        request: Message,
        client: IpAddr,
        udp: bool,
        signer: Option<Signer>,
    ) -> Outcome {
        let s = stats;
        s.inc(if udp { &s.queries_udp } else { &s.queries_tcp });
        let refuse = |rcode: ResponseCode| {
            s.inc(&s.xfr_refused);
            let mut b = error_message(&request, rcode);
            if let Some(sg) = &signer {
                sg.sign_one(&mut b);
            }
            Outcome::Reply(b)
        };
        let q = &request.queries[0];
        let qname = q.name().to_lowercase();
        let Some(sec) = self.secondaries.iter().find(|sec| IpAddr::V4(sec.addr) == client) else {
            return refuse(ResponseCode::Refused);
        };
        if let Some(need) = &sec.key
            && signer.as_ref().is_none_or(|sg| sg.key.name != need.name)
        {
            // The ACL asks for a key this request was not signed with.
            return refuse(ResponseCode::Refused);
        }
        let Some(zone) = catalog.zone_arcs().iter().find(|z| z.origin == qname).cloned() else {
            return refuse(ResponseCode::NotAuth);
        };
        if !sec.serves(&zone.origin) {
            return refuse(ResponseCode::Refused);
        }
        let content = if q.query_type() == RecordType::IXFR {
            // RFC 1995 §3: the client's SOA is in the authority section.
            let Some(theirs) = request.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(soa.serial),
                _ => None,
            }) else {
                return refuse(ResponseCode::FormErr);
            };
            if !serial_gt(zone.serial(), theirs) {
                Content::SoaOnly
            } else {
                match self.journal.lock().expect("journal lock").since(&zone.origin, theirs, zone.serial()) {
                    Some(d) => Content::Diffs(d),
                    None => Content::Full,
                }
            }
        } else {
            Content::Full
        };
        if udp {
            // No AXFR over UDP (RFC 5936 §4.2). IXFR: the SOA when up to
            // date, else a truncated answer that sends the client to TCP.
            return match (&content, q.query_type()) {
                (_, RecordType::AXFR) => refuse(ResponseCode::Refused),
                (Content::SoaOnly, _) => {
                    let mut b = encode(&request, &[zone.soa().clone()], true);
                    if let Some(sg) = &signer {
                        sg.sign_one(&mut b);
                    }
                    Outcome::Reply(b)
                }
                _ => {
                    let mut b = error_message(&request, ResponseCode::NoError);
                    b[2] |= 0x06; // AA, TC
                    if let Some(sg) = &signer {
                        sg.sign_one(&mut b);
                    }
                    Outcome::Reply(b)
                }
            };
        }
        let Some(mine) = self.per_client.get(&client).cloned() else {
            return refuse(ResponseCode::Refused);
        };
        Outcome::Transfer(Box::new(Job {
            request,
            zone,
            content,
            signer,
            stats: stats.clone(),
            slots: self.slots.clone(),
            mine,
        }))
    }
}

fn tsig_error(s: &Stats, counter: &std::sync::atomic::AtomicU64, request: &Message, t: &Tsig, error: u16) -> Outcome {
    s.inc(counter);
    let mut b = error_message(request, ResponseCode::NotAuth);
    tsig::append_unsigned(&mut b, t, tsig::now(), error);
    Outcome::Reply(b)
}

/// A response with the question and no records.
fn error_message(req: &Message, rcode: ResponseCode) -> Vec<u8> {
    let mut m = Message::response(req.metadata.id, req.metadata.op_code);
    m.metadata.message_type = MessageType::Response;
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.metadata.response_code = rcode;
    m.queries = req.queries.clone();
    m.to_vec().unwrap_or_else(|_| header_only(&m.metadata.id.to_be_bytes(), rcode))
}

/// The 12-byte header of a response to `bytes` with `rcode`.
fn header_only(bytes: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let mut h = vec![0u8; 12];
    h[..2].copy_from_slice(bytes.get(..2).unwrap_or(&[0, 0]));
    h[2] = 0x80 | (bytes.get(2).copied().unwrap_or(0) & 0x79);
    h[3] = u16::from(rcode) as u8 & 0x0f;
    h
}

/// One message of a transfer: AA set, `records` in the answer section,
/// the question in the first message only (RFC 5936 §2.2).
fn encode(req: &Message, records: &[Record], first: bool) -> Vec<u8> {
    let mut m = Message::response(req.metadata.id, OpCode::Query);
    m.metadata.message_type = MessageType::Response;
    m.metadata.authoritative = true;
    m.metadata.response_code = ResponseCode::NoError;
    if first {
        m.queries = req.queries.clone();
    }
    m.answers = records.to_vec();
    m.to_vec().unwrap_or_default()
}

impl Job {
    /// Waits for a slot (in all and for its secondary, at most
    /// [`QUEUE_WAIT`]: then REFUSED), then builds the transfer's messages on
    /// a blocking thread: signed and framed for TCP.
    pub async fn run(self) -> Vec<u8> {
        let slots = (self.slots.clone(), self.mine.clone());
        let permits = tokio::time::timeout(QUEUE_WAIT, async move {
            let a = slots.0.acquire_owned().await.ok()?;
            let b = slots.1.acquire_owned().await.ok()?;
            Some((a, b))
        })
        .await;
        let Ok(Some(permits)) = permits else {
            self.stats.inc(&self.stats.xfr_overload);
            self.stats.inc(&self.stats.xfr_refused);
            let mut b = error_message(&self.request, ResponseCode::Refused);
            if let Some(sg) = &self.signer {
                sg.sign_one(&mut b);
            }
            let mut out = (b.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&b);
            return out;
        };
        let out = tokio::task::spawn_blocking(move || self.build()).await.unwrap_or_default();
        drop(permits);
        out
    }

    fn build(self) -> Vec<u8> {
        let soa = self.zone.soa().clone();
        let mut rrs: Vec<Record> = vec![soa.clone()];
        let s = &self.stats;
        match &self.content {
            Content::Full => {
                rrs.extend(journal::records(&self.zone).cloned());
                rrs.push(soa);
                s.inc(if self.request.queries[0].query_type() == RecordType::AXFR {
                    &s.xfr_axfr
                } else {
                    &s.xfr_ixfr_full
                });
            }
            Content::SoaOnly => s.inc(&s.xfr_ixfr_current),
            Content::Diffs(ds) => {
                for d in ds {
                    rrs.push(d.from.clone());
                    rrs.extend(d.removed.iter().cloned());
                    rrs.push(d.to.clone());
                    rrs.extend(d.added.iter().cloned());
                }
                rrs.push(soa);
                s.inc(&s.xfr_ixfr);
            }
        }
        let mut out = Vec::new();
        let mut prior: Option<Vec<u8>> = None;
        let (mut i, mut n) = (0, CHUNK);
        while i < rrs.len() {
            let end = (i + n).min(rrs.len());
            let mut b = encode(&self.request, &rrs[i..end], i == 0);
            if b.len() > MESSAGE_MAX && end - i > 1 {
                n = (end - i) / 2;
                continue;
            }
            if let Some(sg) = &self.signer {
                let chain = match &prior {
                    None => Chain::Response(&sg.request_mac),
                    Some(p) => Chain::Next(p),
                };
                prior = Some(tsig::sign(&mut b, &sg.key, chain, tsig::now(), 0, &[]));
            }
            out.extend_from_slice(&(b.len() as u16).to_be_bytes());
            out.extend_from_slice(&b);
            i = end;
        }
        out
    }
}
