//! Small real servers started inside lab nodes for tests: an HTTP server
//! (python3 -m http.server) and a UDP echo (socat). Stopped on drop.

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

impl Lab {
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
