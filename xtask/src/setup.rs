//! `cargo xtask setup`: everything a fresh machine needs, idempotently.
//!
//! Steps (each checks first and does nothing when already done):
//! 1. Debian packages for the lab, the tests and the benchmarks;
//! 2. the nightly toolchain's `rust-src` (for `-Z build-std=core`);
//! 3. `bpf-linker`, built against the nightly toolchain's own LLVM;
//! 4. bpffs mounted at /sys/fs/bpf;
//! 5. the PXE guest's kernel and busybox, from Debian packages.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{cmd_output, cmd_status, home_dir, step};

/// The bpf-linker release that offers a feature per LLVM major (llvm-21, -22, -23).
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM_MAJORS: &[u32] = &[21, 22, 23];

/// Debian packages, by what needs them. Keep this list the only place where
/// a package the project relies on is named.
pub const DEBIAN_PACKAGES: &[(&str, &[&str])] = &[
    (
        "lab and dataplane inspection",
        &[
            "bpftool",
            "iproute2",
            "iputils-ping",
            "iputils-arping",
            "ethtool",
            "tcpdump",
            "nftables",
            "netcat-openbsd",
            "socat",
            "util-linux",
        ],
    ),
    // Clients the tests use, and the peers coresvc is compared with. The
    // peers' daemons never start on install (see policy-rc.d below); tests
    // and benchmarks start their own instances inside the lab.
    ("DNS clients and load", &["bind9-dnsutils", "knot-dnsutils", "dnsperf"]),
    // nsd: a second secondary of coresvc's zones (tests/tests/dns_xfr.rs).
    ("DNS peers", &["knot", "dnsmasq-base", "nsd"]),
    ("DHCP clients and load", &["isc-dhcp-client", "udhcpc", "dhcpcd", "kea-admin"]),
    // kea-ctrl-agent: the lease API (lease4-add, lease4-get-all) of the authority handoff tests.
    ("DHCP peers", &["kea-dhcp4-server", "kea-ctrl-agent"]),
    ("TFTP clients and peer", &["tftp-hpa", "atftp", "curl", "tftpd-hpa"]),
    ("forwarding and NAT load", &["iperf3", "netsniff-ng", "xdp-tools", "traceroute"]),
    // Floods and crafted attacks for the hardening tests (RST sweeps,
    // conntrack filling, spoofed sources).
    ("attack and fault tools", &["hping3", "python3-scapy"]),
    // A real firmware client: a diskless qemu guest that PXE boots from
    // coresvc (SeaBIOS with iPXE's ROMs, or OVMF's own PXE chaining iPXE).
    ("PXE boot test", &["qemu-system-x86", "ipxe-qemu", "ipxe", "ovmf"]),
    // `vagrant validate` of vagrant/Vagrantfile (libvirt provider checked by
    // the plugin); ruby runs the Vagrantfile for the topology check.
    ("Vagrant lab checks", &["vagrant", "vagrant-libvirt", "ruby"]),
    // The unit's limits checked against what the agent really calls, the
    // journal made append-only; python3 floods the control socket.
    ("service hardening checks", &["strace", "e2fsprogs", "python3"]),
];

/// Of DEBIAN_PACKAGES, those installed from `<release>-backports` on Debian
/// 12: this machine kind ships qemu-utils 10 from bookworm-backports, whose
/// Breaks on qemu-system-common (<< 8.0) make apt remove it for Debian 12's
/// qemu 7.2; the backported qemu-system-x86 matches it (and brings a newer
/// SeaBIOS). Elsewhere they come from the release like the others.
const FROM_BACKPORTS_ON_BOOKWORM: &[&str] = &["qemu-system-x86"];

/// The apt source for bookworm-backports, written when no source names it.
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/coresvc-bookworm-backports.sources";

/// The guest kernel's package: the cloud flavour (few drivers, boots fast
/// under emulation); a metapackage naming the current versioned one.
const GUEST_KERNEL_META: &str = "linux-image-cloud-amd64";
/// A statically linked busybox: the guest's init (the package is only
/// downloaded and unpacked, never installed: it conflicts with busybox).
const GUEST_BUSYBOX_PKG: &str = "busybox-static";

