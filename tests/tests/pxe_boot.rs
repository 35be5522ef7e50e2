//! A real firmware client boots from coresvc: a diskless qemu guest on a tap
//! device bridged into the dvnt segment of a namespace lab (inside
//! dvnt-client's namespace) gets its address by DHCP, its boot program and
//! iPXE script by TFTP, then Debian's kernel and an initramfs by TFTP, and
//! the kernel starts and runs the initramfs' init, which powers the guest
//! off. The guest's serial console shows each step; coresvc's lease table
//! and TFTP log show the same from the server's side.
//!
//! Two firmwares: SeaBIOS with the iPXE option ROM (the ROM is iPXE, so it
//! asks for the script at once), and OVMF's own UEFI PXE client, which is
//! served `ipxe.efi`, chainloads it, and iPXE then asks again and gets the
//! script: PXE → iPXE → script → kernel and initramfs.
//!
//! qemu runs under TCG (software emulation) by default; `CORESVC_PXE_ACCEL=kvm`
//! tries KVM. Under this machine's nested KVM neither firmware got far:
//! SeaBIOS' iPXE ROM stopped at its "Press Ctrl-B" prompt and OVMF printed
//! nothing in 240 s, while under TCG each boot takes about half a minute
//! (most of it iPXE configuring its NIC).

use std::{fs, net::Ipv4Addr, time::Duration};

use coresvc_lab::{
    AgentOpts, Lab,
    pxe::{self, Accel, Firmware, Guest},
};
use serde_json::Value;

/// The whole boot, firmware to init, is given this long (TCG on a shared
/// 2-core machine); a boot that gets stuck fails with its console.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn token() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    format!("{:x}{:x}", std::process::id(), t.subsec_nanos())
}

/// A lab with coresvc serving `root` (its `tftp` directory) and the PXE
/// settings pointing iPXE at `boot.ipxe` there.
fn lab_serving_boot_files(token: &str) -> Lab {
    let mut lab = Lab::for_test().expect("lab up");
    let dir = lab.paths.run_dir.clone();
    pxe::fill_boot_root(&dir.join("tftp"), token, pxe::GuestEnd::PowerOff).expect("boot files");
    let text = fs::read_to_string(coresvc_lab::default_config()).unwrap();
    let script = "ipxe_script = \"http://artifacts.mgmt.deevnet.net/boot.ipxe\"";
    assert!(text.contains(script), "examples/coresvc.toml changed: update this test");
    let text = text.replace(script, "ipxe_script = \"boot.ipxe\"");
    let config = dir.join("coresvc.toml");
    fs::write(&config, text).unwrap();
    lab.start_agent(&AgentOpts::new(&config)).expect("agent start");
    lab
}

