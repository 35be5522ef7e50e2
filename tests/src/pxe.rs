//! Real PXE clients: a diskless qemu guest whose firmware (SeaBIOS with
//! iPXE's option ROM, or OVMF's own PXE) boots from coresvc over a tap
//! device inside a lab namespace, and the boot files it is served.
//!
//! The guest's kernel is Debian's (the cloud flavour: few drivers to probe)
//! and its init is Debian's static busybox, both taken from Debian packages
//! by `cargo xtask setup` into [`GUEST_CACHE`]; the initramfs around busybox
//! is made here, so what the guest runs is small and says when it ran.
//!
//! Safety: the tap device is created inside a lab namespace and bridged
//! there to the node's own veth; the qemu process runs in that namespace and
//! is killed when its [`Guest`] is dropped (and dies with the process that
//! started it).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{Lab, run};

/// Where `cargo xtask setup` puts the guest's files, extracted from Debian
/// packages: `vmlinuz` (linux-image-*-cloud-amd64) and `busybox`
/// (busybox-static, statically linked).
pub const GUEST_CACHE: &str = "/var/cache/coresvc/pxe-guest";

/// The guest kernel, fetched by `cargo xtask setup`.
pub fn guest_kernel() -> PathBuf {
    Path::new(GUEST_CACHE).join("vmlinuz")
}

/// The guest's static busybox, fetched by `cargo xtask setup`.
pub fn guest_busybox() -> PathBuf {
    Path::new(GUEST_CACHE).join("busybox")
}

/// iPXE binaries that PXE firmware chainloads (package `ipxe`).
pub const IPXE_DIR: &str = "/usr/lib/ipxe";
/// OVMF (package `ovmf`): UEFI firmware for qemu, with a PXE client.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const QEMU: &str = "qemu-system-x86_64";

/// What the guest's init prints when it runs: proof that the kernel started
/// and unpacked the initramfs it was served.
pub const INIT_MARKER: &str = "coresvc-pxe-guest: init from the served initramfs is running";

/// What [`fill_boot_root`] needs and is missing here, as one sentence
/// naming what installs it; `None` when all is in place.
pub fn missing_boot_files() -> Option<String> {
    let missing = missing_files(&[
        (guest_kernel(), "the guest kernel"),
        (guest_busybox(), "the guest's busybox"),
        (Path::new(IPXE_DIR).join("ipxe.efi"), "iPXE (package ipxe)"),
        (Path::new(IPXE_DIR).join("undionly.kpxe"), "iPXE (package ipxe)"),
    ]);
    (!missing.is_empty()).then(|| format!("missing: {}; `cargo xtask setup` installs them", missing.join(", ")))
}

/// Everything a qemu guest's boot needs and is missing here (boot files,
/// qemu, iPXE's ROMs, OVMF for `uefi`); `None` when all is in place.
pub fn missing_prerequisites(uefi: bool) -> Option<String> {
    let mut files = vec![
        (guest_kernel(), "the guest kernel"),
        (guest_busybox(), "the guest's busybox"),
        (Path::new(IPXE_DIR).join("ipxe.efi"), "iPXE (package ipxe)"),
        (Path::new(IPXE_DIR).join("undionly.kpxe"), "iPXE (package ipxe)"),
        (PathBuf::from("/usr/lib/ipxe/qemu/efi-virtio.rom"), "iPXE's qemu ROMs (package ipxe-qemu)"),
    ];
    if uefi {
        files.push((PathBuf::from(OVMF_CODE), "OVMF (package ovmf)"));
    }
    let mut missing = missing_files(&files);
    if Command::new(QEMU).arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        missing.push(format!("{QEMU} (package qemu-system-x86)"));
    }
    (!missing.is_empty()).then(|| format!("missing: {}; `cargo xtask setup` installs them", missing.join(", ")))
}

fn missing_files(files: &[(PathBuf, &str)]) -> Vec<String> {
    files.iter().filter(|(p, _)| !p.is_file()).map(|(p, what)| format!("{what} at {}", p.display())).collect()
}

/// What the guest's init does after printing [`INIT_MARKER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEnd {
    /// Powers the machine off, so qemu exits by itself (the test).
    PowerOff,
    /// Mounts /proc and /sys and gives a shell on the console (the Vagrant
    /// lab's substrate hosts: `virsh console` to look around).
    Shell,
}

/// An initramfs (newc cpio, uncompressed) holding `/init` (a busybox shell
/// script), `/bin/busybox` and the `/dev/console` node the kernel opens for
/// init. The script prints [`INIT_MARKER`], then does what `end` says.
pub fn initramfs(busybox: &[u8], end: GuestEnd) -> Vec<u8> {
    let then = match end {
        GuestEnd::PowerOff => "/bin/busybox poweroff -f\n",
        GuestEnd::Shell => {
            "/bin/busybox mkdir -p /proc /sys /sbin /usr/bin /usr/sbin\n\
             /bin/busybox --install -s\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sysfs /sys\n\
             echo 'busybox shell; poweroff -f ends it'\n\
             exec sh\n"
        }
    };
    let init = format!("#!/bin/busybox sh\n/bin/busybox echo\n/bin/busybox echo '{INIT_MARKER}'\n{then}");
    let mut w = Cpio::default();
    w.entry("dev", 0o040_755, (0, 0), &[]);
    w.entry("dev/console", 0o020_600, (5, 1), &[]);
    w.entry("bin", 0o040_755, (0, 0), &[]);
    w.entry("bin/busybox", 0o100_755, (0, 0), busybox);
    w.entry("init", 0o100_755, (0, 0), init.as_bytes());
    w.finish()
}