pub fn run(opts: &SetupOpts) -> Result<()> {
    if !is_root() {
        bail!(
            "cargo xtask setup needs root (it installs packages, mounts bpffs and later creates \
             network namespaces); run it as root"
        );
    }
    debian_packages(opts)?;
    rust_src()?;
    lint_components()?;
    bpf_linker()?;
    bpffs()?;
    pxe_guest()?;
    step("setup", "done: toolchain, packages, bpffs and the PXE guest are in place");
    Ok(())
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct SetupOpts {
    /// Skip Debian packages (for machines where apt is not available).
    #[arg(long)]
    pub no_packages: bool,
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn debian_packages(opts: &SetupOpts) -> Result<()> {
    if opts.no_packages {
        step("packages", "skipped (--no-packages)");
        return Ok(());
    }
    let wanted: Vec<&str> = DEBIAN_PACKAGES.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let missing: Vec<&str> = wanted.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        step("packages", &format!("all {} Debian packages present", wanted.len()));
        return Ok(());
    }
    step("packages", &format!("installing {}", missing.join(" ")));
    // Packages such as dnsmasq or kea start their daemon on install where an
    // init system runs; the lab starts its own instances, so forbid that
    // for the duration of the install, unless the machine already forbids it.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let made_policy = !policy.exists();
    if made_policy {
        fs::write(policy, "#!/bin/sh\n# written by cargo xtask setup for the duration of an install\nexit 101\n")
            .context("writing /usr/sbin/policy-rc.d")?;
        set_mode(policy, 0o755)?;
    }
    let backports = if debian_codename().as_deref() == Some("bookworm") {
        missing.iter().copied().filter(|p| FROM_BACKPORTS_ON_BOOKWORM.contains(p)).collect()
    } else {
        Vec::new()
    };
    let result = (|| -> Result<()> {
        if !backports.is_empty() {
            backports_source()?;
        }
        let mut update = Command::new("apt-get");
        update.args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive");
        cmd_status(&mut update).context("apt-get update")?;
        if !backports.is_empty() {
            let mut install = Command::new("apt-get");
            install
                .args(["install", "-y", "-q", "--no-install-recommends", "-t", "bookworm-backports"])
                .args(&backports)
                .env("DEBIAN_FRONTEND", "noninteractive");
            cmd_status(&mut install).context("apt-get install -t bookworm-backports")?;
        }
        let rest: Vec<&str> = missing.iter().copied().filter(|p| !backports.contains(p)).collect();
        let mut install = Command::new("apt-get");
        install
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&rest)
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd_status(&mut install).context("apt-get install")
    })();
    if made_policy {
        let _ = fs::remove_file(policy);
    }
    result?;
    let still: Vec<&str> = missing.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if !still.is_empty() {
        bail!("apt-get finished but these packages are still missing: {}", still.join(" "));
    }
    Ok(())
}

/// `VERSION_CODENAME` of /etc/os-release.
fn debian_codename() -> Option<String> {
    let text = fs::read_to_string("/etc/os-release").ok()?;
    text.lines().find_map(|l| l.strip_prefix("VERSION_CODENAME=")).map(|v| v.trim_matches('"').to_string())
}

