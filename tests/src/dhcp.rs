//! DHCP helpers for the lab tests: the real clients (dhclient, udhcpc,
//! dhcpcd) with private state files and a hook script that records every
//! event, a pcap reader for DHCP replies captured with tcpdump, and load
//! from perfdhcp in the background.
//!
//! Every client runs in the foreground as a child of the test and is killed
//! when its [`Client`] is dropped, so no daemon outlives a test.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::Lab;

/// One event a client reported to its hook script.
#[derive(Debug, Clone)]
pub struct Event {
    /// Lower case: `bound`, `renew`, `reboot`, `release`, ... (dhclient and
    /// dhcpcd's `$reason`, udhcpc's `$1`).
    pub reason: String,
    pub vars: BTreeMap<String, String>,
}

impl Event {
    fn var(&self, names: &[&str]) -> Option<&str> {
        names.iter().find_map(|n| self.vars.get(*n)).map(String::as_str).filter(|v| !v.is_empty())
    }
    pub fn ip(&self) -> Option<Ipv4Addr> {
        self.var(&["new_ip_address", "ip"])?.parse().ok()
    }
    pub fn mask(&self) -> Option<&str> {
        self.var(&["new_subnet_mask", "subnet"])
    }
    pub fn routers(&self) -> Option<&str> {
        self.var(&["new_routers", "router"])
    }
    pub fn dns(&self) -> Option<&str> {
        self.var(&["new_domain_name_servers", "dns"])
    }
    pub fn domain(&self) -> Option<&str> {
        self.var(&["new_domain_name", "domain"])
    }
}

/// The hook script: appends the event's variables to `$CORESVC_EVENTS`, and
/// applies the address itself when `$CORESVC_APPLY` is set (dhclient and
/// udhcpc leave that to their script; dhcpcd configures the interface itself).
/// The clients clear the environment, so both are written into the script.
const SCRIPT: &str = r#"#!/bin/sh
CORESVC_EVENTS=@EVENTS@
CORESVC_APPLY=@APPLY@
IP="${new_ip_address:-$ip}"
MASK="${new_subnet_mask:-$subnet}"
if [ -n "$CORESVC_APPLY" ]; then
  case "${reason:-$1}" in
    BOUND|RENEW|REBIND|REBOOT|bound|renew)
      ip -4 addr flush dev "$interface"
      ip addr add "$IP/$MASK" dev "$interface" ;;
    EXPIRE|STOP|deconfig)
      ip -4 addr flush dev "$interface" ;;
  esac
fi
# Recorded after the address is in place. (RELEASE keeps it: dhclient -r
# runs the script before it sends the release from that address.)
{
  echo "event=${reason:-$1}"
  env | grep -E '^(new_[a-z_]+|ip|subnet|router|dns|domain|lease|serverid|interface)=' | sort
  echo "--"
} >> "$CORESVC_EVENTS"
exit 0
"#;

/// A DHCP client running on a lab node; killed on drop.
pub struct Client {
    pub name: String,
    child: Child,
    pub events_file: PathBuf,
    pub log_file: PathBuf,
}

impl Client {
    pub fn events(&self) -> Vec<Event> {
        let text = std::fs::read_to_string(&self.events_file).unwrap_or_default();
        // Only whole records: the last one may still be being written.
        let whole = text.rfind("--\n").map_or("", |i| &text[..i + 3]);
        whole
            .split("--\n")
            .filter(|b| !b.trim().is_empty())
            .map(|b| {
                let vars: BTreeMap<String, String> = b
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
                    .collect();
                Event { reason: vars.get("event").cloned().unwrap_or_default().to_ascii_lowercase(), vars }
            })
            .collect()
    }

