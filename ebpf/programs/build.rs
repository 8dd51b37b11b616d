/// Rebuild when bpf-linker changes (a build tool cargo does not track), and tell rustc
/// which architecture the BPF target stands in for.
fn main() -> aya_build::Result<()> {
    let bpf_linker = which::which("bpf-linker")?;
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
    aya_build::emit_bpf_target_arch_cfg()
}
