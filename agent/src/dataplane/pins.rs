//! The pin directory: bpffs checks, and the compatibility check that lets a
//! restarted agent adopt the maps and links a previous one pinned.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/coresvc`):
//! - one file per map, named by `MapSpec::pin` (`settings`, `if_stats`, ...);
//! - `links/xdp/<ifname>` and `links/tc-egress/<ifname>`: the XDP and TC
//!   links of each attached interface.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::maps::{Array, MapData, MapInfo};
use coresvc_maps_schema::{self as schema, MapSpec, Settings};

/// bpffs's magic number (`BPF_FS_MAGIC` in linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{dir} is not on a bpffs mount; mount one (`mount -t bpf bpf /sys/fs/bpf`, which \
         `cargo xtask setup` does) or set agent.pin_dir to a directory under a bpffs mount"
    )]
    NotBpffs { dir: PathBuf },
    #[error("cannot create pin directory {dir}: {source}")]
    CreateDir { dir: PathBuf, source: io::Error },
    #[error(
        "the maps pinned in {dir} have schema version {found}, but this coresvc uses version {ours}; \
         they belong to another build and cannot be adopted. Stop every coresvc using them, then \
         remove them with `coresvc unpin --pin-dir {dir}` (this resets counters and dataplane state) \
         or run the build that created them"
    )]
    VersionMismatch { dir: PathBuf, found: u32, ours: u32 },
    #[error(
        "the pinned map {path} does not match this build's schema ({what}: pinned {pinned}, expected \
         {expected}) although the schema version is the same; remove the pins with `coresvc unpin \
         --pin-dir {dir}`"
    )]
    LayoutMismatch { dir: PathBuf, path: PathBuf, what: &'static str, pinned: u32, expected: u32 },
    #[error("cannot read pinned map {path}: {source}")]
    Read { path: PathBuf, source: aya::maps::MapError },
}

/// Checks that `dir` is on bpffs (creating it if needed).
pub fn prepare_dir(dir: &Path) -> Result<(), PinError> {
    for sub in ["links/xdp", "links/tc-egress"] {
        fs::create_dir_all(dir.join(sub)).map_err(|source| PinError::CreateDir { dir: dir.to_path_buf(), source })?;
    }
    if !is_bpffs(dir) {
        return Err(PinError::NotBpffs { dir: dir.to_path_buf() });
    }
    Ok(())
}

pub fn is_bpffs(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid C string and `st` a properly sized out-parameter.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

pub fn map_pin(dir: &Path, spec: &MapSpec) -> PathBuf {
    dir.join(spec.pin)
}

/// What the pin directory holds before the agent loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// No pinned maps: a fresh start.
    None,
    /// Pinned maps of this schema: they will be adopted.
    Compatible,
}

/// The settings entry's size up to schema version 5.
const OLD_SETTINGS_LEN: u32 = 32;

/// Refuses pins of another schema version or layout; reports whether there
/// are pins to adopt.
pub fn check_existing(dir: &Path, conntrack_max: u32) -> Result<Existing, PinError> {
    let settings_path = map_pin(dir, &schema::SETTINGS);
    if !settings_path.exists() {
        // Maps without the settings map cannot be verified: treat a partial
        // directory as foreign rather than adopting half of it.
        if let Some(other) = schema::ALL_MAPS.iter().map(|m| map_pin(dir, m)).find(|p| p.exists()) {
            return Err(PinError::LayoutMismatch {
                dir: dir.to_path_buf(),
                path: other,
                what: "settings map missing",
                pinned: 0,
                expected: 1,
            });
        }
        return Ok(Existing::None);
    }
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PinError::Read { path, source }
    };
    let data = MapData::from_pin(&settings_path).map_err(read_err(&settings_path))?;
    let value_size = MapInfo::from_pin(&settings_path).map_err(read_err(&settings_path))?.value_size();
    let found = if value_size as usize == size_of::<Settings>() {
        let settings: Array<MapData, Settings> =
            Array::try_from(aya::maps::Map::Array(data)).map_err(read_err(&settings_path))?;
        settings.get(&0, 0).map_err(read_err(&settings_path))?.schema_version
    } else if value_size == OLD_SETTINGS_LEN {
        // Versions up to 5 had a shorter settings entry, the version first.
        let settings: Array<MapData, [u8; OLD_SETTINGS_LEN as usize]> =
            Array::try_from(aya::maps::Map::Array(data)).map_err(read_err(&settings_path))?;
        let v = settings.get(&0, 0).map_err(read_err(&settings_path))?;
        u32::from_ne_bytes([v[0], v[1], v[2], v[3]])
    } else {
        return Err(PinError::LayoutMismatch {
            dir: dir.to_path_buf(),
            path: settings_path,
            what: "value size",
            pinned: value_size,
            expected: size_of::<Settings>() as u32,
        });
    };
    if found != schema::SCHEMA_VERSION {
        return Err(PinError::VersionMismatch { dir: dir.to_path_buf(), found, ours: schema::SCHEMA_VERSION });
    }
    for spec in schema::ALL_MAPS {
        let path = map_pin(dir, spec);
        if !path.exists() {
            continue; // created at load
        }
        let info = MapInfo::from_pin(&path).map_err(read_err(&path))?;
        let max = if schema::SIZED_BY_CONFIG.contains(&spec.name) {
            if info.max_entries() != conntrack_max {
                tracing::warn!(
                    "{} holds {} entries, the configuration asks for {conntrack_max}; keeping the pinned size \
                     (`coresvc unpin` while stopped resizes it, and forgets the connections)",
                    path.display(),
                    info.max_entries()
                );
            }
            info.max_entries()
        } else {
            spec.max_entries
        };
        for (what, pinned, expected) in [
            ("key size", info.key_size(), spec.key_size),
            ("value size", info.value_size(), spec.value_size),
            ("max entries", info.max_entries(), max),
        ] {
            if pinned != expected {
                return Err(PinError::LayoutMismatch { dir: dir.to_path_buf(), path, what, pinned, expected });
            }
        }
    }
    Ok(Existing::Compatible)
}

/// Removes every pin coresvc creates under `dir` (maps and links) and the
/// directory itself. Detaches programs whose only reference was a link pin.
/// Files of other schema versions go too: the directory is coresvc's.
pub fn remove_all(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            remove_all(&p)?;
        } else {
            fs::remove_file(p)?;
        }
    }
    fs::remove_dir(dir)
}
