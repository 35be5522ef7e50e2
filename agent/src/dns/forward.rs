//! Forwarding to upstream resolvers: per-domain forwarders first, then the
//! default upstreams; UDP with a fresh random source port and query ID per
//! query, TCP when the answer is truncated; a reply counts only if it comes
//! from the server asked, with our ID and our question. A server that times
//! out, fails or refuses is skipped for the next one; when all have failed the
//! caller answers SERVFAIL. Identical questions in flight share one upstream
//! query.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RecordType},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    sync::broadcast,
};
use tracing::debug;

use super::{cache::Key, stats::Stats};

/// The EDNS payload size we offer upstream and to clients (DNS flag day 2020).
pub const EDNS_PAYLOAD: u16 = 1232;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream server is configured for {0}")]
    NoUpstream(String),
    #[error("every upstream failed for {name}: {last}")]
    AllFailed { name: String, last: String },
}

/// An upstream's answer, as the client will see it (rcode and sections).
pub type Answer = Arc<Result<Message, ForwardError>>;

pub struct Forwarder {
    default: Vec<SocketAddr>,
    /// (domain, servers), longest domain first.
    domains: Vec<(Name, Vec<SocketAddr>)>,
    timeout: Duration,
    inflight: Mutex<HashMap<Key, broadcast::Sender<Answer>>>,
    stats: Arc<Stats>,
}

impl Forwarder {
    pub fn new(
        default: Vec<SocketAddr>,
        mut domains: Vec<(Name, Vec<SocketAddr>)>,
        timeout: Duration,
        stats: Arc<Stats>,
    ) -> Self {
        domains.sort_by_key(|(d, _)| std::cmp::Reverse(d.num_labels()));
        Forwarder { default, domains, timeout, inflight: Mutex::new(HashMap::new()), stats }
    }

    /// The servers for `name`: the most specific `dns.forward` domain, else the defaults.
    pub fn servers_for(&self, name: &Name) -> &[SocketAddr] {
        self.domains.iter().find(|(d, _)| d.zone_of(name)).map(|(_, s)| s.as_slice()).unwrap_or(&self.default)
    }

    /// Resolves a question upstream; concurrent identical questions wait for
    /// the first one's answer.
    pub async fn resolve(&self, name: &Name, qtype: RecordType, dnssec_ok: bool) -> Answer {
        let key = Key::new(name, qtype, dnssec_ok);
        let mut rx = {
            let mut inflight = self.inflight.lock().expect("inflight lock");
            match inflight.get(&key) {
                Some(tx) => {
                    self.stats.inc(&self.stats.coalesced);
                    Some(tx.subscribe())
                }
                None => {
                    let (tx, _) = broadcast::channel(1);
                    inflight.insert(key.clone(), tx);
                    None
                }
            }
        };
        if let Some(rx) = rx.as_mut()
            && let Ok(a) = rx.recv().await
        {
            return a;
        }
        // The leader went away without an answer: ask ourselves.
        let answer: Answer = Arc::new(self.resolve_uncoalesced(name, qtype, dnssec_ok).await);
        let mut inflight = self.inflight.lock().expect("inflight lock");
        // Removed and sent under the lock: a follower either subscribed
        // before (and receives this) or finds no entry and asks anew.
        if let Some(tx) = inflight.remove(&key) {
            let _ = tx.send(answer.clone());
        }
        answer
    }

    async fn resolve_uncoalesced(
        &self,
        name: &Name,
        qtype: RecordType,
        dnssec_ok: bool,
    ) -> Result<Message, ForwardError> {
        let servers = self.servers_for(name);
        if servers.is_empty() {
            return Err(ForwardError::NoUpstream(name.to_string()));
        }
        let mut last = String::new();
        for server in servers {
            self.stats.inc(&self.stats.upstream_queries);
            match self.ask(*server, name, qtype, dnssec_ok).await {
                Ok(m) if matches!(m.metadata.response_code, ResponseCode::ServFail | ResponseCode::Refused) => {
                    self.stats.inc(&self.stats.upstream_failures);
                    last = format!("{server} answered {}", m.metadata.response_code);
                }
                Ok(m) => return Ok(m),
                Err(e) => {
                    self.stats.inc(&self.stats.upstream_failures);
                    debug!(%server, %name, "upstream failed: {e}");
                    last = format!("{server}: {e}");
                }
            }
        }
        Err(ForwardError::AllFailed { name: name.to_string(), last })
    }

