//! Builds the eBPF object (nightly + bpf-linker, see `cargo xtask bootstrap`) into OUT_DIR,
//! where `redirect::ebpf` embeds it.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // aya-build watches the program crate; the map types it shares live next to it.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/common")
    );
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/programs");
    aya_build::build_ebpf(
        [Package {
            name: "hawser-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
