//! Entering a named network namespace (`ip netns` style) before the runtime
//! starts, so every thread of the agent lives in it while keeping the host's
//! mount namespace (and so its bpffs, where the pins must be visible).

use std::{fs::File, os::fd::AsRawFd as _, path::Path};

use anyhow::{Context as _, Result, bail};

/// Moves the calling thread into network namespace `name` (a file under
/// /run/netns). Call it before any other thread exists.
pub fn enter(name: &str) -> Result<()> {
    if name.contains('/') {
        bail!("{name:?} is not a network namespace name");
    }
    let path = Path::new("/run/netns").join(name);
    let f = File::open(&path).with_context(|| format!("network namespace {name:?} ({})", path.display()))?;
    // SAFETY: setns with a valid namespace fd.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("entering network namespace {name:?}"));
    }
    Ok(())
}
