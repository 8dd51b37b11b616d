//! Builds the eBPF object (nightly + bpf-linker, see `cargo xtask bootstrap`) into OUT_DIR,
//! where `redirect::dataplane` embeds it, and generates the gRPC code from `proto/`.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    grpc()?;
    // aya-build watches the program crate; the map types it shares live next to it.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/common")
    );
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/programs");
    // aya-build passes every line of the inner cargo's output on as a build warning: keep
    // its progress lines ("Compiling …") out; its diagnostics still come through.
    // SAFETY: the build script has no other threads at this point.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [Package {
            name: "hawser-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

/// protox parses the protos in Rust, so no protoc is needed.
fn grpc() -> anyhow::Result<()> {
    let protos = ["proto/istio_ca.proto", "proto/hawser_trust.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
