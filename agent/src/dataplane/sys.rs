//! The few bpf(2) calls aya 0.14 does not expose: reading a pinned link's
//! info (its type and the ifindex of an XDP or TCX link).

use std::{
    ffi::CString,
    io,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
pub const BPF_LINK_TYPE_XDP: u32 = 6;
pub const BPF_LINK_TYPE_TCX: u32 = 11;

/// `union bpf_attr` for BPF_OBJ_GET (`pathname`, `bpf_fd`, `file_flags`).
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: [u32; 27],
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD (`info` member).
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
    _pad: [u32; 26],
}

/// The head of `struct bpf_link_info` and its per-type union (64 bytes is
/// larger than every member the kernel fills for XDP).
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct LinkInfoRaw {
    pub type_: u32,
    pub id: u32,
    pub prog_id: u32,
    _pad: u32,
    /// For XDP links: `xdp.ifindex` is the first u32.
    pub union: [u32; 16],
}

fn bpf(cmd: libc::c_long, attr: *mut u8, size: usize) -> io::Result<libc::c_long> {
    // SAFETY: `attr` points to a zero-initialised attr struct of `size` bytes.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut attr = ObjGetAttr { pathname: c.as_ptr() as u64, ..Default::default() };
    let fd = bpf(BPF_OBJ_GET, (&mut attr as *mut ObjGetAttr).cast(), size_of::<ObjGetAttr>())?;
    // SAFETY: the kernel returned a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

pub fn link_info(fd: &OwnedFd) -> io::Result<LinkInfoRaw> {
    use std::os::fd::AsRawFd as _;
    let mut info = LinkInfoRaw::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<LinkInfoRaw>() as u32,
        info: (&mut info as *mut LinkInfoRaw) as u64,
        ..Default::default()
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, (&mut attr as *mut InfoAttr).cast(), size_of::<InfoAttr>())?;
    Ok(info)
}

/// The ifindex a pinned XDP or TCX link is attached to (0 when its device
/// is gone; both link types start their info with the ifindex), or `None`
/// when the pin is a link of another type.
pub fn pinned_link_ifindex(path: &Path, link_type: u32) -> io::Result<Option<u32>> {
    let fd = obj_get(path)?;
    let info = link_info(&fd)?;
    Ok((info.type_ == link_type).then_some(info.union[0]))
}

const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

/// `union bpf_attr` for BPF_LINK_GET_FD_BY_ID (`link_id`, `next_id`,
/// `open_flags`).
#[repr(C)]
#[derive(Default)]
struct GetByIdAttr {
    link_id: u32,
    next_id: u32,
    open_flags: u32,
    _pad: [u32; 29],
}

/// The id of the link pinned at `path`.
pub fn pinned_link_id(path: &Path) -> io::Result<u32> {
    Ok(link_info(&obj_get(path)?)?.id)
}

/// Whether link `id` still exists (is still attached where it was).
fn link_alive(id: u32) -> bool {
    let mut attr = GetByIdAttr { link_id: id, ..Default::default() };
    match bpf(BPF_LINK_GET_FD_BY_ID, (&mut attr as *mut GetByIdAttr).cast(), size_of::<GetByIdAttr>()) {
        Ok(fd) => {
            // SAFETY: the kernel returned a new fd that we own.
            drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            true
        }
        Err(e) => e.raw_os_error() != Some(libc::ENOENT),
    }
}

/// Waits until none of the links `ids` exists, at most `timeout`; returns
/// the ones still there. A link whose last pin and descriptor are gone is
/// released by the kernel a moment later (bpffs frees its inode after an
/// RCU grace period), so "unpinned" is not yet "detached".
pub fn wait_links_gone(ids: &[u32], timeout: std::time::Duration) -> Vec<u32> {
    let start = std::time::Instant::now();
    loop {
        let alive: Vec<u32> = ids.iter().copied().filter(|&id| link_alive(id)).collect();
        if alive.is_empty() || start.elapsed() >= timeout {
            return alive;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
