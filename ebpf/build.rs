//! The eBPF object is linked by `bpf-linker`, which cargo does not know
//! about: rebuild when it changes, and say how to get it when it is missing.
fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        // Global BPF functions: the verifier checks each once, on its own.
        println!(
            "cargo:rustc-link-arg-bin=coresvc-ebpf=--export=coresvc_dns_answer,coresvc_process,coresvc_parse_xdp,coresvc_related,coresvc_tracked,coresvc_dnat,coresvc_new_flow,coresvc_wscale_xdp,coresvc_wscale_tc"
        );
    }
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
