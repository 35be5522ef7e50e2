//! The TFTP server end to end, in a namespace lab per test: the real
//! `coresvc` binary against real tftp-hpa, atftp and curl, and a socket
//! client for what no ordinary client sends (traversal names that curl would
//! normalise, EDK2's tsize probe, duplicate ACKs).

use std::{
    fs,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use coresvc::tftp::proto::{ErrorCode, Repr, Request};
use coresvc_lab::{AgentOpts, Lab};
use serde_json::Value;

/// coresvc on dvnt (bootstrap mode), where dvnt-client (10.20.0.50) lives.
const SERVER: &str = "10.20.0.1";
/// More than 65535 blocks of 512 bytes: block numbers roll over.
const BIG: usize = 65_535 * 512 + 70_001;

/// Deterministic bytes, different per seed.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Fixture {
    lab: Lab,
    /// The TFTP root (`tftp` next to the configuration).
    root: PathBuf,
    /// Where clients write what they fetched.
    out: PathBuf,
    config: PathBuf,
}

impl Fixture {
    /// A lab with the example configuration, edited by `edit`, and coresvc running.
    fn start(edit: impl FnOnce(String) -> String) -> Fixture {
        let f = Self::prepare(edit);
        f.run()
    }

    fn prepare(edit: impl FnOnce(String) -> String) -> Fixture {
        let lab = Lab::for_test().expect("lab up");
        let root = lab.paths.run_dir.join("tftp");
        let out = lab.paths.run_dir.join("out");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&out).unwrap();
        let text = edit(fs::read_to_string(coresvc_lab::default_config()).unwrap());
        let config = lab.paths.run_dir.join("coresvc.toml");
        fs::write(&config, text).unwrap();
        Fixture { lab, root, out, config }
    }

    fn run(mut self) -> Fixture {
        self.lab.start_agent(&AgentOpts::new(&self.config)).expect("agent start");
        self
    }

    fn put(&self, name: &str, bytes: &[u8]) {
        let p = self.root.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }

    fn tftp_status(&self) -> Value {
        let s = self.lab.status_json().unwrap();
        assert!(s["tftp"].is_object(), "no tftp in the status: {s:#}");
        s["tftp"].clone()
    }

    /// Polls the TFTP status until `f` holds (transfers end a moment after
    /// the client's last ACK).
    fn wait_status(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let s = self.tftp_status();
            if f(&s) {
                return s;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{what}: status never got there: {s:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn client(&self, args: &[&str]) -> Output {
        self.lab.exec("dvnt-client", args).unwrap()
    }

    fn tftp_hpa(&self, name: &str, out: &Path) -> Output {
        self.client(&["tftp", "-m", "octet", SERVER, "-c", "get", name, out.to_str().unwrap()])
    }

    fn atftp(&self, name: &str, out: &Path, blksize: u32, windowsize: u32) -> Output {
        let (b, w) = (format!("blksize {blksize}"), format!("windowsize {windowsize}"));
        self.client(&["atftp", "--option", &b, "--option", &w, "-g", "-r", name, "-l", out.to_str().unwrap(), SERVER])
    }

    fn curl(&self, name: &str, out: &Path, blksize: u32) -> Output {
        let url = format!("tftp://{SERVER}/{name}");
        let b = blksize.to_string();
        self.client(&["curl", "-sS", "--max-time", "300", "--tftp-blksize", &b, "-o", out.to_str().unwrap(), &url])
    }

    /// True if curl on dvnt-client gets nothing from `server` within 5 s.
    fn curl_fails(&self, server: &str) -> bool {
        let url = format!("tftp://{server}/boot.bin");
        !self.client(&["curl", "-sS", "--max-time", "5", "-o", "/dev/null", &url]).status.success()
    }

    /// A socket on `node` for speaking TFTP by hand.
    fn raw(&self, node: &str) -> Raw {
        let sock = coresvc_lab::raw::udp_socket(&self.lab.ns(node), "0.0.0.0:0".parse().unwrap()).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        Raw { sock, server: format!("{SERVER}:69").parse().unwrap() }
    }
}

fn assert_same(out: &Path, expected: &[u8], what: &str, client: &Output) {
    let got = fs::read(out).unwrap_or_else(|e| {
        panic!(
            "{what}: no output file {} ({e}); client said: {}{}",
            out.display(),
            String::from_utf8_lossy(&client.stdout),
            String::from_utf8_lossy(&client.stderr)
        )
    });
    if got != expected {
        let at = got.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(got.len().min(expected.len()));
        panic!(
            "{what}: {} bytes fetched, {} expected, first difference at {at}; client said: {}{}",
            got.len(),
            expected.len(),
            String::from_utf8_lossy(&client.stdout),
            String::from_utf8_lossy(&client.stderr)
        );
    }
}

/// A client speaking TFTP packet by packet.
struct Raw {
    sock: UdpSocket,
    server: SocketAddr,
}

impl Raw {
    fn send(&self, to: SocketAddr, p: &Repr<'_>) {
        let mut buf = vec![0u8; p.buffer_len()];
        p.emit(&mut buf).unwrap();
        self.sock.send_to(&buf, to).unwrap();
    }

    fn rrq(&self, name: &[u8], mode: &str, options: &[(&str, &str)]) {
        let options = options.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
        self.send(self.server, &Repr::Rrq(Request { filename: name, mode: mode.as_bytes(), options }));
    }

    fn recv(&self) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; 70_000];
        let (n, from) = self.sock.recv_from(&mut buf).expect("an answer from coresvc");
        buf.truncate(n);
        (buf, from)
    }

    fn ack(&self, to: SocketAddr, block: u16) {
        self.send(to, &Repr::Ack { block });
    }

    /// Fetches `name` in lock-step; an ERROR answer is returned as (code, message).
    fn fetch(&self, name: &[u8], mode: &str, options: &[(&str, &str)]) -> Result<Vec<u8>, (ErrorCode, String)> {
        self.rrq(name, mode, options);
        let blksize = options.iter().find(|(n, _)| *n == "blksize").map_or(512, |(_, v)| v.parse().unwrap());
        let mut got = Vec::new();
        let mut expected: u16 = 1;
        loop {
            let (p, from) = self.recv();
            match Repr::parse(&p).unwrap() {
                Repr::Error { code, message } => return Err((code, String::from_utf8_lossy(message).into())),
                Repr::Oack { .. } => self.ack(from, 0),
                Repr::Data { block, data } => {
                    if block == expected {
                        got.extend_from_slice(data);
                        expected = expected.wrapping_add(1);
                    }
                    self.ack(from, block);
                    if data.len() < blksize {
                        return Ok(got);
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn count(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} missing: {v:#}"))
}

fn refusals(v: &Value, reason: &str) -> u64 {
    v["refusals"][reason].as_u64().unwrap_or_else(|| panic!("refusal {reason} missing: {v:#}"))
}

#[test]
fn tftp_hpa_atftp_and_curl_fetch_identical_bytes_of_every_size() {
    let f = Fixture::start(|c| c);
    let sizes = [0usize, 1, 511, 512, 513, 1468, 4404, 100_000, 1_048_576];
    for (i, &len) in sizes.iter().enumerate() {
        f.put(&format!("f{len}.bin"), &content(len, i as u64));
    }
    f.put("boot/big.bin", &content(BIG, 99));
    let mut fetches = 0;
    let mut bytes = 0;
    for (i, &len) in sizes.iter().enumerate() {
        let name = format!("f{len}.bin");
        let expected = content(len, i as u64);
        let o = f.out.join(format!("hpa-{len}"));
        let c = f.tftp_hpa(&name, &o);
        assert_same(&o, &expected, &format!("tftp-hpa {name}"), &c);
        let o = f.out.join(format!("atftp-{len}"));
        let c = f.atftp(&name, &o, 1468, 16);
        assert_same(&o, &expected, &format!("atftp windowsize 16 {name}"), &c);
        let blksize = if len == 1_048_576 { 8192 } else { 1468 };
        let o = f.out.join(format!("curl-{len}"));
        let c = f.curl(&name, &o, blksize);
        assert_same(&o, &expected, &format!("curl blksize {blksize} {name}"), &c);
        fetches += 3;
        bytes += 3 * len as u64;
    }
    // Block numbers roll over with each client: lock-step, OACK + lock-step, windows.
    let big = content(BIG, 99);
    let o = f.out.join("big-hpa");
    let c = f.tftp_hpa("boot/big.bin", &o);
    assert_same(&o, &big, "tftp-hpa big.bin (512-byte blocks)", &c);
    let o = f.out.join("big-curl");
    let c = f.curl("boot/big.bin", &o, 512);
    assert_same(&o, &big, "curl blksize 512 big.bin", &c);
    let o = f.out.join("big-atftp");
    let c = f.atftp("boot/big.bin", &o, 512, 16);
    assert_same(&o, &big, "atftp blksize 512 windowsize 16 big.bin", &c);
    fetches += 3;
    bytes += 3 * BIG as u64;

    let s = f.wait_status("all transfers done", |s| count(s, "active") == 0 && count(s, "completed") == fetches);
    assert_eq!(count(&s, "failed"), 0, "{s:#}");
    assert!(count(&s, "bytes_sent") >= bytes, "{s:#}");
    assert_eq!(s["serving"], true);
    let out = f.lab.coresvc(["status"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tftp     serving on 10.10.0.1:69 (mgmt), 10.20.0.1:69 (dvnt), 10.30.0.1:69 (dvntm)"),
        "{text}"
    );
    assert!(text.contains(&format!("0 active, {fetches} completed, 0 failed")), "{text}");
}

#[test]
fn netascii_is_converted_both_ways() {
    let f = Fixture::start(|c| c);
    let text = b"menu\nlabel linux\r\n  kernel vmlinuz\rend\n".repeat(300);
    f.put("menu.txt", &text);
    // tftp-hpa's default mode is netascii; it turns CR LF back into LF and CR NUL into CR.
    let o = f.out.join("menu.txt");
    let c = f.client(&["tftp", SERVER, "-c", "get", "menu.txt", o.to_str().unwrap()]);
    assert_same(&o, &text, "tftp-hpa netascii", &c);
    // On the wire: CR LF for every LF, CR NUL for every bare CR.
    let wire = f.raw("dvnt-client").fetch(b"menu.txt", "NetASCII", &[("blksize", "100"), ("tsize", "0")]).unwrap();
    let encoded = coresvc::tftp::netascii::encode(&text);
    assert!(wire == encoded, "netascii on the wire differs ({} vs {} bytes)", wire.len(), encoded.len());
    // Another mode is refused with a clear error.
    let e = f.raw("dvnt-client").fetch(b"menu.txt", "mail", &[]).unwrap_err();
    assert_eq!(e.0, ErrorCode::IllegalOperation);
    assert!(e.1.contains("octet or netascii"), "{e:?}");
}

#[test]
fn write_requests_are_refused() {
    let f = Fixture::start(|c| c);
    let local = f.out.join("upload.bin");
    fs::write(&local, b"not for the server").unwrap();
    let c = f.client(&["tftp", "-m", "octet", SERVER, "-c", "put", local.to_str().unwrap(), "upload.bin"]);
    let said = format!("{}{}", String::from_utf8_lossy(&c.stdout), String::from_utf8_lossy(&c.stderr));
    assert!(said.contains("read-only"), "tftp-hpa shows the reason: {said}");
    assert!(!f.root.join("upload.bin").exists());
    let s = f.wait_status("refusal counted", |s| refusals(s, "write-request") == 1);
    assert_eq!(count(&s, "completed"), 0);
    assert!(f.lab.log().contains("reason=\"write-request\""), "{}", f.lab.log_tail(20));
}

#[test]
fn every_traversal_trick_is_refused_and_logged() {
    let f = Fixture::start(|c| c);
    let secret = f.lab.paths.run_dir.join("secret");
    fs::write(&secret, b"TOP-SECRET").unwrap();
    f.put("sub/file", b"inner");
    let link = |target: &Path, name: &str| std::os::unix::fs::symlink(target, f.root.join(name)).unwrap();
    link(Path::new("../secret"), "rel-out");
    link(&secret, "abs-out");
    link(Path::new("/etc"), "etc-link");
    link(Path::new("/proc/self/root"), "proc-link");
    link(Path::new("sub/file"), "inside-link");
    let mknod = |name: &str, kind: u32, dev: libc::dev_t| {
        let p = std::ffi::CString::new(f.root.join(name).to_str().unwrap()).unwrap();
        // SAFETY: mknod with a valid path.
        assert_eq!(unsafe { libc::mknod(p.as_ptr(), kind | 0o644, dev) }, 0, "mknod {name}");
    };
    mknod("fifo", libc::S_IFIFO, 0);
    // /dev/zero's numbers: a server that opened it would stream zeros forever.
    mknod("zero", libc::S_IFCHR, libc::makedev(1, 5));

    let access = ErrorCode::AccessViolation;
    let missing = ErrorCode::FileNotFound;
    let cases: &[(&[u8], ErrorCode, &str)] = &[
        (b"../secret", access, "parent-component"),
        (b"sub/../../secret", access, "parent-component"),
        (b"..", access, "parent-component"),
        (b"sub/file/..", access, "parent-component"),
        (b"/etc/passwd", access, "absolute-path"),
        (b"//etc/passwd", access, "absolute-path"),
        (b"rel-out", access, "outside-root"),
        (b"abs-out", access, "outside-root"),
        (b"etc-link/passwd", access, "outside-root"),
        (b"proc-link/etc/passwd", access, "outside-root"),
        (b"sub", access, "not-a-regular-file"),
        (b".", access, "not-a-regular-file"),
        (b"fifo", access, "not-a-regular-file"),
        (b"zero", access, "not-a-regular-file"),
        (b"missing", missing, "not-found"),
        (b"..\\secret", missing, "not-found"),
        (b"%2e%2e/secret", missing, "not-found"),
        (b"", missing, "empty-name"),
    ];
    let raw = f.raw("dvnt-client");
    for (name, code, _) in cases {
        let shown = String::from_utf8_lossy(name);
        match raw.fetch(name, "octet", &[]) {
            Ok(bytes) => panic!("{shown:?} was served: {:?}", String::from_utf8_lossy(&bytes)),
            Err((c, m)) => assert_eq!(c, *code, "{shown:?}: {m}"),
        }
    }
    // A real client, too.
    let o = f.out.join("secret");
    let c = f.tftp_hpa("../secret", &o);
    assert!(String::from_utf8_lossy(&c.stdout).contains("Error code 2: '..' is not allowed"), "{c:?}");
    assert!(fs::read(&o).unwrap_or_default().is_empty());
    // Links that stay inside are fine.
    assert_eq!(raw.fetch(b"inside-link", "octet", &[]).unwrap(), b"inner");

    let s = f.wait_status("refusals counted", |s| refusals(s, "parent-component") == 5);
    for reason in ["parent-component", "absolute-path", "outside-root", "not-a-regular-file", "not-found", "empty-name"]
    {
        let want = cases.iter().filter(|c| c.2 == reason).count() as u64 + u64::from(reason == "parent-component");
        assert_eq!(refusals(&s, reason), want, "{reason}: {s:#}");
    }
    let log = f.lab.log();
    assert_eq!(log.matches("tftp: refused").count(), cases.len() + 1, "every refusal is logged:\n{log}");
    assert!(!log.contains("TOP-SECRET"));
}

#[test]
fn with_absolute_paths_from_the_root_a_leading_slash_stays_inside() {
    // GRUB asks for `/grub/...` under its network prefix.
    let f = Fixture::start(|c| c.replace("absolute_paths = \"refuse\"", "absolute_paths = \"root\""));
    let secret = f.lab.paths.run_dir.join("secret");
    fs::write(&secret, b"TOP-SECRET").unwrap();
    f.put("grub/grub.cfg", b"set timeout=1\n");
    let o = f.out.join("grub.cfg");
    let c = f.tftp_hpa("/grub/grub.cfg", &o);
    assert_same(&o, b"set timeout=1\n", "tftp-hpa /grub/grub.cfg", &c);
    let raw = f.raw("dvnt-client");
    assert_eq!(raw.fetch(b"//grub/grub.cfg", "octet", &[]).unwrap(), b"set timeout=1\n");
    for (name, code) in [
        (&b"/../secret"[..], ErrorCode::AccessViolation),
        (b"/etc/passwd", ErrorCode::FileNotFound),
        (b"/", ErrorCode::FileNotFound),
    ] {
        match raw.fetch(name, "octet", &[]) {
            Ok(bytes) => {
                panic!("{:?} was served: {:?}", String::from_utf8_lossy(name), String::from_utf8_lossy(&bytes))
            }
            Err((c, m)) => assert_eq!(c, code, "{:?}: {m}", String::from_utf8_lossy(name)),
        }
    }
    assert_eq!(refusals(&f.tftp_status(), "absolute-path"), 0);
}

#[test]
fn one_client_cannot_take_every_transfer_slot() {
    let f = Fixture::start(|c| c.replace("max_transfers_per_client = 16", "max_transfers_per_client = 1"));
    f.put("a.bin", &content(100_000, 3));
    f.put("b.bin", b"small");
    // A transfer its client never acknowledges holds the client's one slot
    // until it is given up.
    let hog = f.raw("dvnt-client");
    hog.rrq(b"a.bin", "octet", &[]);
    let _ = hog.recv();
    f.wait_status("the first transfer runs", |s| count(s, "active") == 1);
    let same_client = f.raw("dvnt-client");
    match same_client.fetch(b"b.bin", "octet", &[]) {
        Ok(_) => panic!("a second transfer for the same client"),
        Err((code, m)) => assert_eq!(
            (code, m.as_str()),
            (ErrorCode::NotDefined, "too many transfers from this client: try again later")
        ),
    }
    // Another client is served meanwhile.
    let mut other = f.raw("provisioner");
    other.server = "10.10.0.1:69".parse().unwrap();
    assert_eq!(other.fetch(b"b.bin", "octet", &[]).unwrap(), b"small");
    let s = f.tftp_status();
    assert_eq!(refusals(&s, "client-busy"), 1, "{s:#}");
    assert_eq!(refusals(&s, "busy"), 0);
}

#[test]
fn malformed_datagrams_to_port_69_cost_nothing() {
    let f = Fixture::start(|c| c);
    f.put("ok.bin", b"still fine");
    let raw = f.raw("dvnt-client");
    for junk in
        [&b""[..], b"\xff", b"\x00\x01no-terminator", b"\x00\x04\x00\x01", b"\x00\x05\x00\x01oops\x00", b"\x00\x09"]
    {
        raw.sock.send_to(junk, raw.server).unwrap();
    }
    f.wait_status("malformed counted", |s| refusals(s, "malformed") == 6);
    assert_eq!(raw.fetch(b"ok.bin", "octet", &[]).unwrap(), b"still fine", "the server still serves");
}

#[test]
fn lost_packets_still_complete() {
    let f = Fixture::start(|c| c);
    let data = content(1_500_000, 7);
    f.put("lossy.bin", &data);
    // 5% of the datagrams each way between dvnt-client and coresvc vanish,
    // on arrival (a drop on output would be an error for the sender).
    let loss = |node: &str, from: &str| {
        let rule = format!(
            "table inet coresvc_loss {{\n  chain in {{\n    type filter hook input priority 0;\n    \
             ip saddr {from} meta l4proto udp numgen random mod 100 < 5 counter drop\n  }}\n}}\n"
        );
        f.lab.nft(node, &rule).unwrap();
    };
    loss("dvnt-client", SERVER);
    loss("gw", "10.20.0.50");
    // tftp-hpa in lock-step, retransmitting its request and ACKs after 1 s.
    let o = f.out.join("hpa");
    let script = format!("mode octet\nrexmt 1\ntimeout 120\nget lossy.bin {}\n", o.display());
    let c = {
        use std::{io::Write as _, process::Stdio};
        let mut child = f
            .lab
            .cmd("dvnt-client", ["tftp", SERVER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    assert_same(&o, &data, "tftp-hpa through 5% loss", &c);
    // atftp with 16-block windows. It restarts its 5 s timer on every
    // packet, even a duplicate it ignores, so when its ACK is lost twice it
    // asks again only 5 s after the server's last retransmission: the
    // server must still be there (it used to give up first, in about one
    // run in twenty under load).
    let o = f.out.join("atftp");
    let c = f.atftp("lossy.bin", &o, 1468, 16);
    assert_same(&o, &data, "atftp windowsize 16 through 5% loss", &c);

    for node in ["dvnt-client", "gw"] {
        let rules = f.lab.exec(node, ["nft", "list", "table", "inet", "coresvc_loss"]).unwrap();
        let rules = String::from_utf8_lossy(&rules.stdout);
        assert!(rules.contains("counter packets") && !rules.contains("counter packets 0 bytes"), "{node}:\n{rules}");
    }
    // A transfer whose final ACK was lost ends as failed on this side: the
    // client is done and gone, which the server cannot tell from a lost one.
    let s = f.wait_status("transfers over", |s| count(s, "active") == 0);
    assert!(count(&s, "completed") >= 1, "{s:#}");
    assert!(count(&s, "retransmissions") > 0, "{s:#}");
}

#[test]
fn not_served_on_the_uplink() {
    let f = Fixture::start(|c| c);
    f.put("boot.bin", b"segment only");
    let try_fetch = |server: &str| {
        let url = format!("tftp://{server}/boot.bin");
        f.lab.exec("upstream", ["curl", "-sS", "--max-time", "5", "-o", "/dev/null", &url]).unwrap()
    };
    assert!(!try_fetch("192.0.2.2").status.success(), "the uplink address answers TFTP");
    // Even a segment address reached through the uplink finds no server.
    let r = f.lab.exec("upstream", ["ip", "route", "add", "10.20.0.0/24", "via", "192.0.2.2"]).unwrap();
    assert!(r.status.success());
    assert!(!try_fetch(SERVER).status.success(), "a segment address answers TFTP through the uplink");
    // Every TFTP socket is tied to a segment interface.
    let ss = f.lab.exec("gw", ["ss", "-uln", "sport", "= :69"]).unwrap();
    let ss = String::from_utf8_lossy(&ss.stdout);
    let lines: Vec<&str> = ss.lines().skip(1).collect();
    assert_eq!(lines.len(), 3, "{ss}");
    for want in ["10.10.0.1%mgmt0:69", "10.20.0.1%dvnt0:69", "10.30.0.1%dvntm0:69"] {
        assert!(ss.contains(want), "{want} in\n{ss}");
    }
    let s = f.tftp_status();
    assert_eq!(count(&s, "completed") + count(&s, "failed") + count(&s, "active"), 0, "{s:#}");
    // The segment itself is served.
    let o = f.out.join("boot.bin");
    let c = f.curl("boot.bin", &o, 512);
    assert_same(&o, b"segment only", "curl on the segment", &c);
}

#[test]
fn production_mode_serves_only_with_in_production() {
    let production = |c: String| c.replacen("authority = \"bootstrap\"", "authority = \"production\"", 1);
    let f = Fixture::start(production);
    f.put("boot.bin", b"x");
    let s = f.tftp_status();
    assert_eq!(s["serving"], false, "{s:#}");
    assert_eq!(s["listening"].as_array().unwrap().len(), 0);
    assert!(f.curl_fails(SERVER) && f.curl_fails("10.20.0.2"));
    let text = String::from_utf8_lossy(&f.lab.coresvc(["status"]).unwrap().stdout).into_owned();
    assert!(text.contains("not serving in this authority mode"), "{text}");
    drop(f);

    let f = Fixture::prepare(|c| production(c).replacen("in_production = false", "in_production = true", 1));
    // In production mode coresvc answers on the segment's reserved address.
    let r = f.lab.exec("gw", ["ip", "addr", "add", "10.20.0.2/24", "dev", "dvnt0"]).unwrap();
    assert!(r.status.success());
    let f = f.run();
    f.put("boot.bin", b"production");
    let o = f.out.join("b");
    let c = f.client(&["curl", "-sS", "--max-time", "10", "-o", o.to_str().unwrap(), "tftp://10.20.0.2/boot.bin"]);
    assert_same(&o, b"production", "curl from the reserved address", &c);
    let listening: Vec<String> = f.tftp_status()["listening"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["address"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listening, ["10.10.0.2:69", "10.20.0.2:69", "10.30.0.2:69"]);
    assert!(f.curl_fails(SERVER), "not on the gateway address");
}

#[test]
fn edk2_tsize_probe_and_abort_is_quiet_and_counted() {
    let f = Fixture::start(|c| c);
    let data = content(200_000, 3);
    f.put("ipxe.efi", &data);
    let raw = f.raw("dvnt-client");
    // EDK2's first request: learn the size, then refuse the OACK with error 8.
    raw.rrq(b"ipxe.efi", "octet", &[("blksize", "1468"), ("tsize", "0")]);
    let (p, from) = raw.recv();
    let Repr::Oack { options } = Repr::parse(&p).unwrap() else { panic!("{p:?}") };
    assert!(options.contains(&(&b"tsize"[..], &b"200000"[..])), "{options:?}");
    raw.send(from, &Repr::Error { code: ErrorCode::OptionRefused, message: b"User aborted the transfer" });
    // The probe's OACK went to an address that had not acknowledged
    // anything: it is never sent again, however late the abort arrives.
    let s = f.wait_status("the probe aborted", |s| count(s, "active") == 0 && count(s, "aborted") == 1);
    assert_eq!((count(&s, "option_aborts"), count(&s, "failed")), (1, 0), "{s:#}");
    assert_eq!(count(&s, "retransmissions"), 0, "{s:#}");
    // Then the real download (its retransmissions, if a loaded machine
    // delays an ACK past the timer, are the timer's business, not checked).
    let got = raw.fetch(b"ipxe.efi", "octet", &[("blksize", "1468")]).unwrap();
    assert!(got == data);
    let s = f.wait_status("both transfers over", |s| count(s, "active") == 0 && count(s, "completed") == 1);
    assert_eq!((count(&s, "aborted"), count(&s, "option_aborts"), count(&s, "failed")), (1, 1, 0), "{s:#}");
    let log = f.lab.log();
    assert!(!log.lines().any(|l| l.contains("WARN") && l.contains("tftp")), "no warning for a normal abort:\n{log}");
}

#[test]
fn duplicate_acks_never_trigger_duplicate_data() {
    let f = Fixture::start(|c| c);
    f.put("f.bin", &content(512 * 6, 5));
    let raw = f.raw("dvnt-client");
    // RFC 2349 timeout of 30 s: no retransmission by the timer during this test.
    raw.rrq(b"f.bin", "octet", &[("timeout", "30")]);
    let (p, tid) = raw.recv();
    assert!(matches!(Repr::parse(&p).unwrap(), Repr::Oack { .. }));
    raw.ack(tid, 0);
    let mut seen = Vec::new();
    for block in 1..=7u16 {
        let (p, _) = raw.recv();
        let Repr::Data { block: b, .. } = Repr::parse(&p).unwrap() else { panic!("{p:?}") };
        seen.push(b);
        // Every ACK three times: the Sorcerer's Apprentice would double every block.
        for _ in 0..3 {
            raw.ack(tid, block);
        }
    }
    assert_eq!(seen, [1, 2, 3, 4, 5, 6, 7], "each block exactly once, in order");
    let s = f.wait_status("done", |s| count(s, "completed") == 1);
    assert_eq!(count(&s, "retransmissions"), 0);
}

#[test]
fn the_transfer_limit_refuses_the_excess_as_busy() {
    let f = Fixture::start(|c| c.replacen("max_transfers = 512", "max_transfers = 1", 1));
    f.put("a.bin", &content(5000, 1));
    let first = f.raw("dvnt-client");
    first.rrq(b"a.bin", "octet", &[]);
    let (p, _) = first.recv();
    assert!(matches!(Repr::parse(&p).unwrap(), Repr::Data { block: 1, .. }));
    // The first transfer waits for its ACK; a second one finds no slot.
    let e = f.raw("dvnt-client").fetch(b"a.bin", "octet", &[]).unwrap_err();
    assert_eq!(e.0, ErrorCode::NotDefined);
    assert!(e.1.contains("try again"), "{e:?}");
    assert_eq!(refusals(&f.tftp_status(), "busy"), 1);
}

#[test]
fn two_hundred_concurrent_transfers_all_complete() {
    // One client namespace stands for two hundred machines here.
    let f = Fixture::start(|c| c.replace("max_transfers_per_client = 16", "max_transfers_per_client = 256"));
    let n = 200;
    let files: Vec<Vec<u8>> = (0..8).map(|i| content(150_000 + i * 1000, i as u64)).collect();
    for (i, d) in files.iter().enumerate() {
        f.put(&format!("c{i}.bin"), d);
    }
    let children: Vec<_> = (0..n)
        .map(|k| {
            let o = f.out.join(format!("c{k}"));
            let url = format!("tftp://{SERVER}/c{}.bin", k % files.len());
            f.lab
                .cmd("dvnt-client", ["curl", "-sS", "--max-time", "120", "--tftp-blksize", "1468", "-o"])
                .arg(&o)
                .arg(url)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (k, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert_same(&f.out.join(format!("c{k}")), &files[k % files.len()], &format!("concurrent fetch {k}"), &out);
    }
    let s = f.wait_status("all done", |s| count(s, "active") == 0 && count(s, "completed") == n as u64);
    assert_eq!(count(&s, "failed"), 0, "{s:#}");
}