/// A newc ("070701") cpio archive, the format the kernel unpacks.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

/// The iPXE script coresvc serves: it echoes the guest's address, its DHCP
/// server and its TFTP server (one short line: consoles wrap at 80 columns),
/// then fetches kernel and initramfs by TFTP from the server the script came
/// from and boots. The kernel command line carries `token` (the kernel
/// prints its command line, so the console shows that this script, and not
/// another, booted it) and `initrd=`: under UEFI the kernel's EFI stub loads
/// the initramfs itself, by that name, from iPXE's file system (this iPXE
/// predates the LoadFile2 initrd protocol).
pub fn ipxe_script(token: &str) -> String {
    format!(
        "#!ipxe\n\
         echo coresvc script: ip ${{ip}} dhcp ${{dhcp-server}} files ${{next-server}}\n\
         kernel vmlinuz initrd=initramfs.cpio console=ttyS0,115200 panic=-1 coresvc.boot={token}\n\
         initrd initramfs.cpio\n\
         boot\n"
    )
}

/// Fills a TFTP root with what a PXE boot needs: iPXE for chainloading
/// (`undionly.kpxe`, `ipxe.efi`), the script `boot.ipxe`, the kernel
/// `vmlinuz` and `initramfs.cpio`. Files are copied: TFTP serves only
/// what is beneath its root.
pub fn fill_boot_root(root: &Path, token: &str, end: GuestEnd) -> Result<()> {
    fs::create_dir_all(root)?;
    for f in ["undionly.kpxe", "ipxe.efi"] {
        let from = Path::new(IPXE_DIR).join(f);
        fs::copy(&from, root.join(f)).with_context(|| format!("copying {}", from.display()))?;
    }
    fs::copy(guest_kernel(), root.join("vmlinuz")).context("copying the guest kernel")?;
    let busybox = fs::read(guest_busybox()).context("reading the guest's busybox")?;
    fs::write(root.join("initramfs.cpio"), initramfs(&busybox, end))?;
    fs::write(root.join("boot.ipxe"), ipxe_script(token))?;
    Ok(())
}

/// The firmware the guest boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS and the NIC's iPXE option ROM (package ipxe-qemu): the ROM
    /// is iPXE itself, so it asks for the script straight away.
    BiosIpxeRom,
    /// OVMF (UEFI) and its own PXE client (no option ROM): it gets
    /// `ipxe.efi` by TFTP, which asks again as iPXE and gets the script.
    UefiPxe,
}

/// How qemu runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: what works here (under nested KVM, SeaBIOS'
    /// iPXE ROM stalled at its prompt and OVMF printed nothing).
    Tcg,
    Kvm,
}

impl Accel {
    /// `CORESVC_PXE_ACCEL=kvm|tcg`; TCG unless asked.
    pub fn from_env() -> Accel {
        match std::env::var("CORESVC_PXE_ACCEL").as_deref() {
            Ok("kvm") => Accel::Kvm,
            _ => Accel::Tcg,
        }
    }
}

/// Prints a progress line of a boot on stderr, also while the test harness
/// captures test output (a boot takes a while; its steps show as they come).
pub fn progress(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "pxe: {msg}");
}

/// A diskless qemu guest on a tap device in a lab node's namespace. Dropping
/// it kills qemu.
pub struct Guest {
    child: Option<Child>,
    /// The guest's serial console (and, for BIOS, the firmware's and iPXE's
    /// screen, through SeaBIOS' serial console).
    pub console: PathBuf,
    pub mac: String,
}

impl Lab {
    /// Puts a bridge in `node`'s namespace with the node's own link and a new
    /// tap device `tap` as ports, so a qemu guest on the tap is on the node's
    /// segment (the node becomes the segment's switch; its address is
    /// removed).
    pub fn tap_on_segment(&self, node: &str, tap: &str) -> Result<()> {
        let link = self.topo.link_of(node).context("node has no link")?.clone();
        let ns = self.ns(node);
        let ip = |args: &[&str]| run(Command::new("ip").args(["-n", &ns]).args(args));
        ip(&["addr", "flush", "dev", &link.iface])?;
        ip(&["link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"])?;
        ip(&["link", "set", &link.iface, "master", "br0"])?;
        ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        ip(&["link", "set", tap, "master", "br0"])?;
        ip(&["link", "set", tap, "up"])?;
        ip(&["link", "set", "br0", "up"])?;
        Ok(())
    }