    /// One question to one server: UDP, then TCP if truncated.
    async fn ask(
        &self,
        server: SocketAddr,
        name: &Name,
        qtype: RecordType,
        dnssec_ok: bool,
    ) -> Result<Message, String> {
        let id: u16 = rand::random();
        let mut q = Message::new(id, MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(name.clone(), qtype));
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        edns.set_dnssec_ok(dnssec_ok);
        q.set_edns(edns);
        let bytes = q.to_vec().map_err(|e| e.to_string())?;
        let reply = tokio::time::timeout(self.timeout, self.ask_udp(server, &bytes, id, name, qtype)).await.map_err(
            |_| {
                self.stats.inc(&self.stats.upstream_timeouts);
                format!("no answer within {:?}", self.timeout)
            },
        )??;
        if !reply.metadata.truncation {
            return Ok(reply);
        }
        self.stats.inc(&self.stats.upstream_tcp);
        tokio::time::timeout(self.timeout, ask_tcp(server, &bytes, id, name, qtype))
            .await
            .map_err(|_| format!("no TCP answer within {:?}", self.timeout))?
    }

    async fn ask_udp(
        &self,
        server: SocketAddr,
        query: &[u8],
        id: u16,
        name: &Name,
        qtype: RecordType,
    ) -> Result<Message, String> {
        // A fresh socket: the kernel picks a random ephemeral source port.
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
        sock.send_to(query, server).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 65535];
        loop {
            let (len, from) = sock.recv_from(&mut buf).await.map_err(|e| e.to_string())?;
            if from != server {
                self.stats.inc(&self.stats.upstream_mismatched);
                continue;
            }
            match accept(&buf[..len], id, name, qtype) {
                Some(m) => return Ok(m),
                None => self.stats.inc(&self.stats.upstream_mismatched),
            }
        }
    }
}

async fn ask_tcp(server: SocketAddr, query: &[u8], id: u16, name: &Name, qtype: RecordType) -> Result<Message, String> {
    let mut s = TcpStream::connect(server).await.map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(query.len() + 2);
    out.extend_from_slice(&(query.len() as u16).to_be_bytes());
    out.extend_from_slice(query);
    s.write_all(&out).await.map_err(|e| e.to_string())?;
    let len = s.read_u16().await.map_err(|e| e.to_string())? as usize;
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    accept(&buf, id, name, qtype).ok_or_else(|| "the TCP answer does not match the question".to_string())
}

/// A reply is ours only with our ID, the response bit, and our question.
fn accept(buf: &[u8], id: u16, name: &Name, qtype: RecordType) -> Option<Message> {
    let m = Message::from_vec(buf).ok()?;
    let q = m.queries.first()?;
    (m.metadata.id == id
        && m.metadata.message_type == MessageType::Response
        && m.queries.len() == 1
        && q.query_type() == qtype
        && q.name() == name)
        .then_some(m)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn n(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    #[test]
    fn most_specific_forward_domain_wins() {
        let a: SocketAddr = "192.0.2.1:53".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:53".parse().unwrap();
        let c: SocketAddr = "192.0.2.3:53".parse().unwrap();
        let f = Forwarder::new(
            vec![a],
            vec![(n("example.org."), vec![b]), (n("lab.example.org."), vec![c])],
            Duration::from_secs(1),
            Arc::new(Stats::default()),
        );
        assert_eq!(f.servers_for(&n("x.lab.EXAMPLE.org.")), [c]);
        assert_eq!(f.servers_for(&n("www.example.org.")), [b]);
        assert_eq!(f.servers_for(&n("www.other.net.")), [a]);
    }

    #[test]
    fn replies_must_match_id_and_question() {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(n("www.Example.org."), RecordType::A));
        let bytes = m.to_vec().unwrap();
        assert!(accept(&bytes, 7, &n("www.example.org."), RecordType::A).is_some());
        assert!(accept(&bytes, 8, &n("www.example.org."), RecordType::A).is_none(), "wrong id");
        assert!(accept(&bytes, 7, &n("other.example.org."), RecordType::A).is_none(), "wrong name");
        assert!(accept(&bytes, 7, &n("www.example.org."), RecordType::AAAA).is_none(), "wrong type");
        let mut q = m.clone();
        q.metadata.message_type = MessageType::Query;
        assert!(accept(&q.to_vec().unwrap(), 7, &n("www.example.org."), RecordType::A).is_none(), "not a response");
    }
}
