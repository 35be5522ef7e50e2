//! NOTIFY (RFC 1996) to the secondaries when a zone changes.
//!
//! Changes are coalesced: the first change of a quiet period opens a window
//! of [`COALESCE`]; every zone changed in it gets one NOTIFY per secondary
//! at its end (a burst of DHCP registrations is one NOTIFY). Each goes
//! over UDP from the gateway address of the secondary's segment, signed
//! with the secondary's key, and is sent again with doubling waits until
//! the secondary answers, [`TRIES`] times at most (§3.6).

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RecordType},
};
use ipnet::Ipv4Net;
use tokio::{net::UdpSocket, sync::mpsc};
use tracing::{debug, info, warn};

use super::{
    handler::Resolver,
    tsig::{self, Chain},
    xfr::Secondary,
};

pub const COALESCE: Duration = Duration::from_millis(500);
const TRIES: u32 = 5;
const FIRST_WAIT: Duration = Duration::from_secs(1);

/// Hands changed zones to the NOTIFY task.
pub struct Notifier {
    tx: mpsc::UnboundedSender<Name>,
    task: tokio::task::JoinHandle<()>,
}

impl Notifier {
    /// Starts the task. `sources`: each segment's network and the gateway
    /// address NOTIFYs to it are sent from.
    pub fn start(resolver: Arc<Resolver>, sources: Vec<(Ipv4Net, Ipv4Addr)>) -> Notifier {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(rx, resolver, Arc::new(sources)));
        Notifier { tx, task }
    }

    pub fn changed(&self, zones: impl IntoIterator<Item = Name>) {
        for z in zones {
            let _ = self.tx.send(z);
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Name>, resolver: Arc<Resolver>, sources: Arc<Vec<(Ipv4Net, Ipv4Addr)>>) {
    while let Some(first) = rx.recv().await {
        let mut zones = BTreeSet::from([first]);
        tokio::time::sleep(COALESCE).await;
        while let Ok(z) = rx.try_recv() {
            zones.insert(z);
        }
        let Some(xfr) = resolver.xfr() else { continue };
        let catalog = resolver.catalog();
        for origin in zones {
            let Some(zone) = catalog.zone_arcs().iter().find(|z| z.origin == origin) else { continue };
            for sec in xfr.secondaries.iter().filter(|s| s.notify && s.serves(&origin)) {
                let from = sources.iter().find(|(n, _)| n.contains(&sec.addr)).map(|(_, a)| *a);
                let (sec, zone, resolver) = (sec.clone(), zone.clone(), resolver.clone());
                tokio::spawn(async move {
                    notify_one(&resolver, &sec, from, &zone.origin, zone.serial(), zone.soa().clone()).await;
                });
            }
        }
    }
}

async fn notify_one(
    r: &Resolver,
    sec: &Secondary,
    from: Option<Ipv4Addr>,
    origin: &Name,
    serial: u32,
    soa: hickory_proto::rr::Record,
) {
    let s = &r.stats;
    let to = SocketAddr::from((sec.addr, sec.port));
    let sock = match UdpSocket::bind(SocketAddr::from((from.unwrap_or(Ipv4Addr::UNSPECIFIED), 0))).await {
        Ok(u) => u,
        Err(e) => {
            warn!(zone = %origin, secondary = %to, "dns: notify: cannot bind: {e}");
            return;
        }
    };
    if let Err(e) = sock.connect(to).await {
        warn!(zone = %origin, secondary = %to, "dns: notify: {e}");
        return;
    }
    let id: u16 = rand::random();
    let mut m = Message::new(id, MessageType::Query, OpCode::Notify);
    m.metadata.authoritative = true;
    m.queries = vec![Query::query(origin.clone(), RecordType::SOA)];
    // §3.7: the SOA may go along in the answer section.
    m.answers = vec![soa];
    let Ok(mut bytes) = m.to_vec() else { return };
    let mac = sec.key.as_ref().map(|k| tsig::sign(&mut bytes, k, Chain::Request, tsig::now(), 0, &[]));
    let mut wait = FIRST_WAIT;
    let mut buf = vec![0u8; 4096];
    for _ in 0..TRIES {
        s.inc(&s.notify_sent);
        if let Err(e) = sock.send(&bytes).await {
            debug!(zone = %origin, secondary = %to, "dns: notify send: {e}");
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await else { break };
            let b = &buf[..n];
            // The answer: our ID, QR set, opcode NOTIFY.
            if n < 12 || b[..2] != id.to_be_bytes() || b[2] & 0x80 == 0 || (b[2] >> 3) & 0x0f != 4 {
                continue;
            }
            if let (Some(k), Some(mac)) = (&sec.key, &mac)
                && !tsig::verify_response(k, b, mac, tsig::now())
            {
                warn!(zone = %origin, secondary = %to, "dns: notify answer not signed with key {}; ignored", k.name);
                continue;
            }
            s.inc(&s.notify_answered);
            info!(zone = %origin, serial, secondary = %to, rcode = b[3] & 0x0f, "dns: notify answered");
            return;
        }
        wait *= 2;
    }
    s.inc(&s.notify_given_up);
    warn!(zone = %origin, serial, secondary = %to, "dns: notify not answered after {TRIES} tries");
}
