//! Attaching the programs to an interface: XDP on ingress, TC (TCX) on
//! egress, each through a bpf_link pinned at `links/xdp/<ifname>` and
//! `links/tc-egress/<ifname>` (bpffs refuses '.' in names: a '.' of an
//! interface name is pinned as ':', which interface names never contain). A restarted agent finds the pinned links still
//! attached and swaps its own program in atomically (bpf_link_update).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};
use aya::programs::{
    SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, LinkOrder, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    xdp::XdpLink,
};
use tracing::{debug, warn};

use super::{AttachMode, sys};
use crate::config;

fn pin_name(ifname: &str) -> String {
    ifname.replace('.', ":")
}

pub fn xdp_pin(dir: &Path, ifname: &str) -> PathBuf {
    dir.join("links").join("xdp").join(pin_name(ifname))
}

pub fn egress_pin(dir: &Path, ifname: &str) -> PathBuf {
    dir.join("links").join("tc-egress").join(pin_name(ifname))
}

/// A link pinned at `path` by a previous agent, if it is still attached to
/// `ifindex`; a stale pin (interface gone or replaced) is removed.
fn adopt(path: &Path, ifindex: u32, link_type: u32) -> Result<Option<FdLink>> {
    if !path.exists() {
        return Ok(None);
    }
    let attached_to =
        sys::pinned_link_ifindex(path, link_type).with_context(|| format!("reading pinned link {}", path.display()))?;
    let pinned = PinnedLink::from_pin(path).with_context(|| format!("opening pinned link {}", path.display()))?;
    let fd_link: FdLink = pinned.unpin().with_context(|| format!("unpinning {}", path.display()))?;
    if attached_to != Some(ifindex) {
        warn!("stale link pin {} (its interface is gone or changed); attaching afresh", path.display());
        drop(fd_link);
        return Ok(None);
    }
    Ok(Some(fd_link))
}

fn pin(fd_link: FdLink, path: &Path) -> Result<()> {
    let _ = std::fs::remove_file(path);
    // The pin keeps the link (and the program) attached after the fd closes.
    fd_link.pin(path).with_context(|| format!("pinning link at {}", path.display()))?;
    Ok(())
}

/// Attaches (or adopts) XDP on `ifname`. Returns the mode and whether an
/// existing link was adopted.
pub fn xdp(
    prog: &mut Xdp,
    dir: &Path,
    ifname: &str,
    ifindex: u32,
    mode: config::XdpMode,
    previous: Option<AttachMode>,
) -> Result<(AttachMode, bool)> {
    let path = xdp_pin(dir, ifname);
    if let Some(fd_link) = adopt(&path, ifindex, sys::BPF_LINK_TYPE_XDP)? {
        let id = prog
            .attach_to_link(XdpLink::try_from(fd_link)?)
            .with_context(|| format!("replacing the XDP program on {ifname}"))?;
        pin(prog.take_link(id)?.try_into()?, &path)?;
        return Ok((previous.unwrap_or(AttachMode::Generic), true));
    }
    let try_mode = |prog: &mut Xdp, m: XdpMode| prog.attach_to_if_index(ifindex, m);
    let (id, mode) = match mode {
        config::XdpMode::Native => (
            try_mode(prog, XdpMode::Driver).with_context(|| format!("attaching native XDP to {ifname}"))?,
            AttachMode::Native,
        ),
        config::XdpMode::Generic => (
            try_mode(prog, XdpMode::Skb).with_context(|| format!("attaching generic XDP to {ifname}"))?,
            AttachMode::Generic,
        ),
        config::XdpMode::Auto => match try_mode(prog, XdpMode::Driver) {
            Ok(id) => (id, AttachMode::Native),
            Err(e) => {
                debug!(interface = ifname, "native XDP not available ({e}); using generic");
                let id = try_mode(prog, XdpMode::Skb).with_context(|| format!("attaching generic XDP to {ifname}"))?;
                (id, AttachMode::Generic)
            }
        },
    };
    let link = prog.take_link(id)?;
    let fd_link = FdLink::try_from(link).map_err(|e| {
        anyhow!("the kernel attached XDP without a bpf_link ({e}); coresvc needs bpf_link (Linux >= 5.9) to survive restarts")
    })?;
    pin(fd_link, &path)?;
    Ok((mode, false))
}

/// Attaches (or adopts) the TC egress program on `ifname` through TCX.
pub fn egress(prog: &mut SchedClassifier, dir: &Path, ifname: &str, ifindex: u32) -> Result<bool> {
    let path = egress_pin(dir, ifname);
    if let Some(fd_link) = adopt(&path, ifindex, sys::BPF_LINK_TYPE_TCX)? {
        let id = prog
            .attach_to_link(SchedClassifierLink::try_from(fd_link)?)
            .with_context(|| format!("replacing the TC egress program on {ifname}"))?;
        pin(prog.take_link(id)?.try_into()?, &path)?;
        return Ok(true);
    }
    let id = prog
        .attach_with_options(ifname, TcAttachType::Egress, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .with_context(|| format!("attaching TC egress to {ifname} (TCX needs Linux >= 6.6)"))?;
    let fd_link: FdLink = prog.take_link(id)?.try_into().map_err(|e| anyhow!("TC egress without a bpf_link: {e}"))?;
    pin(fd_link, &path)?;
    Ok(false)
}

/// Unpins and closes what `xdp`/`egress` attached to `ifname`; returns how
/// many and their link ids (the kernel releases them once the loaded object,
/// which holds them too, goes).
pub fn detach(dir: &Path, ifname: &str) -> (usize, Vec<u32>) {
    let mut n = 0;
    let mut ids = Vec::new();
    for path in [xdp_pin(dir, ifname), egress_pin(dir, ifname)] {
        if !path.exists() {
            continue;
        }
        ids.extend(super::sys::pinned_link_id(&path).ok());
        match PinnedLink::from_pin(&path).map(|p| p.unpin()) {
            Ok(Ok(fd_link)) => {
                drop(fd_link);
                n += 1;
            }
            Ok(Err(e)) => warn!(interface = %ifname, "cannot unpin {}: {e}", path.display()),
            Err(e) => {
                warn!(interface = %ifname, "cannot open {}: {e}; removing the pin", path.display());
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    (n, ids)
}
