//! Small real servers started inside lab nodes for tests: an HTTP server
//! (python3 -m http.server), a UDP echo and TCP/UDP "whoami" services
//! that answer with the address a connection came from (socat). Stopped on
//! drop.

use std::{
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::Lab;

pub struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A download in progress (curl from a node at a limited rate), and the
/// server it comes from.
pub struct Download {
    pub curl: Child,
    pub size: usize,
    _server: Server,
}

impl Download {
    /// Waits for curl; the bytes it received, or why it failed.
    pub fn finish(self) -> Result<usize> {
        let out = self.curl.wait_with_output()?;
        if !out.status.success() {
            bail!("curl: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    }
}

impl Lab {
    /// A file of `size` bytes served over HTTP from the upstream node
    /// (192.0.2.1:80), being downloaded by curl on `node` at `rate` (curl's
    /// `--limit-rate`, e.g. "4M"): a long TCP connection through the gateway.
    pub fn slow_download(&self, node: &str, size: usize, rate: &str) -> Result<Download> {
        let www = self.paths.run_dir.join("www");
        std::fs::create_dir_all(&www)?;
        std::fs::write(www.join("big"), (0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>())?;
        let server = self.http_server("upstream", "192.0.2.1", 80, &www)?;
        let curl = self
            .cmd(node, ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", "--limit-rate", rate])
            .args(["--max-time", "120", "http://192.0.2.1/big"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting curl")?;
        Ok(Download { curl, size, _server: server })
    }

    /// `python3 -m http.server` on `node`, serving `dir` on `addr:port`.
    pub fn http_server(&self, node: &str, addr: &str, port: u16, dir: &Path) -> Result<Server> {
        let child = self
            .cmd(node, ["python3", "-m", "http.server", &port.to_string(), "--bind", addr, "--directory"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting python3 -m http.server")?;
        let s = Server { child };
        self.wait_tcp(node, addr, port)?;
        Ok(s)
    }

    /// A UDP echo service on `node` (`addr:port`).
    pub fn udp_echo(&self, node: &str, addr: &str, port: u16) -> Result<Server> {
        let child = self
            .cmd(node, ["socat", &format!("UDP4-RECVFROM:{port},bind={addr},fork"), "PIPE"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting socat (package socat)")?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(Server { child })
    }

    /// A TCP service on `node` (`addr:port`) that answers every connection
    /// with the address and port it came from, as `a.b.c.d:port`.
    pub fn tcp_whoami(&self, node: &str, addr: &str, port: u16) -> Result<Server> {
        let child = self
            .cmd(node, ["socat", &format!("TCP4-LISTEN:{port},bind={addr},fork,reuseaddr")])
            .arg("SYSTEM:echo $SOCAT_PEERADDR $SOCAT_PEERPORT")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting socat (package socat)")?;
        let s = Server { child };
        self.wait_tcp(node, addr, port)?;
        Ok(s)
    }

    /// The same over UDP: each datagram is answered with its source.
    pub fn udp_whoami(&self, node: &str, addr: &str, port: u16) -> Result<Server> {
        // One socket answering every datagram (socat's forked UDP children
        // share the socket and may swallow the next client's datagram).
        let script = format!(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('{addr}', {port}))\nwhile True:\n    d, a = s.recvfrom(2048)\n    \
             s.sendto(('%s %d\\n' % a).encode(), a)\n"
        );
        let child = self
            .cmd(node, ["python3", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting python3")?;
        let s = Server { child };
        let start = Instant::now();
        loop {
            let out = self.exec(node, ["ss", "-Huln", &format!("src {addr}:{port}")])?;
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return Ok(s);
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("the UDP whoami service did not start on {addr}:{port} in {node}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks a whoami service on `to` (`tcp` or `udp`) from `node`, from
    /// `sport` when given: the address and port the service saw, or an error
    /// saying why no answer came.
    pub fn whoami(&self, node: &str, proto: &str, to: &str, sport: Option<u16>) -> Result<String> {
        let mut target = format!("{}4:{to}", proto.to_uppercase());
        if let Some(p) = sport {
            target.push_str(&format!(",sourceport={p},reuseaddr"));
        }
        if proto == "tcp" {
            // A dropped SYN would otherwise be retried for two minutes.
            target.push_str(",connect-timeout=3");
        }
        // TCP sends nothing (the service does not read; a write could race
        // its exit); UDP sends one datagram. `-t 3`: wait for the answer
        // after our side is done.
        let input = if proto == "udp" { "echo x |" } else { "</dev/null" };
        let cmd = if proto == "udp" {
            format!("{input} socat -t 3 -T 3 - {target}")
        } else {
            format!("socat -t 3 -T 3 - {target} {input}")
        };
        let out = self.exec(node, ["sh", "-c", &cmd])?;
        let seen = String::from_utf8_lossy(&out.stdout).trim().replace(' ', ":");
        if seen.is_empty() {
            bail!("no answer from {proto} {to} on {node}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        // (The services answer "addr port": socat would split at a colon.)
        Ok(seen)
    }

    /// Waits until something listens on TCP `addr:port` of `node`.
    pub fn wait_tcp(&self, node: &str, addr: &str, port: u16) -> Result<()> {
        let start = Instant::now();
        loop {
            let out = self.exec(node, ["ss", "-Htln", &format!("src {addr}:{port}")])?;
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("nothing listens on {addr}:{port} in {node}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
