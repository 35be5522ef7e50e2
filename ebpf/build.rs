//! The eBPF object is linked by `bpf-linker`, which cargo does not know
//! about: rebuild when it changes, and say how to get it when it is missing.
fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") => {
            panic!("bpf-linker is not on PATH: run `cargo xtask setup` (it builds it against the nightly's LLVM)")
        }
        // The host build of the library target (a build-dependency of the
        // agent, for rebuild tracking) needs no linker.
        Err(_) => {}
    }
}
