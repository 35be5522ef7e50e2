//! Opening a requested file, confined to the TFTP root.
//!
//! The name is checked as path components, never as a string prefix: an
//! empty name, an absolute path or any `..` component is refused outright;
//! the rest is resolved by the kernel with `openat2(2)` and
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` relative to a descriptor of the
//! root held since start-up, so no symlink, `..` hidden in a link or
//! `/proc` magic link can leave the root, and a rename of the root's path
//! afterwards changes nothing. Symlinks that stay inside the root work.
//! Only regular files are served: the entry is looked at with `O_PATH`
//! (which opens nothing) before it is opened for reading, so a device or a
//! FIFO is never opened.

use std::{
    ffi::{CString, OsStr},
    fs::File,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::FileExt},
    },
    path::{Path, PathBuf},
};

use super::source::Source;

/// Why a name was not opened. Each maps to a TFTP error and a refusal counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("empty file name")]
    EmptyName,
    #[error("absolute paths are not served")]
    AbsolutePath,
    #[error("'..' is not allowed in file names")]
    ParentComponent,
    #[error("the path leads outside the tftp root")]
    OutsideRoot,
    #[error("no such file")]
    NotFound,
    #[error("not a regular file")]
    NotRegularFile,
    #[error("permission denied")]
    Permission,
    #[error("cannot open the file: {0}")]
    Io(io::ErrorKind),
}

/// The TFTP root, held open.
#[derive(Debug)]
pub struct Root {
    dir: OwnedFd,
    path: PathBuf,
    /// A leading `/` names the root (`tftp.absolute_paths = "root"`).
    absolute_from_root: bool,
}

/// An opened file and its size at opening.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    pub size: u64,
}

impl Root {
    pub fn open(path: &Path) -> io::Result<Root> {
        let c = CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: a valid NUL-terminated path; the fd is owned below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(Root { dir: unsafe { OwnedFd::from_raw_fd(fd) }, path: path.to_path_buf(), absolute_from_root: false })
    }

    /// Serves names with a leading `/` as paths from the root (they are
    /// refused otherwise).
    pub fn absolute_from_root(mut self, on: bool) -> Root {
        self.absolute_from_root = on;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `name` (the request's file name, raw bytes) for reading.
    pub fn open_file(&self, name: &[u8]) -> Result<Opened, Denied> {
        let name = check_name(name, self.absolute_from_root)?;
        let name = CString::new(name).map_err(|_| Denied::NotFound)?;
        // Look first, open second: O_PATH opens neither devices nor FIFOs.
        let probe = self.openat2(&name, libc::O_PATH)?;
        let st = fstat(&probe).map_err(|e| Denied::Io(e.kind()))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Denied::NotRegularFile);
        }
        let fd = self.openat2(&name, libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK)?;
        let st2 = fstat(&fd).map_err(|e| Denied::Io(e.kind()))?;
        // The entry was replaced between the two opens.
        if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) || st2.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Denied::NotRegularFile);
        }
        Ok(Opened { file: File::from(fd), size: st2.st_size as u64 })
    }

    fn openat2(&self, name: &CString, flags: libc::c_int) -> Result<OwnedFd, Denied> {
        // SAFETY: open_how is plain data; zeroed is its documented default.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: openat2 with a valid directory fd, path and open_how of the right size.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.dir.as_raw_fd(),
                name.as_ptr(),
                &how as *const libc::open_how,
                size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error().unwrap_or(0) {
                // EXDEV: resolution would leave the root; ELOOP: a magic link or a loop.
                libc::EXDEV | libc::ELOOP => Denied::OutsideRoot,
                libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG => Denied::NotFound,
                libc::EACCES | libc::EPERM => Denied::Permission,
                _ => Denied::Io(e.kind()),
            });
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
    }
}

/// The checks on the name itself, before the file system is asked; the
/// name to resolve from the root (leading slashes gone when
/// `absolute_from_root`).
fn check_name(name: &[u8], absolute_from_root: bool) -> Result<&[u8], Denied> {
    let name = match name.iter().position(|b| *b != b'/') {
        Some(0) => name,
        _ if !name.is_empty() && !absolute_from_root => return Err(Denied::AbsolutePath),
        Some(i) => &name[i..],
        None => &[],
    };
    if name.is_empty() {
        return Err(Denied::EmptyName);
    }
    if Path::new(OsStr::from_bytes(name)).components().any(|c| c == std::path::Component::ParentDir) {
        return Err(Denied::ParentComponent);
    }
    Ok(name)
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: fstat fills the struct for a valid descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

impl Source for File {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

/// Read-ahead for a transfer: blocks are read in order, so one `pread` of a
/// chunk serves many of them. Memory: one chunk of about 32 KiB (or one
/// block, if larger) per transfer, allocated on the first read.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    chunk: usize,
    buf: Vec<u8>,
    /// The file offset of `buf[0]`, and how much of `buf` is valid.
    start: u64,
    valid: usize,
}

const READ_AHEAD: usize = 32 * 1024;

impl FileSource {
    pub fn new(file: File, blksize: usize) -> Self {
        let chunk = if blksize >= READ_AHEAD { blksize } else { READ_AHEAD - READ_AHEAD % blksize.max(1) };
        FileSource { file, chunk, buf: Vec::new(), start: 0, valid: 0 }
    }

    /// The bytes `offset..offset + len` are read already.
    pub fn covers(&self, offset: u64, len: usize) -> bool {
        offset >= self.start && offset + len as u64 <= self.start + self.valid as u64
    }

    /// Reads at least `len` bytes (a chunk at least) from `offset` ahead,
    /// blocking: the transfer runs it on a blocking thread, so a slow disk
    /// never holds the runtime. A failed read leaves nothing cached; the
    /// next `read_at` tries again and reports the error.
    pub fn fill(&mut self, offset: u64, len: usize) {
        self.fill_with(offset, len, 0);
    }

    /// The same without waiting for the disk (`RWF_NOWAIT`): the bytes are
    /// in the page cache, as a boot file mostly is. [`Cached::No`]: they
    /// are not (then [`FileSource::fill`] off the runtime).
    pub fn fill_cached(&mut self, offset: u64, len: usize) -> Cached {
        match self.fill_with(offset, len, libc::RWF_NOWAIT) {
            Some(libc::EAGAIN) if self.valid < len => Cached::No,
            Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => Cached::Unsupported,
            _ if self.valid >= len => Cached::Yes,
            _ => Cached::No,
        }
    }

    /// Reads into the buffer from `offset` until it is full, at the end of
    /// the file, or at an error (returned, with what was read kept).
    fn fill_with(&mut self, offset: u64, len: usize, flags: libc::c_int) -> Option<libc::c_int> {
        self.buf.resize(self.chunk.max(len), 0);
        self.valid = 0;
        self.start = offset;
        let mut n = 0;
        let err = loop {
            if n == self.buf.len() {
                break None;
            }
            let rest = &mut self.buf[n..];
            let iov = libc::iovec { iov_base: rest.as_mut_ptr().cast(), iov_len: rest.len() };
            // SAFETY: one iovec over our own buffer; the descriptor is open.
            let r = unsafe { libc::preadv2(self.file.as_raw_fd(), &iov, 1, (offset + n as u64) as libc::off_t, flags) };
            match r {
                0 => break None,
                r if r > 0 => n += r as usize,
                _ => match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => {}
                    e => break e,
                },
            }
        };
        self.valid = n;
        err
    }
}

/// Whether [`FileSource::fill_cached`] read the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached {
    Yes,
    /// Not all in the page cache: read them off the runtime.
    No,
    /// The file system cannot tell: reads go on as plain reads.
    Unsupported,
}

impl Source for FileSource {
    fn read_at(&mut self, offset: u64, out: &mut [u8]) -> io::Result<usize> {
        let cached = offset >= self.start && offset < self.start + self.valid as u64;
        if !cached {
            if out.len() >= self.chunk {
                return FileExt::read_at(&self.file, out, offset);
            }
            if let Some(e) = self.fill_with(offset, 0, 0)
                && self.valid == 0
            {
                return Err(io::Error::from_raw_os_error(e));
            }
        }
        let at = (offset - self.start) as usize;
        let n = out.len().min(self.valid - at);
        out[..n].copy_from_slice(&self.buf[at..at + n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A fresh directory with a root inside and a secret next to it.
    struct Tree {
        base: PathBuf,
    }

    impl Tree {
        fn new(tag: &str) -> Tree {
            let base = std::env::temp_dir().join(format!("coresvc-tftp-fs-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&base);
            std::fs::create_dir_all(base.join("root/sub")).unwrap();
            std::fs::write(base.join("secret"), b"secret").unwrap();
            std::fs::write(base.join("root/boot.bin"), b"boot").unwrap();
            std::fs::write(base.join("root/sub/file"), b"inner").unwrap();
            Tree { base }
        }
        fn root(&self) -> Root {
            Root::open(&self.base.join("root")).unwrap()
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }

    fn read(r: &Root, name: &str) -> Result<Vec<u8>, Denied> {
        let mut o = r.open_file(name.as_bytes())?;
        let mut v = vec![0; o.size as usize];
        let n = Source::read_at(&mut o.file, 0, &mut v).unwrap();
        v.truncate(n);
        Ok(v)
    }

    #[test]
    fn a_leading_slash_names_the_root_only_when_configured() {
        let t = Tree::new("absolute");
        let r = t.root().absolute_from_root(true);
        assert_eq!(read(&r, "/boot.bin").unwrap(), b"boot");
        assert_eq!(read(&r, "//sub/file").unwrap(), b"inner");
        assert_eq!(read(&r, "/secret"), Err(Denied::NotFound), "the root's, not the host's");
        assert_eq!(read(&r, "/../secret"), Err(Denied::ParentComponent));
        assert_eq!(read(&r, "/"), Err(Denied::EmptyName));
        assert_eq!(read(&r, "sub/file").unwrap(), b"inner");
        assert_eq!(read(&t.root(), "/boot.bin"), Err(Denied::AbsolutePath), "refused by default");
    }

    #[test]
    fn files_and_links_inside_the_root_are_served() {
        let t = Tree::new("inside");
        symlink("sub/file", t.base.join("root/link")).unwrap();
        symlink("../boot.bin", t.base.join("root/sub/up")).unwrap();
        let r = t.root();
        assert_eq!(read(&r, "boot.bin").unwrap(), b"boot");
        assert_eq!(read(&r, "sub/file").unwrap(), b"inner");
        assert_eq!(read(&r, "sub//file").unwrap(), b"inner");
        assert_eq!(read(&r, "./sub/./file").unwrap(), b"inner");
        assert_eq!(read(&r, "link").unwrap(), b"inner");
        assert_eq!(read(&r, "sub/up").unwrap(), b"boot", "a link with .. that stays inside");
    }

    #[test]
    fn every_way_out_is_refused() {
        let t = Tree::new("out");
        symlink("../secret", t.base.join("root/rel-out")).unwrap();
        symlink(t.base.join("secret"), t.base.join("root/abs-out")).unwrap();
        symlink("/", t.base.join("root/slash")).unwrap();
        symlink("/proc/self/root", t.base.join("root/magic")).unwrap();
        symlink("loop", t.base.join("root/loop")).unwrap();
        let r = t.root();
        let cases: &[(&str, Denied)] = &[
            ("", Denied::EmptyName),
            ("/etc/passwd", Denied::AbsolutePath),
            ("//etc/passwd", Denied::AbsolutePath),
            ("../secret", Denied::ParentComponent),
            ("sub/../../secret", Denied::ParentComponent),
            ("sub/..", Denied::ParentComponent),
            ("..", Denied::ParentComponent),
            ("rel-out", Denied::OutsideRoot),
            ("abs-out", Denied::OutsideRoot),
            ("slash/etc/passwd", Denied::OutsideRoot),
            ("magic/etc/passwd", Denied::OutsideRoot),
            ("loop", Denied::OutsideRoot),
            ("missing", Denied::NotFound),
            ("boot.bin/x", Denied::NotFound),
            ("sub", Denied::NotRegularFile),
            (".", Denied::NotRegularFile),
            ("..\\secret", Denied::NotFound),
        ];
        for (name, want) in cases {
            assert_eq!(read(&r, name).map(|_| ()), Err(*want), "{name:?}");
        }
    }

    #[test]
    fn fifos_are_refused_without_being_opened() {
        let t = Tree::new("fifo");
        let p = CString::new(t.base.join("root/fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a valid path.
        assert_eq!(unsafe { libc::mkfifo(p.as_ptr(), 0o644) }, 0);
        // Opening a FIFO for reading without O_NONBLOCK would block here.
        assert_eq!(read(&t.root(), "fifo").map(|_| ()), Err(Denied::NotRegularFile));
    }

    #[test]
    fn read_ahead_gives_the_same_bytes_as_the_file() {
        let t = Tree::new("readahead");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(t.base.join("root/data"), &data).unwrap();
        for blksize in [8usize, 512, 1468, 40_000] {
            let o = t.root().open_file(b"data").unwrap();
            let mut src = FileSource::new(o.file, blksize);
            let mut got = Vec::new();
            let mut block = vec![0u8; blksize];
            loop {
                let n = crate::tftp::source::read_full(&mut src, got.len() as u64, &mut block).unwrap();
                got.extend_from_slice(&block[..n]);
                if n < blksize {
                    break;
                }
            }
            assert!(got == data, "blksize {blksize}");
            // Going back (a retransmission) reads the same bytes again.
            let n = crate::tftp::source::read_full(&mut src, 1000, &mut block).unwrap();
            assert_eq!(&block[..n], &data[1000..1000 + n]);
            // Read ahead (off the runtime), then served from memory.
            let (at, len) = (150_000u64, 3 * blksize);
            assert!(!src.covers(at, len));
            src.fill(at, len);
            assert!(src.covers(at, len.min(50_000)), "blksize {blksize}");
            let n = crate::tftp::source::read_full(&mut src, at, &mut block).unwrap();
            assert_eq!(&block[..n], &data[at as usize..at as usize + n]);
            // Just written, so in the page cache: read without waiting.
            let len = blksize.min(40_000);
            assert_ne!(src.fill_cached(10, len), Cached::No, "blksize {blksize}");
            let n = crate::tftp::source::read_full(&mut src, 10, &mut block[..len]).unwrap();
            assert_eq!(&block[..n], &data[10..10 + n]);
        }
    }

    #[test]
    fn the_root_is_held_open() {
        let t = Tree::new("held");
        let r = t.root();
        std::fs::rename(t.base.join("root"), t.base.join("moved")).unwrap();
        std::fs::create_dir(t.base.join("root")).unwrap();
        assert_eq!(read(&r, "boot.bin").unwrap(), b"boot");
        assert_eq!(r.path(), t.base.join("root"));
    }
}