    /// Starts a diskless guest with `mac` on the tap device `tap` of `node`
    /// (see [`Lab::tap_on_segment`]), booting from the network.
    pub fn boot_guest(&self, node: &str, tap: &str, mac: &str, fw: Firmware, accel: Accel) -> Result<Guest> {
        let dir = self.paths.run_dir.join(format!("guest-{tap}"));
        fs::create_dir_all(&dir)?;
        let console = dir.join("console.log");
        fs::write(&console, b"")?;
        let mut args: Vec<String> = Vec::new();
        let mut a = |s: &str| args.push(s.to_string());
        a("-name");
        a(&format!("coresvc-pxe-{}", self.prefix));
        a("-machine");
        a(match (fw, accel) {
            (Firmware::BiosIpxeRom, Accel::Tcg) => "pc,accel=tcg",
            (Firmware::BiosIpxeRom, Accel::Kvm) => "pc,accel=kvm",
            (Firmware::UefiPxe, Accel::Tcg) => "q35,accel=tcg",
            (Firmware::UefiPxe, Accel::Kvm) => "q35,accel=kvm",
        });
        for s in ["-m", "512", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"] {
            a(s);
        }
        a("-serial");
        a(&format!("file:{}", console.display()));
        a("-netdev");
        a(&format!("tap,id=n0,ifname={tap},script=no,downscript=no"));
        match fw {
            Firmware::BiosIpxeRom => {
                // SeaBIOS copies the screen (its own, iPXE's) to the serial
                // port named by fw_cfg etc/sercon-port (a little-endian
                // integer): the console log shows the whole boot.
                let port = dir.join("sercon-port");
                fs::write(&port, 0x3f8u16.to_le_bytes())?;
                a("-fw_cfg");
                a(&format!("name=etc/sercon-port,file={}", port.display()));
                a("-device");
                a(&format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1"));
            }
            Firmware::UefiPxe => {
                let vars = dir.join("OVMF_VARS.fd");
                fs::copy(OVMF_VARS, &vars).context("copying OVMF's variable store")?;
                a("-drive");
                a(&format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"));
                a("-drive");
                a(&format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
                // No option ROM: OVMF's own virtio-net driver and PXE client.
                a("-device");
                a(&format!("virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1"));
            }
        }
        let mut c = self.cmd(node, [QEMU]);
        c.args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(fs::File::create(dir.join("qemu.stderr"))?);
        {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: prctl is async-signal-safe. qemu dies with the thread
            // that started it, also when a test run is killed.
            unsafe {
                c.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = c.spawn().context("starting qemu-system-x86_64 (package qemu-system-x86)")?;
        Ok(Guest { child: Some(child), console, mac: mac.to_string() })
    }
}

impl Guest {
    /// The console output so far.
    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// qemu's own error output.
    pub fn qemu_stderr(&self) -> String {
        fs::read_to_string(self.console.with_file_name("qemu.stderr")).unwrap_or_default()
    }

    /// Waits until the console shows each of `steps` in turn (printing each
    /// as it is reached), or qemu exits, or `timeout` passes.
    pub fn wait_for_steps(&mut self, steps: &[(&str, &str)], timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let mut next = 0;
        loop {
            let text = self.console_text();
            while next < steps.len() && text.contains(steps[next].1) {
                progress(&format!("{} [{:>5.1}s] {}", self.mac, start.elapsed().as_secs_f64(), steps[next].0));
                next += 1;
            }
            if next == steps.len() {
                return Ok(());
            }
            let exited = match self.child.as_mut() {
                Some(c) => c.try_wait()?,
                None => None,
            };
            if let Some(st) = exited {
                // The console file may have grown since it was read.
                if self.console_text().contains(steps[next].1) {
                    continue;
                }
                bail!("qemu exited ({st}) before: {}\nqemu: {}", steps[next].0, self.qemu_stderr().trim());
            }
            if start.elapsed() > timeout {
                bail!("not reached within {timeout:?}: {}", steps[next].0);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for qemu to exit by itself (the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let start = Instant::now();
        let child = self.child.as_mut().context("qemu is not running")?;
        loop {
            if let Some(st) = child.try_wait()? {
                self.child = None;
                return Ok(st);
            }
            if start.elapsed() > timeout {
                bail!("qemu did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initramfs_is_a_newc_archive_ending_in_a_trailer() {
        let a = initramfs(b"BUSYBOX", GuestEnd::PowerOff);
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        let text = String::from_utf8_lossy(&a);
        for name in ["dev/console\0", "bin/busybox\0", "init\0", "TRAILER!!!\0", INIT_MARKER] {
            assert!(text.contains(name), "{name:?} missing");
        }
        // The console node: a character device 5:1.
        let at = text.find("dev/console").unwrap() - 110;
        let hdr = &text[at..at + 110];
        assert_eq!(&hdr[14..22], "00002180", "mode 020600");
        assert_eq!(&hdr[78..86], "00000005");
        assert_eq!(&hdr[86..94], "00000001");
    }
}