    /// Waits for the `n`th (1-based) event whose reason is one of `reasons`.
    pub fn wait_for(&mut self, reasons: &[&str], n: usize, timeout: Duration) -> Result<Event> {
        let start = Instant::now();
        loop {
            let matching: Vec<Event> =
                self.events().into_iter().filter(|e| reasons.contains(&e.reason.as_str())).collect();
            if matching.len() >= n {
                return Ok(matching[n - 1].clone());
            }
            if let Some(st) = self.child.try_wait()? {
                if st.success() && matching.len() >= n {
                    continue;
                }
                bail!("{} exited ({st}) before {reasons:?} #{n}: {}", self.name, self.diagnostics());
            }
            if start.elapsed() > timeout {
                bail!("{} reported no {reasons:?} #{n} within {timeout:?}: {}", self.name, self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn diagnostics(&self) -> String {
        format!(
            "\nevents: {:?}\nlog:\n{}",
            self.events().iter().map(|e| e.reason.clone()).collect::<Vec<_>>(),
            std::fs::read_to_string(&self.log_file).unwrap_or_default()
        )
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the client to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if start.elapsed() > timeout {
                bail!("{} did not exit within {timeout:?}: {}", self.name, self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Lab {
    /// Removes the node's IPv4 addresses from `eth0` (the lab gives clients
    /// static ones), so only DHCP can give it one.
    pub fn flush_address(&self, node: &str) -> Result<()> {
        crate::run(&mut self.cmd(node, ["ip", "-4", "addr", "flush", "dev", "eth0"]))
    }

    fn client_files(&self, name: &str, apply: bool) -> Result<(PathBuf, PathBuf, PathBuf)> {
        let events = self.paths.run_dir.join(format!("{name}.events"));
        let log = self.paths.run_dir.join(format!("{name}.log"));
        let text =
            SCRIPT.replace("@EVENTS@", &events.display().to_string()).replace("@APPLY@", if apply { "1" } else { "" });
        let script = self.write_file(&format!("{name}.hook.sh"), &text)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        Ok((script, events, log))
    }

    fn spawn_client(
        &self,
        node: &str,
        name: &str,
        apply: bool,
        build: impl FnOnce(&PathBuf) -> Vec<String>,
    ) -> Result<Client> {
        let (script, events, log) = self.client_files(name, apply)?;
        let args = build(&script);
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut c = self.cmd(node, &args);
        c.stdin(Stdio::null()).stdout(logf.try_clone()?).stderr(logf);
        let child = c.spawn().with_context(|| format!("starting {}", args[0]))?;
        Ok(Client { name: name.to_string(), child, events_file: events, log_file: log })
    }

    /// ISC dhclient in the foreground on `node`'s eth0, with its own lease
    /// and pid files under the lab's run directory (named by `name`).
    pub fn dhclient(&self, node: &str, name: &str, extra: &[&str]) -> Result<Client> {
        let (lf, pf) = self.dhclient_files(name);
        self.spawn_client(node, name, true, |script| {
            let mut a: Vec<String> = ["dhclient", "-4", "-d", "-v", "-sf"].iter().map(|s| s.to_string()).collect();
            a.push(script.display().to_string());
            a.extend(["-lf".to_string(), lf.display().to_string(), "-pf".into(), pf.display().to_string()]);
            a.extend(extra.iter().map(|s| s.to_string()));
            a.push("eth0".into());
            a
        })
    }

    pub fn dhclient_files(&self, name: &str) -> (PathBuf, PathBuf) {
        (self.paths.run_dir.join(format!("{name}.leases")), self.paths.run_dir.join(format!("{name}.pid")))
    }

    /// `dhclient -r`: releases the lease of the dhclient `name` (and stops it).
    pub fn dhclient_release(&self, node: &str, name: &str) -> Result<String> {
        let (script, _, _) = self.client_files(name, true)?;
        let (lf, pf) = self.dhclient_files(name);
        let out = self
            .cmd(node, ["dhclient", "-4", "-r", "-v", "-sf"])
            .arg(&script)
            .arg("-lf")
            .arg(&lf)
            .arg("-pf")
            .arg(&pf)
            .arg("eth0")
            .output()?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            bail!("dhclient -r: {text}");
        }
        Ok(text)
    }

    /// BusyBox udhcpc in the foreground (`SIGUSR1` renews, `SIGUSR2` releases).
    pub fn udhcpc(&self, node: &str, name: &str, extra: &[&str]) -> Result<Client> {
        self.spawn_client(node, name, true, |script| {
            let mut a: Vec<String> =
                ["udhcpc", "-f", "-i", "eth0", "-t", "10", "-T", "1", "-s"].iter().map(|s| s.to_string()).collect();
            a.push(script.display().to_string());
            a.extend(extra.iter().map(|s| s.to_string()));
            a
        })
    }

    /// dhcpcd, one shot, IPv4 only, in a private mount namespace so its
    /// state and pid files (/run/dhcpcd, /var/lib/dhcpcd) are its own; the
    /// hook script replaces dhcpcd-run-hooks, so nothing outside the lab
    /// (resolv.conf) is touched.
    pub fn dhcpcd(&self, node: &str, name: &str, extra: &[&str]) -> Result<Client> {
        self.spawn_client(node, name, false, |script| {
            let mut inner = format!(
                "mount -t tmpfs tmpfs /run/dhcpcd 2>/dev/null || {{ mkdir -p /run/dhcpcd && mount -t tmpfs tmpfs /run/dhcpcd; }}; \
                 mkdir -p /var/lib/dhcpcd && mount -t tmpfs tmpfs /var/lib/dhcpcd && \
                 exec dhcpcd -4 -B -1 -t 20 -A --noipv4ll -f /dev/null -c {}",
                script.display()
            );
            for e in extra {
                inner.push(' ');
                inner.push_str(e);
            }
            inner.push_str(" eth0");
            vec!["unshare".into(), "-m".into(), "sh".into(), "-c".into(), inner]
        })
    }
}

/// A DHCP message seen in a pcap file (tcpdump -w), Ethernet/IPv4/UDP.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The DHCP payload.
    pub payload: Vec<u8>,
    /// The sender's MAC address and UDP source port.
    pub src_mac: [u8; 6],
    pub sport: u16,
    /// The UDP length field (header included): the datagram's size even
    /// when the capture holds only its first fragment or a snapshot.
    pub udp_len: u16,
}

/// The UDP payloads of every IPv4/UDP frame in a pcap file (first
/// fragments only: later ones carry no UDP header).
pub fn pcap_udp_payloads(bytes: &[u8]) -> Result<Vec<Captured>> {
    if bytes.len() < 24 {
        return Ok(Vec::new());
    }
    let le = match bytes[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => bail!("not a pcap file"),
    };
    let u32at = |b: &[u8], at: usize| {
        let a: [u8; 4] = b[at..at + 4].try_into().expect("4 bytes");
        if le { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) }
    };
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let incl = u32at(bytes, at + 8) as usize;
        let Some(frame) = bytes.get(at + 16..at + 16 + incl) else { break };
        at += 16 + incl;
        // Ethernet, IPv4, UDP.
        if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] || frame[23] != 17 {
            continue;
        }
        if u16::from_be_bytes([frame[20], frame[21]]) & 0x1fff != 0 {
            continue;
        }
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let udp = 14 + ihl;
        if let Some(p) = frame.get(udp + 8..) {
            let src_mac = frame[6..12].try_into().expect("6 bytes");
            let sport = u16::from_be_bytes([frame[udp], frame[udp + 1]]);
            let udp_len = u16::from_be_bytes([frame[udp + 4], frame[udp + 5]]);
            out.push(Captured { payload: p.to_vec(), src_mac, sport, udp_len });
        }
    }
    Ok(out)
}

/// Every DHCPACK that hands out an address in a pcap file: (address, the
/// client's hardware address as `aa:bb:cc:dd:ee:ff`).
pub fn acks_in(pcap: &Path) -> Result<Vec<(Ipv4Addr, String)>> {
    use dhcproto::{
        Decodable as _, Decoder,
        v4::{Message, MessageType},
    };
    let bytes = std::fs::read(pcap).unwrap_or_default();
    Ok(pcap_udp_payloads(&bytes)?
        .into_iter()
        .filter_map(|c| Message::decode(&mut Decoder::new(&c.payload)).ok())
        .filter(|m| m.opts().msg_type() == Some(MessageType::Ack) && !m.yiaddr().is_unspecified())
        .map(|m| (m.yiaddr(), m.chaddr().iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")))
        .collect())
}

/// Checks `acked` (from [`acks_in`]) against the agent's lease store: no
/// address was ACKed to two clients, and each is in the store with the
/// client's MAC (and bound, with `bound`). Panics naming the first that
/// is not.
pub fn assert_acks_kept(lab: &Lab, acked: &[(Ipv4Addr, String)], bound: bool) {
    let out = lab.coresvc(["leases", "--json"]).expect("coresvc leases");
    assert!(out.status.success(), "coresvc leases: {}", String::from_utf8_lossy(&out.stderr));
    let leases: serde_json::Value = serde_json::from_slice(&out.stdout).expect("leases JSON");
    let store: std::collections::HashMap<&str, &serde_json::Value> = leases
        .as_array()
        .expect("a list of leases")
        .iter()
        .map(|l| (l["address"].as_str().expect("an address"), l))
        .collect();
    let mut owner: std::collections::HashMap<Ipv4Addr, &str> = std::collections::HashMap::new();
    for (addr, mac) in acked {
        // Never two clients for one address, across a crash.
        if let Some(prev) = owner.insert(*addr, mac) {
            assert_eq!(prev, mac, "{addr} was ACKed to {prev} and to {mac}");
        }
        let l =
            store.get(addr.to_string().as_str()).unwrap_or_else(|| panic!("ACKed {addr} ({mac}) is not in the store"));
        assert_eq!(l["mac"].as_str(), Some(mac.as_str()), "{l}");
        if bound {
            assert_eq!(l["state"], "bound", "{l}");
        }
    }
}

/// A command running in the background in a lab node, killed when dropped.
pub struct Background(Child);

impl Background {
    /// SIGINT (tcpdump and perfdhcp finish their output), then waits up to
    /// five seconds before the kill.
    pub fn interrupt(self) {
        // SAFETY: kill(2) on our child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let mut me = self;
        for _ in 0..50 {
            if me.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Lab {
    /// tcpdump on `node`'s eth0 writing every DHCP server reply it sees to
    /// `file`; capturing when this returns.
    pub fn capture_dhcp_replies(&self, node: &str, file: &Path) -> Result<Background> {
        let c = self
            .cmd(node, ["tcpdump", "-i", "eth0", "-U", "-n", "-s", "600", "-w"])
            .arg(file)
            .arg("udp and src port 67")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("tcpdump (installed by cargo xtask setup)")?;
        std::thread::sleep(Duration::from_millis(800));
        Ok(Background(c))
    }

    /// perfdhcp from `node`'s eth0 against `server`: `rate` four-way
    /// exchanges per second from random client MACs (seeded), until
    /// interrupted.
    pub fn perfdhcp_load(&self, node: &str, server: &str, rate: u32, seed: u32) -> Result<Background> {
        let (rate, seed) = (rate.to_string(), seed.to_string());
        let c = self
            .cmd(node, ["perfdhcp", "-4", "-l", "eth0", "-r", &rate, "-R", "3000", "-p", "60", "-s", &seed, server])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("perfdhcp (package kea-admin, installed by cargo xtask setup)")?;
        Ok(Background(c))
    }
}