/// The leases coresvc holds for `mac` (one per client identifier: UEFI's
/// PXE client sends none, iPXE sends its own, so a chainloading guest may
/// hold two).
fn leases_of_mac(lab: &Lab, mac: &str) -> Vec<Value> {
    let out = lab.coresvc(["leases", "--json"]).unwrap();
    assert!(out.status.success(), "coresvc leases: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|l| l["mac"].as_str().is_some_and(|m| m.eq_ignore_ascii_case(mac)))
        .cloned()
        .collect()
}

/// Boots a guest with `fw` and checks every step on both sides.
fn boots(fw: Firmware, mac: &str, steps: &[(&str, &str)]) {
    let uefi = fw == Firmware::UefiPxe;
    if let Some(missing) = pxe::missing_prerequisites(uefi) {
        panic!("cannot boot a PXE guest: {missing}");
    }
    let token = token();
    let lab = lab_serving_boot_files(&token);
    lab.tap_on_segment("dvnt-client", "tap0").expect("tap on dvnt");
    let accel = Accel::from_env();
    pxe::progress(&format!("booting a diskless {fw:?} guest ({mac}) on dvnt under {accel:?}"));
    let mut guest: Guest = lab.boot_guest("dvnt-client", "tap0", mac, fw, accel).expect("qemu");
    let cmdline = format!("coresvc.boot={token}");
    let mut all: Vec<(&str, &str)> = steps.to_vec();
    all.extend([
        ("the iPXE script from coresvc ran", "dhcp 10.20.0.1 files 10.20.0.1"),
        ("the kernel started (boot banner)", "Linux version "),
        ("with the script's command line", cmdline.as_str()),
        ("the initramfs' init runs", pxe::INIT_MARKER),
    ]);
    let waited = guest.wait_for_steps(&all, BOOT_TIMEOUT);
    if let Err(e) = waited {
        panic!(
            "the PXE boot stopped: {e:#}\n--- guest console ---\n{}\n--- coresvc log ---\n{}",
            guest.console_text(),
            lab.log_tail(40)
        );
    }
    let st = guest.wait_exit(Duration::from_secs(60)).expect("the guest powers off");
    assert!(st.success(), "qemu: {st}: {}", guest.qemu_stderr());
    pxe::progress(&format!("{mac} powered itself off"));

    // The server's side of the same boot.
    let console = guest.console_text();
    let leases = leases_of_mac(&lab, mac);
    let used = leases
        .iter()
        .find(|l| console.contains(&format!("coresvc script: ip {} dhcp", l["address"].as_str().unwrap())))
        .unwrap_or_else(|| panic!("iPXE used none of the leases of {mac}: {leases:?}"));
    assert_eq!(used["state"], "bound", "{used}");
    let addr: Ipv4Addr = used["address"].as_str().unwrap().parse().unwrap();
    assert!(
        (Ipv4Addr::new(10, 20, 0, 100)..=Ipv4Addr::new(10, 20, 0, 199)).contains(&addr),
        "the guest's lease is in dvnt's pool: {used}"
    );
    let log = lab.log();
    let mut files = vec!["boot.ipxe", "vmlinuz", "initramfs.cpio"];
    if uefi {
        files.insert(0, "ipxe.efi");
    }
    for f in &files {
        assert!(
            log.lines().any(|l| l.contains("tftp: transfer completed") && l.contains(&format!("\"{f}\""))),
            "coresvc's log shows no completed transfer of {f}:\n{}",
            lab.log_tail(30)
        );
    }
    let tftp = &lab.status_json().unwrap()["tftp"];
    assert!(tftp["completed"].as_u64().unwrap() >= files.len() as u64, "{tftp:#}");
    let kernel_len = fs::metadata(pxe::guest_kernel()).unwrap().len();
    assert!(tftp["bytes_sent"].as_u64().unwrap() >= kernel_len, "the whole kernel was sent: {tftp:#}");
    pxe::progress(&format!("coresvc: lease {addr} for {mac}; TFTP transfers completed: {}", files.join(", ")));
}

#[test]
fn bios_ipxe_rom_boots_debian_kernel_and_initramfs_from_coresvc() {
    boots(
        Firmware::BiosIpxeRom,
        "02:00:00:14:00:b1",
        &[
            ("SeaBIOS started", "SeaBIOS"),
            ("the iPXE ROM runs", "iPXE initialising devices"),
            ("iPXE configured net0 by DHCP", "Next server: 10.20.0.1"),
        ],
    );
}

#[test]
fn uefi_pxe_chainloads_ipxe_which_boots_debian_kernel_and_initramfs_from_coresvc() {
    boots(
        Firmware::UefiPxe,
        "02:00:00:14:00:e1",
        &[
            ("OVMF's PXE client started", "Start PXE over IPv4"),
            ("OVMF got ipxe.efi by TFTP", "NBP file downloaded successfully"),
            ("ipxe.efi runs", "iPXE initialising devices"),
            ("iPXE configured net0 by DHCP", "Next server: 10.20.0.1"),
        ],
    );
}