/// Adds Debian's bookworm-backports to apt's sources unless a source names it
/// already. Backports have a low priority: only packages asked for with
/// `-t bookworm-backports` come from there.
fn backports_source() -> Result<()> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(dir.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    if files.iter().any(|f| fs::read_to_string(f).is_ok_and(|t| t.contains("bookworm-backports"))) {
        return Ok(());
    }
    step("packages", &format!("adding bookworm-backports to apt's sources ({BACKPORTS_SOURCE})"));
    fs::write(
        BACKPORTS_SOURCE,
        "# written by cargo xtask setup: qemu-system-x86 matching the machine's qemu-utils\n\
         Types: deb\n\
         URIs: http://deb.debian.org/debian\n\
         Suites: bookworm-backports\n\
         Components: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
    )
    .with_context(|| format!("writing {BACKPORTS_SOURCE}"))
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

fn rustup() -> Command {
    Command::new("rustup")
}

fn rust_src() -> Result<()> {
    let toolchains = cmd_output(rustup().args(["toolchain", "list"])).context("rustup toolchain list")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        step("rust", "installing the nightly toolchain with rust-src");
        cmd_status(rustup().args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
        return Ok(());
    }
    let installed = cmd_output(rustup().args(["component", "list", "--installed", "--toolchain", "nightly"]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        step("rust", "nightly rust-src present");
        return Ok(());
    }
    step("rust", "adding rust-src to the nightly toolchain");
    cmd_status(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// rustfmt and clippy for the toolchain that builds the workspace: `cargo
/// xtask test` checks formatting and lints first.
fn lint_components() -> Result<()> {
    let installed = cmd_output(rustup().args(["component", "list", "--installed"])).context("rustup component list")?;
    let missing: Vec<&str> =
        ["rustfmt", "clippy"].into_iter().filter(|c| !installed.lines().any(|l| l.starts_with(c))).collect();
    if missing.is_empty() {
        step("rust", "rustfmt and clippy present");
        return Ok(());
    }
    step("rust", &format!("adding {}", missing.join(" ")));
    cmd_status(rustup().args(["component", "add"]).args(&missing))
}

/// What bpf-linker must be built against: the nightly rustc's LLVM.
struct NightlyLlvm {
    major: u32,
    /// The full version line, e.g. "22.1.4"; recorded in the stamp.
    version: String,
    /// `$(rustc +nightly --print sysroot)/lib/libLLVM.so.<...>`
    dylib: PathBuf,
}

fn nightly_llvm() -> Result<NightlyLlvm> {
    let vv = cmd_output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` printed no LLVM version")?
        .trim()
        .to_string();
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot parse LLVM version {version:?}"))?;
    let sysroot = cmd_output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let dylib = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{major}")) || n == format!("libLLVM-{major}.so"))
        })
        .with_context(|| format!("no libLLVM.so.{major}* in {}", lib.display()))?;
    Ok(NightlyLlvm { major, version, dylib })
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|| home_dir().join(".cargo")).join("bin")
}

/// Where bpf-linker finds the nightly's LLVM: a prefix with `lib/libLLVM.so`.
/// It lives beside cargo's own files (not in `target/`, which `cargo clean`
/// removes) because the linker keeps loading the library from it at run time.
fn llvm_prefix() -> PathBuf {
    cargo_bin_dir().parent().map(Path::to_path_buf).unwrap_or_default().join("coresvc-llvm-prefix")
}

fn bpf_linker() -> Result<()> {
    let llvm = nightly_llvm()?;
    if !BPF_LINKER_LLVM_MAJORS.contains(&llvm.major) {
        bail!(
            "the nightly toolchain uses LLVM {}, but bpf-linker {BPF_LINKER_VERSION} supports LLVM {:?}; \
             install a nightly with one of those, or raise BPF_LINKER_VERSION in xtask/src/setup.rs",
            llvm.version,
            BPF_LINKER_LLVM_MAJORS
        );
    }
    let stamp_path = llvm_prefix().join("stamp");
    let want_stamp = format!("bpf-linker {BPF_LINKER_VERSION} llvm {} {}\n", llvm.version, llvm.dylib.display());
    let linker = cargo_bin_dir().join("bpf-linker");
    let runs = Command::new(&linker).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if runs && fs::read_to_string(&stamp_path).ok().as_deref() == Some(want_stamp.as_str()) {
        step("bpf-linker", &format!("{BPF_LINKER_VERSION} present, built against LLVM {}", llvm.version));
        return Ok(());
    }
    step(
        "bpf-linker",
        &format!(
            "building {BPF_LINKER_VERSION} against the nightly's LLVM {} ({}); about a minute",
            llvm.version,
            llvm.dylib.display()
        ),
    );
    let prefix = llvm_prefix();
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let file_name = llvm.dylib.file_name().context("libLLVM path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(file_name)] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(&llvm.dylib, &link).with_context(|| format!("symlink {}", link.display()))?;
    }
    let mut install = Command::new("cargo");
    install
        .args(["install", "bpf-linker", "--force", "--locked", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{}", llvm.major))
        .env("LLVM_PREFIX", &prefix)
        // Build with the default (stable) toolchain even when invoked from a
        // directory with a toolchain override.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR");
    cmd_status(&mut install).context("cargo install bpf-linker")?;
    let out =
        cmd_output(Command::new(&linker).arg("--version")).context("bpf-linker was installed but does not run")?;
    fs::write(&stamp_path, want_stamp)?;
    step("bpf-linker", &format!("installed: {}", out.trim()));
    Ok(())
}

fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let _dev = f.next();
        f.next() == Some("/sys/fs/bpf") && f.next() == Some("bpf")
    }) {
        step("bpffs", "mounted at /sys/fs/bpf");
        return Ok(());
    }
    step("bpffs", "mounting bpffs at /sys/fs/bpf");
    fs::create_dir_all("/sys/fs/bpf").ok();
    cmd_status(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

/// The PXE boot test's guest files in [`coresvc_lab::pxe::GUEST_CACHE`]:
/// Debian's cloud kernel (`vmlinuz`) and static busybox (`busybox`), each
/// downloaded as a Debian package (`apt-get download`, nothing installed)
/// and unpacked; a stamp names the packages. Present files are kept.
fn pxe_guest() -> Result<()> {
    let dir = Path::new(coresvc_lab::pxe::GUEST_CACHE);
    let stamp = dir.join("stamp");
    let kernel = coresvc_lab::pxe::guest_kernel();
    let busybox = coresvc_lab::pxe::guest_busybox();
    if kernel.is_file() && busybox.is_file() && stamp.is_file() {
        let what = fs::read_to_string(&stamp).unwrap_or_default();
        step("pxe guest", &format!("present in {}: {}", dir.display(), what.trim().replace('\n', ", ")));
        return Ok(());
    }
    let kernel_pkg = match guest_kernel_package() {
        Ok(p) => p,
        Err(_) => {
            // An apt that never ran `update` knows no packages yet.
            cmd_status(Command::new("apt-get").args(["update", "-q"]))?;
            guest_kernel_package()?
        }
    };
    step("pxe guest", &format!("downloading {kernel_pkg} and {GUEST_BUSYBOX_PKG} into {}", dir.display()));
    let dl = dir.join("download");
    let _ = fs::remove_dir_all(&dl);
    fs::create_dir_all(&dl).with_context(|| format!("creating {}", dl.display()))?;
    cmd_status(
        Command::new("apt-get")
            .current_dir(&dl)
            // The download directory is root's: apt's sandbox user cannot write it.
            .args(["-q", "-o", "APT::Sandbox::User=root", "download", &kernel_pkg, GUEST_BUSYBOX_PKG]),
    )?;
    let deb = |prefix: &str| -> Result<PathBuf> {
        fs::read_dir(&dl)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{prefix}_"))))
            .with_context(|| format!("apt-get download left no {prefix}_*.deb in {}", dl.display()))
    };
    let version = kernel_pkg.trim_start_matches("linux-image-");
    extract(&deb(&kernel_pkg)?, &format!("./boot/vmlinuz-{version}"), &kernel)?;
    extract(&deb(GUEST_BUSYBOX_PKG)?, "./bin/busybox", &busybox)?;
    set_mode(&busybox, 0o755)?;
    let names: Vec<String> =
        fs::read_dir(&dl)?.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str().map(str::to_string)).collect();
    fs::write(&stamp, names.join("\n") + "\n")?;
    fs::remove_dir_all(&dl)?;
    step("pxe guest", &format!("{} and {} ready", kernel.display(), busybox.display()));
    Ok(())
}

/// The versioned kernel package the metapackage depends on.
fn guest_kernel_package() -> Result<String> {
    let out = cmd_output(Command::new("apt-cache").args(["depends", "--important", GUEST_KERNEL_META]))?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .with_context(|| format!("apt-cache depends {GUEST_KERNEL_META} names no linux-image package"))
}

/// Writes the member `member` of the Debian package `deb` to `to`.
fn extract(deb: &Path, member: &str, to: &Path) -> Result<()> {
    let tmp = to.with_extension("part");
    let script = "dpkg-deb --fsys-tarfile \"$1\" | tar -xOf - \"$2\" > \"$3\"";
    cmd_status(Command::new("sh").args(["-ec", script, "extract"]).arg(deb).arg(member).arg(&tmp))
        .with_context(|| format!("extracting {member} from {}", deb.display()))?;
    if fs::metadata(&tmp)?.len() == 0 {
        bail!("{member} of {} is empty", deb.display());
    }
    fs::rename(&tmp, to)?;
    Ok(())
}
