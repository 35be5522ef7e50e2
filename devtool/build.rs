//! Builds the eBPF crate's objects with aya-build (as agent/build.rs does),
//! for the `coresvc-devtools` object the tools load; the data path's own
//! object comes from the coresvc library. `AYA_BUILD_SKIP=1` skips it.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.join("..").join("ebpf");
    let root = root.canonicalize().unwrap_or(root);
    let root = root.to_str().ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "coresvc-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .map_err(|e| anyhow::anyhow!("{e:#}\nhint: `cargo xtask setup` installs rust-src and bpf-linker"))
}
